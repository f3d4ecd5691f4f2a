"""Per-stage wall times of a workflow run, from the Snakemake `benchmark:` files every rule writes.

    python benchmarks/stage_times.py [results/benchmarks]

Prints one line per job (rule, variant, wall seconds, peak RSS) and the sum. Run it after
`rm -rf results/*/ && snakemake --cores 2` to see where a demo run spends its time.
"""

import argparse
import sys
from pathlib import Path

import pandas as pd


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", nargs="?", default="results/benchmarks")
    args = parser.parse_args(argv)
    files = sorted(Path(args.folder).glob("*.tsv"))
    if not files:
        print(f"error: {args.folder}: no benchmark files (run the workflow first)", file=sys.stderr)
        return 1
    rows = []
    for path in files:
        record = pd.read_csv(path, sep="\t").iloc[-1]
        rows.append({"job": path.stem, "wall_s": float(record["s"]), "max_rss_mb": float(record["max_rss"])})
    table = pd.DataFrame(rows).sort_values("wall_s", ascending=False)
    print(table.to_string(index=False, float_format=lambda x: f"{x:.1f}"))
    print(f"sum of job wall times: {table['wall_s'].sum():.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
