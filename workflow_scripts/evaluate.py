"""Evaluate a trained SegFormer on a split (the evaluation stage): writes the one-row miou.csv.

    python workflow_scripts/evaluate.py --variant b0 --eval_ckpt_path results/b0/model.ckpt \
        --data_path results/data/val.txt --out results/b0/miou.csv

Whole-image inference (the official mode of the 512x1024 configs); predictions are scored at the
label's full resolution. The per-class table goes to the log, like the seed's eval.py.
"""

import argparse
import logging
import sys
import time

import mindspore as ms

from segformer.engine.evaluate import evaluate_whole
from segformer.engine.train import configure_logging
from segformer.io import write_text
from segformer.metrics import format_metrics_table, miou_csv_text, miou_row
from segformer.models import build_model

log = logging.getLogger("evaluate")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", required=True, choices=[f"b{i}" for i in range(6)])
    parser.add_argument("--eval_ckpt_path", required=True, help="MindSpore checkpoint of the whole model")
    parser.add_argument("--data_path", required=True, help="split list (IMAGE<TAB>LABEL), e.g. results/data/val.txt")
    parser.add_argument("--out", required=True, help="miou.csv to write")
    parser.add_argument("--num_classes", type=int, default=19)
    parser.add_argument("--device", default="CPU", choices=["CPU", "GPU", "Ascend"])
    args = parser.parse_args(argv)
    configure_logging()
    ms.set_device(args.device)
    net = build_model(args.variant, args.num_classes)
    params = ms.load_checkpoint(args.eval_ckpt_path)
    not_loaded, _ = ms.load_param_into_net(net, params, strict_load=True)
    if not_loaded:
        print(f"error: {args.eval_ckpt_path}: lacks {len(not_loaded)} parameters of SegFormer-{args.variant}, "
              f"e.g. {', '.join(not_loaded[:5])}", file=sys.stderr)
        return 1
    start = time.perf_counter()
    metrics = evaluate_whole(net, args.data_path, num_classes=args.num_classes).metrics()
    log.info("SegFormer-%s on %s (%.1f s):\n%s", args.variant, args.data_path, time.perf_counter() - start,
             format_metrics_table(metrics))
    write_text(args.out, miou_csv_text([miou_row(args.variant, metrics)]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
