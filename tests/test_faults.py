"""Faults anywhere in the workflow: Snakemake's whole process group hard-killed (SIGKILL) while a stage
runs, then `--unlock` and `--rerun-incomplete`, as a user recovers. One chain of kills through one tiny
b0 demo run (labels, training after its first checkpoint, evaluation, rendering, export, the summary
table), then a run to the end: every output complete and readable, training resumed from its last
checkpoint instead of starting over, every iteration once in train_log.csv, the table from the final
scores, and nothing left to do.

And a results folder that cannot be written (a full disk, no permission): the stage fails naming the
path, nothing looks finished."""

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import pytest
import yaml

from conftest import copy_working_tree

TINY = {
    "variants": ["b0"],
    "demo": {"width": 128, "height": 64, "train_images": 8, "val_images": 4},
    "train": {"iterations": 6, "batch_size": 2, "crop_size": [64, 64], "base_scale": [128, 64],
              "log_interval": 1, "checkpoint_interval": 2, "num_workers": 1, "schedule": {"warmup_iters": 1}},
    "export": {"input_size": [64, 128]},
}
COMMAND = [sys.executable, "-m", "snakemake", "--cores", "2", "--configfile", "tiny.yaml"]

# Kill points: (name, what means "now": a file's appearance, or for a script the job's Python process
# running it). Training is killed once it has a checkpoint to resume from; every other stage while its
# Python process runs, so not finished. (Their logs would not do: a stage that ran beside an earlier kill
# point's stage has a log from that run before its job starts again.)
KILL_POINTS = [
    ("label conversion", "workflow_scripts/convert_dataset.py"),
    ("training", "results/b0/train_state/state_00000002.ckpt"),
    ("evaluation", "workflow_scripts/evaluate.py"),
    ("rendering", "workflow_scripts/infer.py"),
    ("export", "workflow_scripts/export.py"),
    ("summary", "workflow_scripts/summarize.py"),
]
SUMMARY_OUTPUTS = ["results/summary.csv", "results/summary.md", "results/miou.png"]


