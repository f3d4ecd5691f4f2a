#!/usr/bin/env python
"""Stage: write the synthetic demo dataset (Cityscapes layout) that the default workflow trains on.

    python workflow_scripts/make_demo.py OUT_ROOT --seed 0 --width 256 --height 128 --train 96 --val 16

OUT_ROOT must be missing or empty (or --force replaces it). The tree is built beside OUT_ROOT and
renamed into place when complete; OUT_ROOT/demo_manifest.json lists what was written.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from segformer.demo import generate_demo
from segformer.io import OutputError
from segformer.logs import configure_logging

log = logging.getLogger("make_demo")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_root", type=Path, help="dataset root to create (leftImg8bit/, gtFine/)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--train", type=int, default=96, help="training frames")
    parser.add_argument("--val", type=int, default=16, help="validation frames")
    parser.add_argument("--force", action="store_true", help="replace OUT_ROOT if it is not empty")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    configure_logging()
    args = parse_args(argv)
    start = time.perf_counter()
    try:
        manifest = generate_demo(args.out_root, seed=args.seed, width=args.width, height=args.height,
                                 train_images=args.train, val_images=args.val, force=args.force)
    except (ValueError, FileExistsError, OutputError) as err:
        log.error("%s", err)
        return 1
    log.info("%s: %s frames at %dx%d, seed %d, in %.1f s", args.out_root, manifest["counts"], args.width,
             args.height, args.seed, time.perf_counter() - start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
