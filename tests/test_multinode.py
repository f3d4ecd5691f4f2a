"""msrun across two nodes for real: scripts/multinode_msrun.py puts node 1 in a network namespace of
its own (root, iproute2), runs the tiny b0 on two nodes of one worker each, started the way
launch_train.py runs under SLURM (NODE_RANK, MASTER_ADDR), and on one node of two workers, from the
same start, and requires the same weights (relative update difference <= 1e-2, as the data-parallel
test in test_train.py). Measured on the 2-core development machine: 4 min 13 s in all with other
jobs running (one node 146 s, two nodes 100 s; three iterations then, six now, nearly all of it graph compiles),
and the two models were bit-identical.

CI runs as root on such a machine: a machine where the namespace cannot be made FAILS here with the
reason (multi-node is a feature, not an optional extra), it does not skip.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT, TINY_TRAIN

SCRIPT = ROOT / "scripts" / "multinode_msrun.py"


def namespace_problem() -> str | None:
    """Why this machine cannot run the two-node test, or None."""
    if os.geteuid() != 0:
        return "needs root (ip netns add, a veth pair)"
    if shutil.which("ip") is None:
        return "no `ip` command (install iproute2)"
    probe = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"`ip netns` unavailable: {probe.stderr.strip()}"
    return None


@pytest.mark.slow
def test_two_nodes_of_one_worker_equal_one_node_of_two(tiny_dataset, one_node_two_workers, tmp_path):
    problem = namespace_problem()
    if problem:
        pytest.fail(f"cannot run msrun on two nodes of this machine: {problem}")
    from conftest import DATA_PARALLEL
    from importlib.util import module_from_spec, spec_from_file_location

    spec = spec_from_file_location("multinode_msrun", SCRIPT)
    script = module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.SETTINGS == {**TINY_TRAIN, **DATA_PARALLEL}, "the script must train as the shared one-node run did"
    result = subprocess.run([sys.executable, str(SCRIPT), "--work_dir", str(tmp_path / "work"),
                             "--train_list", str(tiny_dataset["train"]),
                             "--start", str(one_node_two_workers["start"]),
                             "--reference_dir", str(one_node_two_workers["out"])],
                            capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    line = next(line for line in result.stdout.splitlines() if line.startswith("RESULT "))
    outcome = json.loads(line.removeprefix("RESULT "))
    assert outcome["relative_update_difference"] <= 1e-2, outcome
    # the namespace and its veth pair are gone
    assert "segformer-mn-" not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
