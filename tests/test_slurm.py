"""The workflow on a real single-node SLURM cluster, through profiles/slurm-test.

scripts/slurm_cluster.sh starts munged, slurmctld and slurmd on loopback (installing the Debian
packages when missing; needs root). The data stage of the workflow then runs on a tiny demo in a
copy of the working tree (the repository's results/ stays untouched), and the test checks that its
jobs went through SLURM, completed there, and wrote the right outputs. A machine that cannot run
SLURM fails here with the reason: the cluster path is a feature, not an optional extra.

The two-node test runs scripts/slurm_two_nodes.sh: a cluster of two slurmd, each node in a network
namespace of its own (scripts/slurm_cluster.sh --nodes 2), and the training of b0 with `nodes: 2`
through profiles/slurm-test as one SLURM job on both nodes. Measured on the 2-core development
machine with other test suites running: 2 min 13 s in all (training job 88 s).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import copy_working_tree

REPO = Path(__file__).resolve().parents[1]
CLUSTER_SCRIPT = REPO / "scripts" / "slurm_cluster.sh"
TWO_NODES_SCRIPT = REPO / "scripts" / "slurm_two_nodes.sh"
SNAKEMAKE_TIMEOUT_S = 300
TINY_DEMO = {"seed": 0, "width": 64, "height": 32, "train_images": 4, "val_images": 4}
# The log path may hold spaces (the test's copy lives in "my work's dir").
SUBMITTED = re.compile(r"Job \d+ has been submitted with SLURM jobid (\d+) \(log: (.+?\.log)\)")


@dataclass
class Cluster:
    state_dir: Path
    env: dict

    @property
    def jobcomp_log(self) -> Path:
        return self.state_dir / "log" / "jobcomp.log"


def cluster_command(action: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(CLUSTER_SCRIPT), action], env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.fixture
def slurm_cluster():
    """A running single-node test cluster; stopped after the test unless it was already running before
    (the two-node cluster needs it gone: both point /etc/slurm/slurm.conf at their configuration)."""
    state_dir = Path(os.environ.get("SLURM_TEST_DIR", "/tmp/segformer-slurm"))
    env = {**os.environ, "SLURM_TEST_DIR": str(state_dir), "SLURM_CONF": str(state_dir / "slurm.conf")}
    was_running = cluster_command("status", env).returncode == 0
    started = cluster_command("start", env)
    if started.returncode != 0:
        pytest.fail(f"cannot start the SLURM test cluster ({CLUSTER_SCRIPT} start, exit "
                    f"{started.returncode}):\n{started.stderr}{started.stdout}")
    yield Cluster(state_dir, env)
    if not was_running:
        stopped = cluster_command("stop", env)
        assert stopped.returncode == 0, f"{CLUSTER_SCRIPT} stop failed:\n{stopped.stderr}"


def run_logged(command: list[str], log_path: Path, *, cwd, env: dict, timeout_s: float, stop) -> tuple[int, str]:
    """Run `command` in its own session with its output in `log_path`; past `timeout_s` send it `stop`
    (then kill it) and fail the test with the log's end. Returns (exit status, output)."""
    with open(log_path, "w") as log:
        proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            returncode = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.send_signal(stop)
            try:
                proc.wait(timeout=90)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            pytest.fail(f"{command[:3]} ran past {timeout_s} s:\n{log_path.read_text()[-4000:]}")
    return returncode, log_path.read_text()


def run_snakemake(workdir: Path, args: list[str], env: dict) -> tuple[int, str]:
    """Snakemake ignores SIGTERM while it waits on SLURM jobs: stop it with SIGINT (cancels its jobs)."""
    return run_logged([sys.executable, "-m", "snakemake", *args], workdir / "snakemake.out", cwd=workdir, env=env,
                      timeout_s=SNAKEMAKE_TIMEOUT_S, stop=signal.SIGINT)


def completed_jobs(jobcomp_text: str) -> dict[str, str]:
    """SLURM job id -> the jobcomp/filetxt record of its end."""
    records = {}
    for line in jobcomp_text.splitlines():
        match = re.match(r"JobId=(\d+) ", line)
        if match:
            records[match.group(1)] = line
    return records


TINY_TRAIN = {"iterations": 2, "batch_size": 1, "crop_size": [64, 64], "base_scale": [64, 32], "log_interval": 1,
              "checkpoint_interval": 0, "num_workers": 1, "schedule": {"warmup_iters": 1}}


