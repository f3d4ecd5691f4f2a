"""How a training job is started: one process, or MindSpore's msrun for data parallel.

msrun starts `local_worker_num` workers on this node and joins them with the others of the job
(`worker_num` in all) through a scheduler at master_addr:master_port. On a SLURM allocation every
node runs one launcher; the node rank and the master address come from SLURM's environment.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import subprocess
import sys


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
