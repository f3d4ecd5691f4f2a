"""The workflow run for real on a tiny demo (in a copy of the repository): every stage that exists,
then the everyday behaviour users rely on: nothing to redo after a run, also after a `git pull`
touches every source file; one variant's settings change reruns that variant's chain only."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import copy_working_tree

TINY = {
    "variants": ["b0"],
    "demo": {"width": 128, "height": 64, "train_images": 8, "val_images": 4},
    "train": {"iterations": 3, "batch_size": 2, "crop_size": [64, 64], "base_scale": [128, 64],
              "log_interval": 1, "checkpoint_interval": 0, "num_workers": 1, "schedule": {"warmup_iters": 1}},
}


def snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "snakemake", "--cores", "2", "--configfile", "tiny.yaml", *args]
    return subprocess.run(command, cwd=workdir, capture_output=True, text=True, timeout=900)


def planned_jobs(result: subprocess.CompletedProcess) -> dict[str, int]:
    """Rule -> job count from a dry run's job table ('Nothing to be done' gives {})."""
    jobs, in_table = {}, False
    for line in result.stdout.splitlines():
        fields = line.split()
        if fields[:2] == ["job", "count"]:
            in_table = True
            continue
        if in_table and len(fields) == 2 and fields[1].isdigit():
            if fields[0] != "total":
                jobs[fields[0]] = int(fields[1])
        elif in_table and fields and not set(fields[0]) <= {"-"}:
            in_table = False
    return jobs


@pytest.fixture(scope="module")
def finished_workflow(tmp_path_factory):
    workdir = copy_working_tree(tmp_path_factory.mktemp("workflow"))
    (workdir / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    result = snakemake(workdir)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return workdir


def test_the_demo_runs_every_stage(finished_workflow):
    miou = pd.read_csv(finished_workflow / "results/b0/miou.csv")
    assert list(miou.columns[:4]) == ["variant", "mIoU", "aAcc", "mAcc"] and len(miou.columns) == 4 + 19
    assert miou.loc[0, "variant"] == "b0" and 0.0 <= miou.loc[0, "aAcc"] <= 1.0
    for name in ["model.ckpt", "train_log.csv", "train_curve.png"]:
        assert (finished_workflow / "results/b0" / name).stat().st_size > 0
    assert "per class results" in (finished_workflow / "results/logs/evaluate_b0.log").read_text()


def test_nothing_to_do_after_a_run_even_after_sources_are_touched(finished_workflow):
    result = snakemake(finished_workflow, "-n")
    assert result.returncode == 0 and planned_jobs(result) == {}, result.stdout
    later = time.time() + 5
    for folder in ("workflow_scripts", "segformer", "rules"):
        for path in (finished_workflow / folder).rglob("*"):
            if path.is_file():
                os.utime(path, (later, later))
    result = snakemake(finished_workflow, "-n")
    assert result.returncode == 0 and planned_jobs(result) == {}, result.stdout


def test_changing_one_variants_setting_reruns_its_chain_only(finished_workflow):
    result = snakemake(finished_workflow, "-n", "--config", "overrides={b0: {train: {iterations: 4}}}")
    assert result.returncode == 0, result.stderr
    assert planned_jobs(result) == {"all": 1, "train": 1, "evaluate": 1}


def test_one_target_builds_only_its_chain(finished_workflow):
    result = snakemake(finished_workflow, "-n", "results/b1/model.ckpt")
    assert result.returncode == 0, result.stderr
    assert planned_jobs(result) == {"train": 1}