def test_one_variant_chain_runs_as_slurm_jobs_with_data_parallel_training(slurm_cluster, tmp_path):
    """demo -> labels -> training on 2 msrun workers inside one SLURM job -> evaluation."""
    workdir = copy_working_tree(tmp_path / "my work's dir" / "workflow")  # a space and a quote, as users' paths have
    (workdir / "tiny.yaml").write_text(json.dumps({"demo": TINY_DEMO, "labels": {"nproc": 2},
                                                   "devices": 2, "train": TINY_TRAIN}))
    env = {**slurm_cluster.env, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    jobcomp_offset = slurm_cluster.jobcomp_log.stat().st_size if slurm_cluster.jobcomp_log.exists() else 0

    returncode, log = run_snakemake(
        workdir, ["--profile", "profiles/slurm-test", "results/b0/miou.csv",
                  "--configfile", "tiny.yaml"], env)
    assert returncode == 0, f"snakemake failed (exit {returncode}):\n{log[-6000:]}"

    # Which rules went through SLURM, by the plugin's report and the per-rule SLURM log folder.
    submitted = {job_id: Path(slurm_log) for job_id, slurm_log in SUBMITTED.findall(log)}
    # .snakemake/slurm_logs/rule_NAME[/WILDCARDS]/JOBID.log
    rules = {next(part for part in path.parts if part.startswith("rule_")).removeprefix("rule_"): job_id
             for job_id, path in submitted.items()}
    for rule in ("convert_labels", "train", "evaluate"):
        assert rule in rules, f"{rule} was not submitted to SLURM:\n{log[-4000:]}"
    assert "demo_dataset" in rules or "localrule demo_dataset:" in log, log[-4000:]

    # SLURM's own record: every submitted job ended COMPLETED with exit code 0, and its SLURM log
    # shows the rule running inside the job (Snakemake started again there by the jobstep plugin).
    with open(slurm_cluster.jobcomp_log) as record:
        record.seek(jobcomp_offset)
        ended = completed_jobs(record.read())
    for rule, job_id in rules.items():
        assert job_id in ended, f"SLURM job {job_id} ({rule}) missing from {slurm_cluster.jobcomp_log}"
        assert "JobState=COMPLETED" in ended[job_id] and "ExitCode=0:0" in ended[job_id], ended[job_id]
        job_log = submitted[job_id].read_text()
        assert f"rule {rule}:" in job_log and "Finished jobid" in job_log, job_log[-3000:]

    # The outputs: one list line per configured frame, and a manifest.
    data = workdir / "results" / "data"
    train_lines = (data / "train.txt").read_text().splitlines()
    val_lines = (data / "val.txt").read_text().splitlines()
    assert len(train_lines) == TINY_DEMO["train_images"], train_lines
    assert len(val_lines) == TINY_DEMO["val_images"], val_lines
    assert all(line.strip() for line in train_lines + val_lines)
    manifest = (data / "manifest.json").read_text()
    assert manifest.strip().startswith("{") and len(manifest) > 20, manifest
    train_log = (workdir / "results/logs/train_b0.log").read_text()
    assert "msrun --worker_num=2 --local_worker_num=2" in train_log, train_log[-3000:]
    assert "global batch 2 = 2 devices x 1 per device" in train_log, train_log[-3000:]
    assert (workdir / "results/b0/model.ckpt").stat().st_size > 1_000_000
    assert (workdir / "results/b0/miou.csv").read_text().startswith("variant,mIoU,aAcc,mAcc,road,")


@pytest.mark.rehearsal
def test_training_runs_as_one_slurm_job_on_two_nodes(tmp_path):
    """`nodes: 2`, `devices: 1`: Snakemake submits one job of two nodes, srun starts one launcher on
    each, msrun joins the two workers; SLURM's records show the job on both nodes."""
    if os.geteuid() != 0:
        pytest.fail("the two-node SLURM cluster needs root (network namespaces, /etc/hosts, daemons)")
    env = {**os.environ, "PYTHON": sys.executable}
    for name in ("SLURM_CONF", "SLURM_TEST_DIR", "SLURM_TEST_NODES"):
        env.pop(name, None)
    # On a timeout SIGTERM reaches the script, which stops Snakemake with SIGINT (cancelling the SLURM
    # job), then the cluster, the namespaces and the /etc/hosts lines.
    returncode, out = run_logged(["bash", str(TWO_NODES_SCRIPT), "--timeout_s", str(SNAKEMAKE_TIMEOUT_S + 180),
                                  str(tmp_path / "work")], tmp_path / "slurm_two_nodes.out", cwd=REPO, env=env,
                                 timeout_s=SNAKEMAKE_TIMEOUT_S + 300, stop=signal.SIGTERM)
    assert returncode == 0, f"{TWO_NODES_SCRIPT} failed (exit {returncode}):\n{out[-6000:]}"
    result = json.loads(next(line for line in out.splitlines() if line.startswith("RESULT ")).removeprefix("RESULT "))
    assert result["ok"] is True, result
    assert result["nodelist_running"] == "segformer-n[1-2]", result
    job = result["train_job"]
    # SLURM's completed-job record, and each node's slurmd launching the job's step.
    record = re.search(rf"^JobId={job} .*$", out, re.MULTILINE)
    assert record and "NodeList=segformer-n[1-2]" in record.group() and "NodeCnt=2" in record.group(), out[-4000:]
    assert "JobState=COMPLETED" in record.group() and "ExitCode=0:0" in record.group(), record.group()
    for node in ("segformer-n1", "segformer-n2"):
        section = out.split(f"== slurmd {node}:", 1)[1].split("==", 1)[0]
        assert re.search(rf"launch task StepId={job}\.\d+ ", section), out[-4000:]
    # Both launchers ran msrun, with the node ranks SLURM gave them and one master.
    for rank in (0, 1):
        assert f"--node_rank={rank} --master_addr=segformer-n1" in out, out[-4000:]
    assert "msrun schedulers started: 1;" in out, out[-4000:]
    assert result["model_bytes"] > 1_000_000, result
