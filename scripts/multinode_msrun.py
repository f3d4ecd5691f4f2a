#!/usr/bin/env python3
"""msrun across two "nodes" on one machine: node 1 in its own network namespace.

    sudo .venv/bin/python scripts/multinode_msrun.py [--work_dir DIR] [--train_list LIST] [--keep]

Runs the tiny b0 training three ways from one random start checkpoint and compares them:
  A. one node, two workers:   launch_train.py --devices 2 --nodes 1
  B. two nodes, one worker each: launch_train.py --devices 1 --nodes 2, node rank 0 on the host and
     node rank 1 inside the namespace, started as a SLURM job's `srun` would start them (NODE_RANK and
     MASTER_ADDR in the environment), both on the same shared folder (results, msrun logs).
msrun decides "this node hosts the scheduler" by whether --master_addr is one of the node's own
addresses (mindspore/parallel/cluster/process_entity/_api.py: `_is_local_ip(master_addr)`); on one
machine both launchers would start a scheduler. The namespace gives node 1 other addresses:

    host  10.77.0.1/24  <-- veth pair -->  10.77.0.2/24  namespace segformer-mn-<pid> (node 1)

A and B must end with the same weights: the relative difference of their updates from the start,
||dA - dB|| / ||dA||, at most 1e-2 (the tolerance of the data-parallel test in tests/test_train.py).
Prints timings and one final line `RESULT {json}`; exits 0 only when both runs succeeded and agree.

Needs root and iproute2's `ip`; the namespace, the veth pair and every process started here are
removed on exit, on an error and on SIGTERM/SIGINT/SIGHUP; leftovers of a run killed with SIGKILL
(namespace segformer-mn-<pid> of a dead pid) are removed by the next run.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAUNCHER = ROOT / "workflow_scripts" / "launch_train.py"
NS_PREFIX = "segformer-mn-"
TOLERANCE = 1e-2
# The tiny settings of the tests (tests/conftest.py TINY_TRAIN) with dropout and drop path off, as in
# the data-parallel test: 6 iterations of 1 image per worker.
SETTINGS = {"iterations": 6, "batch_size": 1, "crop_size": [64, 64], "base_scale": [128, 64], "log_interval": 2,
            "checkpoint_interval": 0, "num_workers": 1, "schedule": {"warmup_iters": 2},
            "model": {"drop_path_rate": 0.0, "head_dropout": 0.0}}


class Failure(Exception):
    pass


def sh(*command: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise Failure(f"{' '.join(command)} failed (exit {result.returncode}): {result.stderr.strip()}")
    return result


class Namespace:
    """A network namespace with a veth pair to the host: host_addr outside, node_addr inside."""

    def __init__(self, subnet: str):
        self.name = f"{NS_PREFIX}{os.getpid()}"
        self.host_if, self.node_if = f"smn{os.getpid()}a"[-15:], f"smn{os.getpid()}b"[-15:]
        self.host_addr, self.node_addr = f"{subnet}.1", f"{subnet}.2"
        self.created = False

    @staticmethod
    def remove_stale() -> None:
        """Namespaces of earlier runs whose process is gone (killed with SIGKILL: no cleanup ran)."""
        for line in sh("ip", "netns", "list").stdout.splitlines():
            name = line.split()[0] if line.split() else ""
            match = re.fullmatch(re.escape(NS_PREFIX) + r"(\d+)", name)
            if match and not Path(f"/proc/{match.group(1)}").exists():
                pid = match.group(1)
                sh("ip", "link", "del", f"smn{pid}a"[-15:], check=False)
                sh("ip", "netns", "del", name, check=False)
                print(f"removed the namespace of a dead earlier run: {name}", flush=True)

    def create(self) -> None:
        taken = sh("ip", "-o", "-4", "addr", "show").stdout
        if re.search(rf"inet {re.escape(self.host_addr)}/", taken):
            raise Failure(f"{self.host_addr} is already assigned on this machine (another run?): pass --subnet")
        self.created = True
        sh("ip", "netns", "add", self.name)
        sh("ip", "link", "add", self.host_if, "type", "veth", "peer", "name", self.node_if)
        sh("ip", "link", "set", self.node_if, "netns", self.name)
        sh("ip", "addr", "add", f"{self.host_addr}/24", "dev", self.host_if)
        sh("ip", "link", "set", self.host_if, "up")
        sh("ip", "netns", "exec", self.name, "ip", "addr", "add", f"{self.node_addr}/24", "dev", self.node_if)
        sh("ip", "netns", "exec", self.name, "ip", "link", "set", self.node_if, "up")
        sh("ip", "netns", "exec", self.name, "ip", "link", "set", "lo", "up")

    def remove(self) -> None:
        if self.created:
            sh("ip", "link", "del", self.host_if, check=False)   # deletes both ends of the pair
            sh("ip", "netns", "del", self.name, check=False)
            self.created = False


class Launchers:
    """The launchers started here, each in its own process group; stopped with SIGTERM (the launcher
    then kills its msrun and workers), SIGKILL after a grace."""

    def __init__(self):
        self.running: list[subprocess.Popen] = []

    def start(self, command: list[str], log: Path, env: dict) -> subprocess.Popen:
        with open(log, "w") as out:
            process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
                                       start_new_session=True)
        self.running.append(process)
        return process

    def stop_all(self) -> None:
        for process in self.running:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        deadline = time.time() + 20
        for process in self.running:
            try:
                process.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def wait_all(processes: dict[str, subprocess.Popen], timeout_s: float) -> dict[str, int]:
    """Exit statuses; once one fails the others get 60 s (the launcher's own bound applies to local
    workers only; a peer node's death reaches them through msrun's heartbeat timeout)."""
    deadline = time.time() + timeout_s
    codes: dict[str, int] = {}
    while len(codes) < len(processes):
        for name, process in processes.items():
            if name not in codes and process.poll() is not None:
                codes[name] = process.returncode
                if process.returncode != 0:
                    deadline = min(deadline, time.time() + 60)
        if time.time() > deadline:
            raise Failure(f"timed out; finished so far: {codes}")
        time.sleep(0.2)
    return codes


def update_difference(start: Path, a: Path, b: Path) -> tuple[float, float]:
    """(||dA - dB|| / ||dA|| over the trained parameters, max |A - B| over all of them)."""
    import mindspore as ms
    import numpy as np

    w0, wa, wb = ({name: p.asnumpy() for name, p in ms.load_checkpoint(str(path)).items()} for path in (start, a, b))
    if wa.keys() != wb.keys():
        raise Failure(f"parameter names differ: {sorted(wa.keys() ^ wb.keys())[:5]}")
    trained = [name for name in w0 if "moving_" not in name]
    diff = sum(float(np.sum((wa[n] - wb[n]) ** 2)) for n in trained)
    norm = sum(float(np.sum((wa[n] - w0[n]) ** 2)) for n in trained)
    if norm == 0:
        raise Failure("the run did not move the weights")
    return (diff / norm) ** 0.5, max(float(np.max(np.abs(wa[n] - wb[n]))) for n in wa)


def tiny_train_list(work_dir: Path) -> Path:
    from segformer.convert.labels import convert_dataset, split_pairs, write_split_lists
    from segformer.demo import generate_demo

    root, data = work_dir / "cityscapes", work_dir / "data"
    generate_demo(root, seed=0, width=128, height=64, train_images=8, val_images=4)
    report = convert_dataset(root, out_dir=data, nproc=1, progress=False)
    if report.errors:
        raise Failure(f"demo labels: {report.errors}")
    pairs, errors = split_pairs(root, data)
    if errors:
        raise Failure(f"demo split: {errors}")
    return write_split_lists(data, pairs)["train"]


def start_checkpoint(path: Path) -> None:
    """A random b0 to start both runs from (the update comparison needs the start)."""
    import mindspore as ms

    from segformer.models import build_model

    ms.set_seed(0)
    ms.save_checkpoint(build_model("b0", drop_path_rate=0.0, head_dropout=0.0), str(path))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work_dir", type=Path, default=None, help="default: a new temporary folder")
    parser.add_argument("--train_list", type=Path, default=None, help="default: a tiny demo made in work_dir")
    parser.add_argument("--subnet", default="10.77.0", help="the /24 of the veth pair (default %(default)s)")
    parser.add_argument("--timeout_s", type=float, default=600, help="per run")
    parser.add_argument("--keep", action="store_true", help="keep work_dir")
    parser.add_argument("--start", type=Path, default=None,
                        help="checkpoint both runs start from (default: a random b0 made here)")
    parser.add_argument("--reference_dir", type=Path, default=None,
                        help="an existing run A (one node, two workers; its model.ckpt) from --start with the same "
                             "settings: compare with it instead of running A here (the test suite shares one)")
    args = parser.parse_args(argv)
    if args.reference_dir is not None and args.start is None:
        parser.error("--reference_dir needs the --start it was trained from")
    if os.geteuid() != 0:
        raise SystemExit("multinode_msrun: needs root (ip netns add, veth pair)")
    if shutil.which("ip") is None:
        raise SystemExit("multinode_msrun: no `ip` (iproute2) on PATH")
    if shutil.which("msrun") is None:
        raise SystemExit("multinode_msrun: no `msrun` on PATH (activate the environment with MindSpore)")

    def on_signal(signum, frame):
        raise SystemExit(128 + signum)   # runs the finally blocks below: processes, namespace, folder

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, on_signal)

    work_dir = args.work_dir or Path(tempfile.mkdtemp(prefix="multinode_msrun-"))
    work_dir.mkdir(parents=True, exist_ok=True)
    launchers, namespace = Launchers(), Namespace(args.subnet)
    timings: dict[str, float] = {}
    try:
        began = time.monotonic()
        Namespace.remove_stale()
        namespace.create()
        print(f"namespace {namespace.name}: host {namespace.host_if} {namespace.host_addr}, "
              f"node 1 {namespace.node_if} {namespace.node_addr}", flush=True)
        train_list = args.train_list or tiny_train_list(work_dir)
        start = args.start
        if start is None:
            start = work_dir / "start.ckpt"
            start_checkpoint(start)
        timings["setup_s"] = time.monotonic() - began
        train_args = ["--", "--variant", "b0", "--settings", json.dumps(SETTINGS), "--train_list", str(train_list),
                      "--pretrained", str(start)]
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        for name in ("RANK_SIZE", "RANK_ID", "NODE_RANK", "MASTER_ADDR", "SLURM_NODEID", "SLURM_JOB_NODELIST"):
            env.pop(name, None)

        # A. one node, two workers (or the given reference run)
        out_a = args.reference_dir or work_dir / "one_node"
        if args.reference_dir is None:
            began = time.monotonic()
            run_a = launchers.start([sys.executable, str(LAUNCHER), "--devices", "2", "--nodes", "1",
                                     "--log_dir", str(out_a / "msrun"), *train_args, "--out_dir", str(out_a)],
                                    work_dir / "one_node.log", env)
            codes = wait_all({"one node": run_a}, args.timeout_s)
            timings["one_node_two_workers_s"] = time.monotonic() - began
            if codes["one node"] != 0:
                raise Failure(f"one node, two workers: exit {codes['one node']}; see {work_dir / 'one_node.log'}")

        # B. two nodes of one worker: rank 0 here, rank 1 in the namespace; master = the host's veth address
        out_b = work_dir / "two_nodes"
        launch_b = [sys.executable, str(LAUNCHER), "--devices", "1", "--nodes", "2", "--log_dir", str(out_b / "msrun"),
                    *train_args, "--out_dir", str(out_b)]
        began = time.monotonic()
        node0 = launchers.start(launch_b, work_dir / "node0.log",
                                {**env, "NODE_RANK": "0", "MASTER_ADDR": namespace.host_addr})
        node1 = launchers.start(["ip", "netns", "exec", namespace.name, *launch_b], work_dir / "node1.log",
                                {**env, "NODE_RANK": "1", "MASTER_ADDR": namespace.host_addr})
        codes = wait_all({"node 0": node0, "node 1": node1}, args.timeout_s)
        timings["two_nodes_one_worker_each_s"] = time.monotonic() - began
        if any(codes.values()):
            raise Failure(f"two nodes: exit statuses {codes}; see {work_dir}/node0.log, node1.log")

        logs = {name: (work_dir / f"{name}.log").read_text(errors="replace") for name in ("node0", "node1")}
        schedulers = {name: "Start scheduler process" in text for name, text in logs.items()}
        if schedulers != {"node0": True, "node1": False}:
            raise Failure(f"expected a scheduler on node 0 only, got {schedulers}")
        for name, rank in (("node0", 0), ("node1", 1)):
            if f"rank id:{rank}" not in logs[name]:
                raise Failure(f"{name}: no worker of rank {rank} in its log")
        if "global batch 2 = 2 devices x 1 per device" not in logs["node0"]:
            raise Failure("node 0: the training did not see 2 devices")
        relative, max_abs = update_difference(start, out_a / "model.ckpt", out_b / "model.ckpt")
        result = {"relative_update_difference": relative, "max_abs_weight_difference": max_abs,
                  "tolerance": TOLERANCE, **{key: round(value, 1) for key, value in timings.items()},
                  "work_dir": str(work_dir)}
        print(f"RESULT {json.dumps(result)}", flush=True)
        if relative > TOLERANCE:
            raise Failure(f"two nodes and one node differ: relative update difference {relative:.2e} > {TOLERANCE}")
        return 0
    except Failure as failure:
        print(f"multinode_msrun: FAILED: {failure}", file=sys.stderr, flush=True)
        for log in sorted(work_dir.glob("*.log")):
            print(f"----- {log} (last 40 lines) -----", file=sys.stderr)
            print("\n".join(log.read_text(errors="replace").splitlines()[-40:]), file=sys.stderr, flush=True)
        return 1
    finally:
        launchers.stop_all()
        namespace.remove()
        if not args.keep and args.work_dir is None:
            shutil.rmtree(work_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
