"""One msrun worker of tests/test_step_parallel.py: data-parallel contracts of the step cell.

Each of the 2 workers takes one image of a batch of 2 and its own training masks, then
1. one fp32 step with SGD(lr=1) (so the update is the gradient that reached the optimizer), sync BN on;
2. one mixed-precision step in which worker 1 alone reports an overflow (as Ascend's overflow register
   would, whatever the values): every worker must skip it.
Writes OUT/rank{r}.npz: the masks, the parameters after 1., the `stepped` flag and parameters of 2.
"""

import sys
from pathlib import Path

import mindspore as ms
import numpy as np
from mindspore import nn, ops
from mindspore.communication import get_group_size, get_rank, init

from segformer.engine.loss import SegCrossEntropyLoss
from segformer.engine.step import ApplyGradients, TrainStep, to_mixed_precision
from segformer.models import build_model
from segformer.models.stochastic import draw_masks

MASK_SEED = 5


def batch(size=2, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((size, 3, 64, 64)).astype(np.float32)
    labels = rng.integers(0, 19, (size, 64, 64)).astype(np.int32)
    labels[:, :8] = 255    # the same number of labelled pixels per image: per-image means average exactly
    return images, labels


class OverflowOnThisDevice(ApplyGradients):
    """Reports a local overflow whatever the gradients hold (after them, as a status read would come)."""

    def local_overflow(self, grads):
        return ops.depend(ops.ones((), ms.float32), grads)


def fresh_net():
    ms.set_seed(0)
    net = build_model("b0", drop_path_rate=0.1, head_dropout=0.1, sync_bn=True)
    net.set_train(True)
    return net


def params(net):
    return {p.name: p.asnumpy().copy() for p in net.get_parameters()}


def main(out_dir: str) -> None:
    ms.set_device("CPU")
    ms.set_context(mode=ms.GRAPH_MODE)
    init()
    ms.set_auto_parallel_context(parallel_mode=ms.ParallelMode.DATA_PARALLEL, gradients_mean=True)
    rank, world = get_rank(), get_group_size()
    images, labels = batch(world)
    mine = slice(rank, rank + 1)
    one = ms.Tensor(1.0, ms.float32)

    net = fresh_net()
    masks = draw_masks(net.mask_layout, 1, seed=MASK_SEED, rank=rank, iteration=0)
    step = TrainStep(net, SegCrossEntropyLoss(), nn.SGD(net.trainable_params(), learning_rate=1.0), world_size=world)
    step(one, ms.Tensor(images[mine]), ms.Tensor(labels[mine]), *(ms.Tensor(m) for m in masks))
    fp32_after = params(net)

    net = fresh_net()
    start = params(net)
    optimizer = nn.SGD(net.trainable_params(), learning_rate=1.0)
    step = TrainStep(to_mixed_precision(net), SegCrossEntropyLoss(), optimizer, world_size=world, check_overflow=True)
    if rank == 1:
        step.apply_gradients = OverflowOnThisDevice(optimizer, world, 1, True)
    _, stepped = step(ms.Tensor(8.0, ms.float32), ms.Tensor(images[mine]), ms.Tensor(labels[mine]),
                      *(ms.Tensor(m) for m in masks))
    mixed_moved = [name for name, value in params(net).items()
                   if "moving_" not in name and not np.array_equal(value, start[name])]

    np.savez(Path(out_dir) / f"rank{rank}.npz", path_keep=masks[0], channel_keep=masks[1],
             mixed_stepped=bool(stepped), mixed_moved=np.array(mixed_moved, dtype=object),
             **{f"fp32/{name}": value for name, value in fp32_after.items()})


if __name__ == "__main__":
    main(sys.argv[1])
