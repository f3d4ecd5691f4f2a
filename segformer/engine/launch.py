"""How a training job is started: one process, or MindSpore's msrun for data parallel.

msrun starts `local_worker_num` workers on this node and joins them with the others of the job
(`worker_num` in all) through a scheduler at master_addr:master_port. On a SLURM allocation every
node runs one launcher; the node rank and the master address come from SLURM's environment.

What msrun 2.10 does and does not do (mindspore/parallel/cluster/process_entity/_api.py):
- with --join=True it starts `tail -f` on every worker log, so the workers' output already reaches
  the launcher's standard output: nothing needs copying afterwards;
- it polls its local workers every second; when one exits non-zero it SIGKILLs the others (each
  worker runs in its own session, `setsid`) and then waits, without a time limit, for its
  scheduler, which gives up only when its heartbeat timeout declares the dead node lost (about 30 s
  here); a worker on another node that dies is noticed only through that timeout;
- SIGTERM kills msrun alone and leaves its workers running (their own sessions); its SIGINT handler
  kills them but exits 0.
`run_msrun` supervises msrun accordingly: a failed worker ends the whole job within a bounded time,
and a signal to the launcher takes every process of the job down with it.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path


def master_port(job_key: str, low: int = 20000, span: int = 20000) -> int:
    """A port derived from the job (its output folder), so that two trainings at once differ."""
    return low + int(hashlib.sha256(job_key.encode()).hexdigest(), 16) % span


def slurm_master_addr(environ=os.environ) -> str:
    """The first host of the SLURM allocation (MASTER_ADDR wins if set)."""
    if environ.get("MASTER_ADDR"):
        return environ["MASTER_ADDR"]
    nodelist = environ.get("SLURM_JOB_NODELIST") or environ.get("SLURM_NODELIST")
    if not nodelist:
        raise RuntimeError("a multi-node training needs MASTER_ADDR or a SLURM allocation (SLURM_JOB_NODELIST)")
    hosts = subprocess.run(["scontrol", "show", "hostnames", nodelist], check=True, capture_output=True,
                           text=True).stdout.split()
    return hosts[0]


def train_command(script: str, script_args: list[str], *, devices: int, nodes: int, log_dir: str,
                  job_key: str, node_rank: int | None = None, master_addr: str | None = None) -> list[str]:
    """The command line that runs `script` on `devices` x `nodes` workers (plain python for one)."""
    if devices < 1 or nodes < 1:
        raise ValueError(f"devices and nodes must be >= 1, got devices={devices}, nodes={nodes}")
    if devices * nodes == 1:
        return [sys.executable, script, *script_args]
    command = ["msrun", f"--worker_num={devices * nodes}", f"--local_worker_num={devices}",
               f"--master_port={master_port(job_key)}", f"--log_dir={log_dir}", "--join=True",
               "--cluster_time_out=600"]
    if nodes > 1:
        if node_rank is None or master_addr is None:
            raise ValueError("a multi-node launch needs node_rank and master_addr")
        command += [f"--node_rank={node_rank}", f"--master_addr={master_addr}"]
    return [*command, script, *script_args]


def describe(command: list[str]) -> str:
    return " ".join(shlex.quote(part) for part in command)


# What msrun logs (to stderr) when one of its local workers exits non-zero (_api.py, join_processes).
WORKER_FAILED = re.compile(r"Worker process \d+ exit with exception")
# After a worker failed, how long msrun may still wait for its scheduler before the launcher ends the job.
FAILURE_GRACE_S = 15.0


def log_files(log_dir: str | Path) -> list[Path]:
    """msrun's logs in a folder: worker_N.log in rank order (worker_10 after worker_2), then the rest."""
    def key(path: Path):
        match = re.fullmatch(r"worker_(\d+)\.log", path.name)
        return (0, int(match.group(1)), "") if match else (1, 0, path.name)
    return sorted(Path(log_dir).glob("*.log"), key=key)


