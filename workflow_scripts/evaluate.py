"""Evaluate SegFormer on a split (the evaluation stage), or score predictions already on disk.

A model (from a rule, or by hand like the seed's eval.py):
    python workflow_scripts/evaluate.py --variant b0 --ckpt results/b0/model.ckpt \
        --data_path results/data/val.txt --out results/b0/miou.csv [--config_path config.yaml]
Predictions on disk (train-id PNGs named STEM_gray.png, as the rendering stage writes them):
    python workflow_scripts/evaluate.py --pred_dir results/b0/infer --data_path /data/cityscapes \
        --split val --out scores.csv

--data_path is a split list (IMAGE<TAB>LABEL) or a Cityscapes root whose gtFine holds
*_gtFine_labelTrainIds.png (convert_dataset.py ROOT writes them). Test-time inference (whole, slide,
multi-scale + flip) comes from the config's `evaluate` section, or --settings (JSON) from a rule.
Predictions are scored at the label's full resolution. The one-row miou.csv holds fractions; the
per-class table goes to the log, like the seed's eval.py.
"""

import argparse
import json
import logging
import sys
import time

from segformer.io import OutputError
from segformer.models.variants import VARIANTS

log = logging.getLogger("evaluate")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    model = parser.add_argument_group("evaluate a model")
    model.add_argument("--variant", choices=list(VARIANTS))
    model.add_argument("--ckpt", "--eval_ckpt_path", dest="ckpt",
                       help="MindSpore checkpoint of the whole model (--eval_ckpt_path: the seed's name)")
    model.add_argument("--config_path", action="append", default=[],
                       help="workflow config YAML (repeatable); its `evaluate` section sets the inference mode")
    model.add_argument("--settings", default=None, help="JSON merged over the config's `evaluate` section")
    model.add_argument("--device", default=None, choices=["CPU", "GPU", "Ascend"])
    parser.add_argument("--pred_dir", help="score the STEM_gray.png predictions in this folder instead of a model")
    parser.add_argument("--data_path", required=True, help="split list (IMAGE<TAB>LABEL) or Cityscapes root")
    parser.add_argument("--split", default="val", help="split of a Cityscapes root (default val)")
    parser.add_argument("--out", required=True, help="miou.csv to write")
    parser.add_argument("--name", default=None, help="the csv's variant column (default: --variant, else 'predictions')")
    parser.add_argument("--num_classes", type=int, default=None, help="default: the config's train.num_classes (19)")
    args = parser.parse_args(argv)
    if (args.pred_dir is None) == (args.ckpt is None):
        parser.error("give either --ckpt (with --variant) or --pred_dir")
    if args.ckpt and not args.variant:
        parser.error("--ckpt needs --variant")
    if args.pred_dir and (args.settings or args.device):
        parser.error("--pred_dir scores files on disk: --settings and --device do not apply")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    from segformer.logs import configure_logging

    configure_logging()
    try:
        matrix, name = run(args)
    except (ValueError, FileNotFoundError, OutputError) as error:  # CheckpointMismatch is a ValueError
        log.error("%s", error)
        print(f"error: {error}", file=sys.stderr)
        return 1
    from segformer.io import write_text
    from segformer.metrics import format_metrics_table, miou_csv_text, miou_row

    metrics = matrix.metrics()
    log.info("%s on %s:\n%s", name, args.data_path, format_metrics_table(metrics))
    write_text(args.out, miou_csv_text([miou_row(name, metrics)]))
    return 0


def run(args):
    """(confusion matrix, row name) from a model or from predictions on disk."""
    from segformer.data.cityscapes import split_pairs_of
    from segformer.settings import deep_merge, load_config

    config = load_config(args.config_path)
    num_classes = args.num_classes or config["train"]["num_classes"]
    pairs = split_pairs_of(args.data_path, args.split)
    start = time.perf_counter()
    if args.pred_dir:
        from segformer.engine.evaluate import score_predictions

        matrix = score_predictions(args.pred_dir, pairs, num_classes)
        log.info("scored %d predictions in %s (%.1f s)", len(pairs), args.pred_dir, time.perf_counter() - start)
        return matrix, args.name or args.variant or "predictions"

    from segformer.devices import describe_device, use_device
    from segformer.engine.evaluate import evaluate_model
    from segformer.engine.inference import InferenceSettings, Segmenter, load_model

    try:
        override = json.loads(args.settings) if args.settings else {}
    except json.JSONDecodeError as error:
        raise ValueError(f"--settings is not valid JSON: {error}") from None
    settings = InferenceSettings.from_config(deep_merge(config["evaluate"], override))
    log.info("%s", describe_device(use_device(args.device or config["device"])))  # DeviceError is a ValueError
    net = load_model(args.variant, args.ckpt, num_classes)
    log.info("SegFormer-%s from %s; inference: %s; %d images", args.variant, args.ckpt,
             settings.describe(), len(pairs))
    matrix = evaluate_model(Segmenter(net, settings), pairs, num_classes)
    log.info("evaluated in %.1f s", time.perf_counter() - start)
    return matrix, args.name or args.variant


if __name__ == "__main__":
    sys.exit(main())
