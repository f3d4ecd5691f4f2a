#!/usr/bin/env python
"""Stage: Cityscapes polygon annotations -> *_gtFine_labelTrainIds.png (like csCreateTrainIdLabelImgs).

    python workflow_scripts/convert_dataset.py DATA_ROOT --nproc 8
        writes each label beside its json, as the seed's tool and cityscapesscripts do;
    python workflow_scripts/convert_dataset.py DATA_ROOT --nproc 2 --out_dir results/data \\
            --lists_dir results/data --manifest results/data/labels_manifest.json
        writes labels into results/data/gtFine/SPLIT/CITY/ (nothing under DATA_ROOT), the split
        lists SPLIT.txt, and last, only if every file succeeded, the manifest.

Labels newer than their json are kept unless --force. Exit status 1 when any file failed; each
failure is printed with its path and reason, and neither lists nor manifest are written then.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import segformer
from segformer.convert.labels import convert_dataset, split_pairs, write_split_lists
from segformer.data.cityscapes import find_polygons
from segformer.io import write_json
from segformer.logs import configure_logging

log = logging.getLogger("convert_dataset")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data_root", type=Path, help="Cityscapes root holding gtFine/ and leftImg8bit/")
    parser.add_argument("--nproc", type=int, default=1, help="worker processes (default 1)")
    parser.add_argument("--out_dir", type=Path, help="write labels to OUT_DIR/gtFine/... instead of beside the json")
    parser.add_argument("--force", action="store_true", help="redraw labels that are already newer than their json")
    parser.add_argument("--lists_dir", type=Path, help="also write LISTS_DIR/{train,val,test}.txt (splits present)")
    parser.add_argument("--manifest", type=Path, help="json manifest written last, only if everything succeeded")
    parser.add_argument("--quiet", action="store_true", help="no progress bar (shown by default on a terminal)")
    args = parser.parse_args(argv)
    if args.nproc < 1:
        parser.error(f"--nproc must be at least 1, got {args.nproc}")
    return args


def build_manifest(args, label_root: Path, report, pairs: dict, lists: dict) -> dict:
    from importlib.metadata import version  # not at the top: it slows every start by ~20 ms

    labels = sorted(report.converted + report.skipped)
    return {
        "tool": "workflow_scripts/convert_dataset.py",
        "segformer_version": segformer.__version__,
        "cityscapesscripts_version": version("cityscapesscripts"),
        "source_root": str(args.data_root.resolve()),
        "label_root": str(label_root.resolve()),
        "options": {
            "nproc": args.nproc,
            "force": args.force,
            "out_dir": None if args.out_dir is None else str(args.out_dir),
            "lists_dir": None if args.lists_dir is None else str(args.lists_dir),
        },
        "counts": {split: len(split_list) for split, split_list in sorted(pairs.items())},
        "converted": len(report.converted),
        "up_to_date": len(report.skipped),
        "lists": {split: str(path) for split, path in sorted(lists.items())},
        "files": [str(path.relative_to(label_root)) for path in labels],
    }


def main(argv=None) -> int:
    configure_logging()
    args = parse_args(argv)
    if not find_polygons(args.data_root):
        log.error("%s: no gtFine/*/*/*_gtFine_polygons.json found (is this a Cityscapes root?)",
                  args.data_root / "gtFine")
        return 1
    label_root = args.out_dir if args.out_dir is not None else args.data_root
    if args.manifest is not None:
        # A manifest from an earlier run must not survive a failed one: later stages trust it.
        args.manifest.unlink(missing_ok=True)

    report = convert_dataset(args.data_root, args.out_dir, nproc=args.nproc, force=args.force,
                             progress=False if args.quiet else None)
    pairs, pairing_errors = split_pairs(args.data_root, label_root)
    errors = report.errors + pairing_errors
    log.info("%s (labels under %s)", report.summary(), label_root / "gtFine")
    if errors:
        for path, reason in errors:
            log.error("%s: %s", path, reason)
        log.error("%d problem(s); no split lists or manifest written", len(errors))
        return 1

    lists = write_split_lists(args.lists_dir, pairs) if args.lists_dir is not None else {}
    for split, path in lists.items():
        log.info("%s: %d frames", path, len(pairs[split]))
    if args.manifest is not None:
        write_json(args.manifest, build_manifest(args, label_root, report, pairs, lists))
        log.info("manifest: %s", args.manifest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
