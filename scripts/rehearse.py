"""The full-size rehearsal: the official recipe at Cityscapes' real shapes, end to end, on this machine.

    python scripts/rehearse.py [--workdir /tmp/rehearsal] [--variants b0 b1 b2 b3 b4 b5]

Runs Snakemake (one job at a time) in WORKDIR with configs/cityscapes.yaml + configs/rehearsal.yaml:
1. b0's training is SIGKILLed (Snakemake's whole process group) once its first checkpoint is written, then
   `--unlock` and `--rerun-incomplete`: the log must say it resumed from that checkpoint;
2. `all`: every variant trains two iterations at 1024x1024, evaluates with sliding 1024 windows over the
   2048x1024 frames, renders, exports its graph at [1024, 2048]; the summary table;
3. b0 again with configs/multi_scale.yaml: seven scales and their flips (evaluation only reruns).
Prints each job's wall time (Snakemake's benchmark files), peak memory (the line each stage script logs at
exit) and first-step (graph compile) time, as a markdown table, also written to WORKDIR/rehearsal.md. Exit
status 0 only when every phase finished and b0 resumed. Training at 1024x1024 peaks at 2.9 / 4.2 / 6.3 / 8.2 /
10.5 / 12.0 GiB for b0-b5 (benchmarks/README.md): all six fit a 24 GB machine.
"""

import argparse
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = [str(ROOT / "configs" / "cityscapes.yaml"), str(ROOT / "configs" / "rehearsal.yaml")]
MULTI_SCALE = str(ROOT / "configs" / "multi_scale.yaml")
FIRST_STEP = re.compile(r"(first step [\d.]+ s|first image [\d.]+ s|export done in [\d.]+ s)")
PEAK = re.compile(r"peak memory (\d+) MiB")


def snakemake(workdir: Path, variants: list[str], *extra: str, configs=CONFIGS) -> list[str]:
    """The command line; targets and flags (`extra`) first, as --configfile and --config take lists."""
    return [sys.executable, "-m", "snakemake", *extra, "--snakefile", str(ROOT / "Snakefile"), "--directory",
            str(workdir), "--cores", "1", "--configfile", *configs,
            "--config", f"variants=[{','.join(variants)}]"]


def run(command: list[str], what: str) -> float:
    start = time.perf_counter()
    print(f"== {what}: {' '.join(command)}", flush=True)
    result = subprocess.run(command)
    if result.returncode:
        sys.exit(f"error: {what} failed (exit {result.returncode}); see the logs under the work folder")
    return time.perf_counter() - start


def kill_after_first_checkpoint(workdir: Path, variants: list[str], timeout_s: float = 3600) -> None:
    """Start b0's training and SIGKILL Snakemake's process group once train_state holds a checkpoint."""
    command = snakemake(workdir, variants, "results/b0/model.ckpt")
    print(f"== training b0 until its first checkpoint, then a kill: {' '.join(command)}", flush=True)
    process = subprocess.Popen(command, start_new_session=True)
    state = workdir / "results" / "b0" / "train_state"
    deadline = time.time() + timeout_s
    while not list(state.glob("state_*.ckpt")):
        if process.poll() is not None:
            sys.exit(f"error: training of b0 ended (exit {process.returncode}) before its first checkpoint")
        if time.time() > deadline:
            os.killpg(process.pid, signal.SIGKILL)
            sys.exit(f"error: no checkpoint in {state} within {timeout_s:.0f} s")
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    print(f"== killed with {[p.name for p in state.glob('state_*.ckpt')]} in {state}", flush=True)


def benchmark_rows(workdir: Path, phase: str) -> list[dict]:
    """A row per job: wall time from its benchmark file; peak memory from its log (each stage script logs its
    own at exit), else the benchmark file's max_rss, marked *, which samples every 30 s and misses short peaks."""
    rows = []
    for path in sorted((workdir / "results" / "benchmarks").glob("*.tsv")):
        record = pd.read_csv(path, sep="\t").iloc[-1]
        log = workdir / "results" / "logs" / f"{path.stem}.log"
        text = log.read_text() if log.exists() else ""
        peaks = [float(value) for value in PEAK.findall(text)]
        peak = f"{max(peaks):.0f}" if peaks else f"{float(record['max_rss']):.0f}*"
        rows.append({"phase": phase, "job": path.stem, "wall s": round(float(record["s"]), 1),
                     "peak RSS MiB": peak, "first step / image (compile included)": "; ".join(FIRST_STEP.findall(text))})
    return rows


def markdown_table(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(str(value) for value in row.values()) + " |" for row in rows]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/rehearsal"))
    parser.add_argument("--variants", nargs="+", default=["b0", "b1", "b2", "b3", "b4", "b5"])
    args = parser.parse_args(argv)
    if "b0" not in args.variants:
        parser.error("--variants must include b0 (the resume and multi-scale phases use it)")
    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    resume_s = 0.0
    if (workdir / "results" / "b0" / "model.ckpt").exists():  # a rehearsal carried on: b0 was resumed before
        print("== b0 trained already in this work folder: no kill and resume this time", flush=True)
    else:
        kill_after_first_checkpoint(workdir, args.variants)
        run(snakemake(workdir, args.variants, "--unlock"), "unlock")
        resume_s = run(snakemake(workdir, args.variants, "--rerun-incomplete", "results/b0/model.ckpt"), "resume b0")
    train_log = (workdir / "results" / "logs" / "train_b0.log").read_text()
    if "resumed at iteration 1" not in train_log:
        sys.exit("error: b0's training did not resume from its checkpoint (no 'resumed at iteration 1' in its log)")
    all_s = run(snakemake(workdir, args.variants, "all"), "all variants")
    rows = benchmark_rows(workdir, "all")
    multi_s = run(snakemake(workdir, args.variants, "results/b0/miou.csv", configs=[*CONFIGS, MULTI_SCALE]),
                  "b0 multi-scale + flip")
    rows += [row for row in benchmark_rows(workdir, "multi-scale") if row["job"] == "evaluate_b0"]

    table = markdown_table(rows)
    footer = (f"\nwall: resumed b0 training {resume_s:.0f} s, all {all_s:.0f} s, b0 multi-scale {multi_s:.0f} s, "
              f"whole rehearsal {time.perf_counter() - started:.0f} s\n")
    (workdir / "rehearsal.md").write_text(table + "\n" + footer)
    print(table + footer)
    return 0


if __name__ == "__main__":
    sys.exit(main())
