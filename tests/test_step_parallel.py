"""Data-parallel contracts of the step cell, with two real msrun workers on CPU (one launch, ~1 min):

- the update is the MEAN of the devices' gradients (SGD at lr 1: a sum would double it), equal to one
  process's gradient on the concatenated batch with the same masks, BN running statistics included
  (synchronised BN over 2 x 1 image = BN over 2 images);
- one overflow verdict: a worker that alone reports an overflow makes every worker skip the step;
- per-rank masks: the workers' training masks differ, and drawing again from (seed, rank, iteration)
  reproduces them.
"""

import os
import shutil
import socket
import subprocess

import numpy as np
import pytest

from conftest import ROOT
from test_step import BN_STATS, assert_gradients_close, reference_gradients
from workers.step_parallel_worker import MASK_SEED, batch, fresh_net

WORKER = ROOT / "tests" / "workers" / "step_parallel_worker.py"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory):
    out = tmp_path_factory.mktemp("step_parallel")
    msrun = shutil.which("msrun")
    assert msrun, "msrun ships with MindSpore: missing means a broken install"
    command = [msrun, "--worker_num=2", "--local_worker_num=2", f"--master_port={free_port()}",
               f"--log_dir={out / 'logs'}", "--join=True", "--cluster_time_out=300", str(WORKER), str(out)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'tests'}"})
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return [dict(np.load(out / f"rank{rank}.npz", allow_pickle=True)) for rank in range(2)]


def test_update_is_the_mean_gradient_over_devices_with_synchronised_bn(two_workers, pynative_cpu):
    images, labels = batch(2)
    masks = (np.concatenate([w["path_keep"] for w in two_workers], axis=1),
             np.concatenate([w["channel_keep"] for w in two_workers], axis=0))
    start, expected, stats = reference_gradients(images, labels, masks)
    for rank, worker in enumerate(two_workers):
        after = {name[len("fp32/"):]: value for name, value in worker.items() if name.startswith("fp32/")}
        assert_gradients_close({n: start[n] - after[n] for n in expected}, expected, 1e-4)
        for name in BN_STATS:
            np.testing.assert_allclose(after[name], stats[name], rtol=1e-5, atol=1e-6, err_msg=f"rank {rank} {name}")
    for name in start:
        np.testing.assert_array_equal(two_workers[0][f"fp32/{name}"], two_workers[1][f"fp32/{name}"], err_msg=name)


def test_an_overflow_on_one_device_skips_the_step_on_every_device(two_workers):
    for rank, worker in enumerate(two_workers):
        assert not worker["mixed_stepped"], f"rank {rank} stepped although rank 1 overflowed"
        assert not len(worker["mixed_moved"]), f"rank {rank} changed {list(worker['mixed_moved'])[:3]}"


def test_each_rank_draws_its_own_masks_reproducibly(two_workers):
    from segformer.models.stochastic import draw_masks

    layout = fresh_net().mask_layout
    assert not np.array_equal(two_workers[0]["channel_keep"], two_workers[1]["channel_keep"])
    for rank, worker in enumerate(two_workers):
        path_keep, channel_keep = draw_masks(layout, 1, seed=MASK_SEED, rank=rank, iteration=0)
        np.testing.assert_array_equal(worker["path_keep"], path_keep)
        np.testing.assert_array_equal(worker["channel_keep"], channel_keep)