class _ProcessTree:
    """The processes of one msrun job: msrun's process group (msrun, its scheduler, its `tail`s) and
    the session of every worker (each worker and its data-loader children), remembered while they
    run so that they can be killed even after msrun itself has gone. A group is killed only while a
    process recorded in it is still alive (same pid and start time), never a reused number."""

    def __init__(self, root: subprocess.Popen):
        self.root = root
        self.members: dict[int, set[tuple[int, float]]] = {}   # pgid -> {(pid, create_time)}
        self.lock = threading.Lock()

    def scan(self) -> None:
        try:
            import psutil
        except ImportError:  # psutil comes with MindSpore; without it only msrun itself is known
            return
        try:
            root = psutil.Process(self.root.pid)
            processes = [root, *root.children(recursive=True)]
        except psutil.Error:
            return
        for proc in processes:
            try:
                group, started = os.getpgid(proc.pid), proc.create_time()
            except (OSError, psutil.Error):
                continue
            if group != os.getpgrp():
                with self.lock:
                    self.members.setdefault(group, set()).add((proc.pid, started))

    def kill(self) -> None:
        import psutil

        self.scan()
        with self.lock:
            groups = {group: set(members) for group, members in self.members.items()}
        for group, members in sorted(groups.items()):
            alive = False
            for pid, started in members:
                try:
                    alive = alive or psutil.Process(pid).create_time() == started
                except psutil.Error:
                    pass
            if alive:
                try:
                    os.killpg(group, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass


def explain_exit(returncode: int, what: str = "train.py") -> tuple[int, str | None]:
    """A child's exit status as a shell reports it (128 + N for signal N), and a line saying why when a
    signal ended it: SIGKILL with no message of its own is most often the kernel's out-of-memory killer."""
    if returncode >= 0:
        return returncode, None
    number = -returncode
    name = signal.Signals(number).name if number in signal.valid_signals() else f"signal {number}"
    line = f"launch: {what} was killed by {name}"
    if number == signal.SIGKILL:
        line += (" (with no error of its own: most often the system ran out of memory; `dmesg` names the "
                 "out-of-memory kill. A smaller crop_size or batch_size, or a machine with more memory, is the way on)")
    return 128 + number, line


def run_msrun(command: list[str], *, failure_grace_s: float = FAILURE_GRACE_S, poll_s: float = 0.5,
              env: dict | None = None, stderr=None) -> int:
    """Run an msrun command line, bounded: returns its exit status, or non-zero once a worker failed.

    msrun's standard output (its own lines and the tailed worker logs) passes straight through;
    its standard error is passed through line by line and watched for msrun's report of a failed
    worker, after which msrun gets `failure_grace_s` to finish by itself before every process of
    the job is killed. SIGTERM, SIGINT and SIGHUP to the launcher kill every process of the job
    (msrun would leave its workers running) and return 128 + the signal number.
    """
    stderr = stderr or sys.stderr
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, errors="replace", bufsize=1,
                               start_new_session=True, env=env)
    tree = _ProcessTree(process)
    failed_at = []

    def forward() -> None:
        for line in process.stderr:
            stderr.write(line)
            stderr.flush()
            if not failed_at and WORKER_FAILED.search(line):
                failed_at.append(time.monotonic())

    reader = threading.Thread(target=forward, daemon=True)
    reader.start()
    received = []

    def on_signal(signum, frame):
        received.append(signum)

    previous = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            previous[signum] = signal.signal(signum, on_signal)
    try:
        while process.poll() is None:
            tree.scan()
            if received:
                print(f"launch: got signal {received[0]}: killing msrun and its workers", file=stderr, flush=True)
                tree.kill()
                process.wait()
                return 128 + received[0]
            if failed_at and time.monotonic() - failed_at[0] > failure_grace_s:
                print(f"launch: a worker failed and msrun was still waiting for its scheduler "
                      f"{failure_grace_s:.0f} s later: killing the job", file=stderr, flush=True)
                tree.kill()
                process.wait()
                return 1
            time.sleep(poll_s)
        return_code = process.returncode
        if return_code != 0:
            tree.kill()   # whatever an abnormal end left behind (msrun killed by a signal: its workers)
        reader.join(timeout=5)
        if failed_at and return_code == 0:
            return_code = 1
        return return_code
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
