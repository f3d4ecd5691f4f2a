"""Build the results table (the summary stage): every variant's miou.csv into summary.csv, a
markdown page beside the published Cityscapes numbers, and a figure.

    python workflow_scripts/summarize.py --miou results/b0/miou.csv results/b1/miou.csv \
        --out_csv results/summary.csv --out_md results/summary.md --out_png results/summary.png \
        --evaluation "whole image, single scale" [--multi_scale] [--demo]

All inputs are checked before anything is written: on a bad miou.csv the script prints
``error: FILE: what is wrong``, exits 1 and leaves none of the three outputs behind.
Deliberately light: no MindSpore import (segformer.engine would pull it in).
"""

import argparse
import logging
import sys

from segformer.io import OutputError, write_text
from segformer.logs import configure_logging
from segformer.summary import (
    SummaryInputError,
    plot_miou,
    read_miou_rows,
    summary_csv_text,
    summary_markdown,
)

log = logging.getLogger("summarize")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--miou", nargs="+", required=True, help="one results/{v}/miou.csv per variant")
    parser.add_argument("--out_csv", required=True, help="summary.csv to write (the rows stacked)")
    parser.add_argument("--out_md", required=True, help="markdown results page to write")
    parser.add_argument("--out_png", required=True, help="figure to write")
    parser.add_argument("--evaluation", required=True,
                        help='how ours was evaluated, e.g. "slide 1024x1024 stride 768, single scale"')
    parser.add_argument("--multi_scale", action="store_true",
                        help="ours is multi-scale: compare to the paper's multi-scale column")
    parser.add_argument("--demo", action="store_true",
                        help="the numbers come from the synthetic demo dataset (say so on the page)")
    parser.add_argument("--note", action="append", default=[], metavar="LABEL=TEXT",
                        help="a note for the page, e.g. 'b1=the authors\' checkpoint, not trained here' (repeatable)")
    args = parser.parse_args(argv)
    if any("=" not in note for note in args.note):
        parser.error("--note takes LABEL=TEXT")
    args.notes = dict(note.split("=", 1) for note in args.note)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    configure_logging()
    try:
        frame = read_miou_rows(args.miou)
    except (SummaryInputError, OutputError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    # Everything is rendered in memory first; the figure goes first as the likeliest to fail.
    csv_text = summary_csv_text(frame)
    page = summary_markdown(frame, evaluation=args.evaluation, multi_scale=args.multi_scale, demo=args.demo,
                            notes=args.notes or None)
    title = "SegFormer on the synthetic demo data" if args.demo else "SegFormer on Cityscapes val"
    plot_miou(frame, args.out_png, title=title)
    write_text(args.out_csv, csv_text)
    write_text(args.out_md, page)
    log.info("summary of %s: %s, %s, %s", ", ".join(frame["variant"]), args.out_csv, args.out_md, args.out_png)
    return 0


if __name__ == "__main__":
    sys.exit(main())
