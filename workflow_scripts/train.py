"""Train one SegFormer variant (the training stage).

From a rule: every setting arrives explicitly (--settings is the variant's resolved `train` section
as JSON). By hand, like the seed's train.py:
    python workflow_scripts/train.py --config_path config.yaml --variant b0 \
        --train_list results/data/train.txt --val_list results/data/val.txt --out_dir results/b0
Data parallel: launch under MindSpore's msrun (each worker runs this script; rank 0 writes outputs).
"""

import argparse
import json
import logging
import sys
from pathlib import Path

from segformer.engine.train import TrainingDiverged, train
from segformer.io import OutputError
from segformer.logs import configure_logging
from segformer.models.variants import VARIANTS
from segformer.settings import deep_merge, fill_defaults_and_validate, load_config, train_settings


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", required=True, choices=list(VARIANTS))
    parser.add_argument("--config_path", action="append", default=[],
                        help="workflow config YAML (repeatable; later files win); its `train` section "
                             "and overrides.<variant>.train give the settings")
    parser.add_argument("--settings", default="{}", help="JSON merged over the config's train settings")
    parser.add_argument("--train_list", required=True)
    parser.add_argument("--val_list", default=None, help="for the optional evaluation every eval_interval")
    parser.add_argument("--validation", default=None,
                        help="JSON: test-time settings of that evaluation (the config's `evaluate` section; "
                             "default: whole image, single scale)")
    parser.add_argument("--pretrained", default=None, help="converted checkpoint to start from (none: scratch)")
    parser.add_argument("--out_dir", default=None, help="writes model.ckpt, train_log.csv, train_curve.png there")
    parser.add_argument("--ckpt", default=None)
    parser.add_argument("--log_csv", default=None)
    parser.add_argument("--curve", default=None)
    parser.add_argument("--state_dir", default=None, help="resumable state (default: OUT_DIR/train_state)")
    parser.add_argument("--device", default=None, choices=["CPU", "GPU", "Ascend"])
    parser.add_argument("--precision", default=None, choices=["fp32", "mixed"])
    args = parser.parse_args(argv)
    if args.out_dir is None and None in (args.ckpt, args.log_csv):
        parser.error("give --out_dir, or both --ckpt and --log_csv")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    configure_logging()
    try:
        settings_override = json.loads(args.settings)
        validation = json.loads(args.validation) if args.validation else None
    except json.JSONDecodeError as error:
        print(f"error: --settings or --validation is not valid JSON: {error}", file=sys.stderr)
        return 2
    config = load_config(args.config_path)
    settings = deep_merge(train_settings(config, args.variant), settings_override)
    settings = fill_defaults_and_validate({**config, "train": settings}, "--settings")["train"]
    out_dir = Path(args.out_dir) if args.out_dir else Path(args.ckpt).parent
    try:
        train(settings, variant=args.variant, train_list=args.train_list, val_list=args.val_list,
              pretrained=args.pretrained, validation=validation, out_ckpt=args.ckpt or str(out_dir / "model.ckpt"),
              out_log=args.log_csv or str(out_dir / "train_log.csv"),
              out_curve=args.curve or (str(out_dir / "train_curve.png") if args.out_dir else None),
              state_dir=args.state_dir or str(out_dir / "train_state"),
              device=args.device or config["device"], precision=args.precision or config["precision"])
    except (TrainingDiverged, ValueError, FileNotFoundError, OutputError) as error:
        logging.getLogger("train").error("%s", error)
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