def start(workdir: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([*COMMAND, *extra], cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)


def scripts_running(group: int) -> list[str]:
    """The scripts that processes of this process group run as `python script ...` (not the shells)."""
    scripts = []
    for entry in Path("/proc").iterdir():
        try:
            if not entry.name.isdigit() or os.getpgid(int(entry.name)) != group:
                continue
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:  # gone meanwhile
            continue
        if len(argv) > 1:
            scripts.append(argv[1].decode(errors="replace"))
    return scripts


def kill_at_any(process: subprocess.Popen, workdir: Path, markers: dict[str, str], timeout_s: float = 400) -> list[str]:
    """SIGKILL the process group as soon as any marker holds (a file: exists; a script: runs); the names of
    those that held then, none if the run ended first."""
    deadline = time.time() + timeout_s
    while True:
        running = scripts_running(process.pid)
        held = [name for name, marker in markers.items()
                if (any(script.endswith(marker) for script in running) if marker.endswith(".py")
                    else (workdir / marker).exists())]
        if held:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            return held
        if process.poll() is not None:
            return []
        assert time.time() < deadline, f"none of {list(markers)} happened within {timeout_s} s"
        time.sleep(0.05)


def run(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*COMMAND, *args], cwd=workdir, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    workdir = copy_working_tree(tmp_path_factory.mktemp("faults"))
    (workdir / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    return workdir


def test_hard_kills_anywhere_then_unlock_and_rerun_incomplete_finish_correctly(workdir):
    # Stages that may run side by side (evaluation, rendering, export) start in Snakemake's order, not ours:
    # each run is killed as soon as any stage not yet killed is at its kill point.
    remaining = dict(KILL_POINTS)
    extra = ()
    while remaining:
        process = start(workdir, *extra)
        caught = kill_at_any(process, workdir, remaining)
        if not caught:
            pytest.fail(f"the run ended before {list(remaining)} were caught:\n{process.stdout.read()[-3000:]}")
        if "summary" in caught:  # inside it: the job had started, its outputs were not finished
            assert not [o for o in SUMMARY_OUTPUTS if (workdir / o).exists()], "summary finished first"
        for name in caught:
            del remaining[name]
        unlock = run(workdir, "--unlock")
        assert unlock.returncode == 0, unlock.stdout + unlock.stderr
        extra = ("--rerun-incomplete",)

    final = run(workdir, "--rerun-incomplete")
    assert final.returncode == 0, final.stdout[-3000:] + final.stderr[-3000:]
    results = workdir / "results"
    # training resumed from its checkpoint rather than starting over, and logged each iteration once
    assert "resumed at iteration" in (results / "logs" / "train_b0.log").read_text()
    with open(results / "b0" / "train_log.csv") as handle:
        rows = list(csv.DictReader(line for line in handle if not line.startswith("#")))
    assert [int(row["iteration"]) for row in rows] == list(range(1, TINY["train"]["iterations"] + 1))
    assert not (results / "b0" / "train_state").exists()
    # every output complete and readable
    with open(results / "b0" / "miou.csv") as handle:
        assert len(list(csv.DictReader(handle))) == 1
    pngs = list((results / "b0" / "infer").rglob("*.png")) + [results / "b0" / "infer_preview.png",
                                                              results / "miou.png"]
    assert len(pngs) > 4
    for png in pngs:
        assert cv2.imread(str(png), cv2.IMREAD_UNCHANGED) is not None, f"{png} is truncated"
    assert (results / "b0" / "segformer_b0.mindir").stat().st_size > 100_000
    assert (results / "summary.md").read_text().strip()
    # the table is the final scores' (not stale) and the summary's log is the rerun's own
    assert (results / "summary.csv").read_text() == (results / "b0" / "miou.csv").read_text()
    assert "summary of b0" in (results / "logs" / "summary.log").read_text()
    leftovers = [p for p in results.rglob("*") if ".tmp" in p.name or p.name.startswith(".staging")]
    assert not leftovers, leftovers
    again = run(workdir, "-n")
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr, again.stdout[-2000:]


def full_disk(limit: int):
    """For the child: files may not grow past `limit` bytes (RLIMIT_FSIZE; writes then fail with EFBIG, as on
    a full disk), for root too, unlike permission bits."""
    def apply():
        import resource

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def stage_command(workdir: Path, stage: str, out: Path) -> list[str]:
    """A stage of the run above, by hand, writing `out` (export: the graph; infer, train: the folder)."""
    results = workdir / "results"
    args = {
        "export": ["--variant", "b0", "--ckpt", results / "b0" / "model.ckpt", "--out", out,
                   "--height", "64", "--width", "128"],
        "infer": ["--variant", "b0", "--ckpt", results / "b0" / "model.ckpt", "--images",
                  results / "demo" / "cityscapes" / "leftImg8bit" / "val", "--out_dir", out],
        "train": ["--variant", "b0", "--settings", json.dumps(TINY["train"] | {"iterations": 1}),
                  "--train_list", results / "data" / "train.txt", "--out_dir", out],
    }[stage]
    return [sys.executable, str(workdir / "workflow_scripts" / f"{stage}.py"), *map(str, args)]


@pytest.mark.parametrize("stage, limit", [("export", 64 * 1024), ("infer", 1024), ("train", 64 * 1024)])
def test_a_full_disk_fails_the_stage_naming_the_path_and_leaves_nothing_finished(workdir, stage, limit, tmp_path):
    """After the run above, a stage writing into a full disk: non-zero exit, the path named, no output."""
    out = tmp_path / "out"
    out.mkdir()
    target = {"export": out / "b0.mindir", "infer": out / "infer", "train": out}[stage]
    result = subprocess.run(stage_command(workdir, stage, target), cwd=workdir, capture_output=True,
                            text=True, timeout=600, preexec_fn=full_disk(limit))
    assert result.returncode != 0
    assert str(out) in result.stderr, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    finished = [p for p in out.rglob("*") if p.is_file() and p.stat().st_size > 0 and ".tmp" not in p.name
                and p.name != "train_log.csv" and "train_state" not in p.parts]
    assert not finished, finished


def without_dac_override() -> list[str]:
    """A command prefix under which permission bits hold: root ignores them (CAP_DAC_OVERRIDE,
    CAP_DAC_READ_SEARCH), so for root the child runs without those capabilities; the folder's owner
    then obeys its owner bits like anyone."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("running as root, without setpriv to drop CAP_DAC_OVERRIDE")
    caps = "-dac_override,-dac_read_search"
    return ["setpriv", f"--inh-caps={caps}", f"--bounding-set={caps}", "--"]


@pytest.mark.parametrize("stage", ["infer", "export"])
def test_a_read_only_results_folder_fails_the_stage_naming_the_path_and_leaves_nothing(workdir, stage, tmp_path):
    """After the run above, a stage whose results folder is read-only (0o555): non-zero exit, the path named,
    no traceback, nothing written. The rendering's folder would go right in it; the graph in a folder that
    would have to be made in it."""
    out = tmp_path / "results"
    out.mkdir()
    target = {"infer": out / "infer", "export": out / "b0" / "segformer_b0.mindir"}[stage]
    prefix = without_dac_override()
    out.chmod(0o555)
    try:
        probe = subprocess.run([*prefix, "touch", str(out / "probe")], capture_output=True, text=True)
        if probe.returncode == 0 or "Permission denied" not in probe.stderr:
            pytest.skip(f"cannot make a folder unwritable here: {probe.stderr.strip() or 'touch wrote into it'}")
        result = subprocess.run([*prefix, *stage_command(workdir, stage, target)], cwd=workdir,
                                capture_output=True, text=True, timeout=600)
    finally:
        out.chmod(0o755)
    assert result.returncode == 1, result.stderr[-3000:]
    assert f"{target}: cannot be written (Permission denied)" in result.stderr, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert not list(out.iterdir())
