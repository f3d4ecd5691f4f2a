"""The training launcher: who counts as an msrun worker, msrun's logs, and a data-parallel job that
loses a worker ends within a bounded time and resumes on the rerun.

The first tests need no MindSpore job (a stand-in for msrun built from `sleep`s); the last one runs
two real msrun workers of the tiny b0 through workflow_scripts/launch_train.py and SIGKILLs one.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import DATA_PARALLEL, ROOT, train_command
from segformer.engine.distributed import msrun_world
from segformer.engine.launch import log_files, run_msrun

# What msrun 2.10 exports to a worker of a one-node, two-worker job (_api.py: _Node.run,
# _ComputeGraphNode.run, _ProcessManager.run), as seen in a worker's /proc/PID/environ.
MSRUN_WORKER = {"MS_WORKER_NUM": "2", "MS_SCHED_HOST": "127.0.0.1", "MS_SCHED_PORT": "30841",
                "MS_TOPO_TIMEOUT": "600", "MS_ROLE": "MS_WORKER", "MS_NODE_ID": "1", "RANK_ID": "1",
                "RANK_SIZE": "2", "DEVICE_ID": "1"}


def test_msrun_worker_is_detected_with_its_rank():
    assert msrun_world(MSRUN_WORKER) == (True, 2, 1)
    world = msrun_world(MSRUN_WORKER)
    assert world.is_msrun and world.world_size == 2 and world.rank_hint == 1


def test_a_stale_rank_size_without_msrun_is_a_single_process():
    # what an Ascend host's rank-table script leaves in the environment
    assert msrun_world({"RANK_SIZE": "8", "RANK_ID": "3", "DEVICE_ID": "3", "RANK_TABLE_FILE": "/x.json"}) \
        == (False, 1, None)
    assert msrun_world({}) == (False, 1, None)


def test_msrun_wins_over_a_stale_rank_size():
    # msrun exports RANK_SIZE itself, but MS_WORKER_NUM is what counts
    assert msrun_world({**MSRUN_WORKER, "RANK_SIZE": "8"}).world_size == 2


def test_scheduler_and_unassigned_ranks():
    scheduler = {key: value for key, value in MSRUN_WORKER.items() if key not in ("MS_NODE_ID", "DEVICE_ID")}
    assert msrun_world({**scheduler, "MS_ROLE": "MS_SCHED", "RANK_ID": "0"}) == (True, 2, None)
    # several nodes without --node_rank: msrun sets no MS_NODE_ID, the rank comes after init()
    no_rank = {key: value for key, value in MSRUN_WORKER.items() if key != "MS_NODE_ID"}
    assert msrun_world({**no_rank, "MS_WORKER_NUM": "16"}) == (True, 16, None)


@pytest.mark.parametrize("change, message", [
    ({"MS_ROLE": "MS_PSERVER"}, "MS_ROLE"),
    ({"MS_WORKER_NUM": ""}, "MS_WORKER_NUM"),
    ({"MS_SCHED_PORT": ""}, "MS_SCHED_PORT"),
    ({"MS_WORKER_NUM": "two"}, "not an integer"),
    ({"MS_WORKER_NUM": "0"}, ">= 1"),
    ({"MS_NODE_ID": "2"}, "outside 0..1"),
])
def test_a_broken_msrun_environment_is_an_error(change, message):
    with pytest.raises(ValueError, match=message):
        msrun_world({**MSRUN_WORKER, **change})


def test_logs_are_listed_in_rank_order(tmp_path):
    for name in ["worker_10.log", "worker_2.log", "scheduler.log", "worker_0.log", "worker_1.log"]:
        (tmp_path / name).write_text("")
    assert [path.name for path in log_files(tmp_path)] == \
        ["worker_0.log", "worker_1.log", "worker_2.log", "worker_10.log", "scheduler.log"]


# A stand-in for msrun: starts two "workers" in sessions of their own (as msrun does with setsid),
# reports one of them failed the way msrun does, then waits forever (as msrun waits on its scheduler).
FAKE_MSRUN = textwrap.dedent("""
    import os, subprocess, sys, time
    workers = [subprocess.Popen(["sleep", "600"], start_new_session=True) for _ in range(2)]
    with open(sys.argv[1], "w") as pids:
        pids.write(" ".join(str(w.pid) for w in workers))
    print("worker output", flush=True)
    if sys.argv[2] == "fail":
        print("[ERROR] ME(1:1,MainProcess): [_api.py:365] Worker process 7 exit with exception. "
              "Error code: -9.", file=sys.stderr, flush=True)
    time.sleep(600)
