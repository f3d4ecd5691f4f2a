"""Shared fixtures. Heavy things (a demo dataset, a trained model) are session-scoped and built once.

Budget: the whole suite runs on 2 cores in CI within 25 minutes (measured 13-23 minutes on the faster CI
machines, 33 on a slow one), so everything that trains uses b0, tiny images and few iterations, and
shares the runs made here (the trained b0, the two-worker run) instead of training a reference of its own.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

# Keep MindSpore/oneDNN from oversubscribing the 2-core CI machine.
os.environ.setdefault("OMP_NUM_THREADS", "2")

ROOT = Path(__file__).resolve().parents[1]

# A tiny demo: 128x64 frames, enough to train a few iterations on and to evaluate quickly.
TINY_DEMO = dict(seed=0, width=128, height=64, train_images=8, val_images=4)

# Training settings for tests: b0, crops of 64, a handful of iterations.
TINY_TRAIN = {
    "iterations": 12, "batch_size": 2, "crop_size": [64, 64], "base_scale": [128, 64],
    "log_interval": 2, "checkpoint_interval": 0, "num_workers": 1,
    "schedule": {"warmup_iters": 2},
}


def working_tree_files() -> list[str]:
    """Tracked and untracked-but-not-ignored files: what a clone plus local edits would hold."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                            cwd=ROOT, capture_output=True, text=True, check=True)
    return [name for name in listed.stdout.splitlines() if (ROOT / name).is_file()]


def copy_working_tree(dest: Path) -> Path:
    """A copy of the workflow (without tests/ and benchmarks/) to run Snakemake in, leaving the
    repository's own results/ alone."""
    for name in working_tree_files():
        if name.startswith(("tests/", "benchmarks/")):
            continue
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, dest / name)
    return dest


@pytest.fixture(scope="module")
def pynative_cpu():
    """MindSpore on CPU in PyNative mode for one test module (no graph compiles), restored after."""
    import mindspore

    if mindspore.get_current_device().device_target != "CPU":   # CPU is the default; setting it late fails
        mindspore.set_device("CPU")
    mode = mindspore.get_context("mode")
    mindspore.set_context(mode=mindspore.PYNATIVE_MODE)
    yield
    mindspore.set_context(mode=mode)


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """A tiny demo dataset with its train-id labels and split lists: {'root', 'data', 'train', 'val'}."""
    from segformer.convert.labels import convert_dataset, split_pairs, write_split_lists
    from segformer.demo import generate_demo

    base = tmp_path_factory.mktemp("tiny")
    root = base / "cityscapes"
    generate_demo(root, **TINY_DEMO)
    data = base / "data"
    report = convert_dataset(root, out_dir=data, nproc=1, progress=False)
    assert not report.errors, report.errors
    pairs, errors = split_pairs(root, data)
    assert not errors, errors
    lists = write_split_lists(data, pairs)
    return {"root": root, "data": data, "train": lists["train"], "val": lists["val"]}


def run_train(out_dir, train_list, val_list=None, *, settings=None, extra=(), launcher_args=None, timeout=900):
    """Run workflow_scripts/train.py (or launch_train.py with launcher_args) as a user would."""
    command = train_command(out_dir, train_list, val_list, settings=settings, extra=extra, launcher_args=launcher_args)
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def train_command(out_dir, train_list, val_list=None, *, settings=None, extra=(), launcher_args=None) -> list[str]:
    """The command line of `run_train`."""
    merged = {**TINY_TRAIN, **(settings or {})}
    train_args = ["--variant", "b0", "--settings", json.dumps(merged), "--train_list", str(train_list),
                  "--out_dir", str(out_dir), *extra]
    if val_list:
        train_args += ["--val_list", str(val_list)]
    if launcher_args is None:
        command = [sys.executable, str(ROOT / "workflow_scripts/train.py"), *train_args]
    else:
        command = [sys.executable, str(ROOT / "workflow_scripts/launch_train.py"), *launcher_args, "--", *train_args]
    return command


# The validation during the shared training uses sliding windows, as the official 1024x1024 recipe does.
TINY_VALIDATION = {"mode": "slide", "crop_size": [64, 64], "stride": [48, 48]}


# The official stochastic layers (the defaults, spelled out); their masks are a function of (seed, rank,
# iteration), so a resumed run draws the same ones.
OFFICIAL_STOCHASTIC = {"model": {"drop_path_rate": 0.1, "head_dropout": 0.1}}


def shared_b0_arguments(tiny_dataset, **settings) -> dict:
    """run_train's arguments for the shared b0 (`trained_b0`), with `settings` added: the official
    stochastic layers on, validation at iterations 6 and 12."""
    return {"train_list": tiny_dataset["train"], "val_list": tiny_dataset["val"],
            "settings": {**OFFICIAL_STOCHASTIC, "eval_interval": 6, **settings},
            "extra": ["--validation", json.dumps(TINY_VALIDATION)]}


@pytest.fixture(scope="session")
def trained_b0(tiny_dataset, tmp_path_factory):
    """One tiny b0 trained once for every test that needs a model: its output folder."""
    out_dir = tmp_path_factory.mktemp("trained_b0")
    result = run_train(out_dir, **shared_b0_arguments(tiny_dataset))
    assert result.returncode == 0, result.stdout + result.stderr
    (out_dir / "train.log").write_text(result.stderr)   # what the rule's log would hold
    return out_dir


# Data-parallel runs compare with other batch layouts (one process with a batch of 2 vs 2 workers x 1),
# whose masks differ: stochastic layers off there.
DETERMINISTIC = {"model": {"drop_path_rate": 0.0, "head_dropout": 0.0}}
# Six iterations: the launcher's kill test (test_launch.py) stops one of these runs after its checkpoint of
# iteration 2 and needs the run not to have ended by then.
DATA_PARALLEL = {**DETERMINISTIC, "iterations": 6, "batch_size": 1}


@pytest.fixture(scope="session")
def one_node_two_workers(tiny_dataset, trained_b0, tmp_path_factory):
    """One node, two msrun workers, from the shared model (shared by the data-parallel and multi-node
    tests): {'start': checkpoint, 'out': output folder, 'stdout': launcher output}."""
    start = trained_b0 / "model.ckpt"
    out = tmp_path_factory.mktemp("one_node_two_workers")
    result = run_train(out, tiny_dataset["train"], settings=DATA_PARALLEL, extra=["--pretrained", str(start)],
                       launcher_args=["--devices", "2", "--nodes", "1", "--log_dir", str(out / "msrun")])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return {"start": start, "out": out, "stdout": result.stdout}