""")


def start_fake(tmp_path, mode):
    script = tmp_path / "fake_msrun.py"
    script.write_text(FAKE_MSRUN)
    return [sys.executable, str(script), str(tmp_path / "pids"), mode]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def wait_gone(pids, timeout=10.0) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if not any(alive(pid) for pid in pids):
            return True
        time.sleep(0.1)
    return False


def test_a_failed_worker_ends_a_hanging_msrun_and_its_workers_within_the_grace(tmp_path, capfd):
    started = time.monotonic()
    code = run_msrun(start_fake(tmp_path, "fail"), failure_grace_s=2, poll_s=0.1)
    elapsed = time.monotonic() - started
    assert code != 0
    assert elapsed < 10, f"took {elapsed:.1f} s"
    workers = [int(pid) for pid in (tmp_path / "pids").read_text().split()]
    assert wait_gone(workers), "the workers (own sessions) outlived the launcher"
    out, err = capfd.readouterr()
    assert "worker output" in out and "exit with exception" in err and "killing the job" in err


def test_a_signal_to_the_launcher_kills_msrun_and_its_workers(tmp_path):
    """SIGTERM (scancel, srun --kill-on-bad-exit) to the launcher: msrun would die alone and leave its
    workers running in their own sessions; the launcher kills them all and exits 128 + 15."""
    launcher = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(ROOT)!r})
        from segformer.engine.launch import run_msrun
        sys.exit(run_msrun(sys.argv[1:], poll_s=0.1))
    """)
    (tmp_path / "launcher.py").write_text(launcher)
    process = subprocess.Popen([sys.executable, str(tmp_path / "launcher.py"), *start_fake(tmp_path, "hang")],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 30
    while not (tmp_path / "pids").exists() or not (tmp_path / "pids").read_text():
        assert time.time() < deadline and process.poll() is None, process.communicate()
        time.sleep(0.1)
    time.sleep(0.5)   # let the launcher see the workers once
    workers = [int(pid) for pid in (tmp_path / "pids").read_text().split()]
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=20)
    assert process.returncode == 128 + signal.SIGTERM, err
    assert wait_gone(workers), "workers left running after the launcher was terminated"


def worker_pid(launcher_pid: int, rank: int) -> int | None:
    """The msrun worker of the given rank below the launcher (from its environment, as msrun set it)."""
    import psutil

    for proc in psutil.Process(launcher_pid).children(recursive=True):
        try:
            environ = proc.environ()
        except psutil.Error:
            continue
        if environ.get("MS_ROLE") == "MS_WORKER" and environ.get("RANK_ID") == str(rank):
            return proc.pid
    return None


@pytest.mark.slow
def test_killed_worker_fails_the_job_promptly_and_the_rerun_resumes_exactly(tiny_dataset, one_node_two_workers,
                                                                            tmp_path):
    """The shared two-worker run (conftest one_node_two_workers) again, with checkpoints; SIGKILL rank 1 once
    the first one is there. Without the launcher's bound msrun waits for its scheduler's heartbeat timeout
    (measured: 34 s); with it, grace + polling (measured 15.6 s with the default grace of 15 s). The rerun
    resumes and ends with the shared run's weights, bit for bit."""
    assert shutil.which("msrun"), "msrun ships with MindSpore: missing means a broken install"
    grace_s, bound_s = 5, 30
    out_dir, log_dir = tmp_path / "out", tmp_path / "msrun"
    command = train_command(out_dir, tiny_dataset["train"], settings={**DATA_PARALLEL, "checkpoint_interval": 2},
                            extra=["--pretrained", str(one_node_two_workers["start"])],
                            launcher_args=["--devices", "2", "--log_dir", str(log_dir),
                                           "--failure_grace_s", str(grace_s)])
    state = out_dir / "train_state"
    with open(tmp_path / "first.out", "w") as log:
        launcher = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.time() + 300
        while not list(state.glob("state_*.ckpt")):
            assert launcher.poll() is None, (tmp_path / "first.out").read_text()[-4000:]
            assert time.time() < deadline, "no checkpoint within 300 s"
            time.sleep(0.1)
        victim = worker_pid(launcher.pid, rank=1)
        assert victim is not None, "no worker of rank 1 found below the launcher"
        os.kill(victim, signal.SIGKILL)
        killed = time.monotonic()
        try:
            code = launcher.wait(timeout=120)
        except subprocess.TimeoutExpired:
            launcher.kill()
            pytest.fail("the launcher did not end within 120 s of a worker's death")
        ended = time.monotonic() - killed
    first = (tmp_path / "first.out").read_text()
    assert code != 0, first[-3000:]
    assert ended < bound_s, f"the launcher took {ended:.1f} s to fail after the worker died"
    assert not (out_dir / "model.ckpt").exists()
    assert list(state.glob("state_*.ckpt"))

    rerun = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout[-4000:] + rerun.stderr[-3000:]
    assert "resumed at iteration" in rerun.stdout
    assert (out_dir / "model.ckpt").exists()
    # The workers' output reaches the launcher's stdout once per worker (msrun tails it), not twice.
    worker_logs = [path.read_text() for path in log_files(log_dir) if path.name.startswith("worker_")]
    assert len(worker_logs) == 2
    for text in worker_logs:
        lines = [line for line in text.splitlines() if "segformer.engine.train" in line]
        assert lines, text[-2000:]
        for line in lines:
            assert rerun.stdout.count(line) == sum(other.count(line) for other in worker_logs), line

    import mindspore as ms

    resumed = ms.load_checkpoint(str(out_dir / "model.ckpt"))
    reference = ms.load_checkpoint(str(one_node_two_workers["out"] / "model.ckpt"))
    assert resumed.keys() == reference.keys()
    for name in reference:
        np.testing.assert_array_equal(resumed[name].asnumpy(), reference[name].asnumpy(), err_msg=name)


def test_a_worker_killed_by_the_system_is_named_with_the_likely_cause(tmp_path):
    """One device: train.py ended by SIGKILL (what the kernel's out-of-memory killer sends; b4 at 1024x1024
    on a 24 GB machine) says nothing itself. The launcher names the signal and the likely cause, and exits
    128 + 9 as a shell would."""
    shutil.copy(ROOT / "workflow_scripts" / "launch_train.py", tmp_path / "launch_train.py")
    (tmp_path / "train.py").write_text("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n")
    result = subprocess.run([sys.executable, str(tmp_path / "launch_train.py"), "--devices", "1", "--log_dir",
                             str(tmp_path / "msrun"), "--", "--variant", "b0"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 128 + signal.SIGKILL
    assert "train.py was killed by SIGKILL" in result.stderr and "out of memory" in result.stderr, result.stderr
