"""The one training step cell (segformer/engine/step.py): contracts that hold on any device.

- one forward per micro-batch: BatchNorm's running statistics move exactly as one forward moves them;
- gradient scale: with plain SGD at lr 1 the update IS the gradient, so a missing 1/grad_accum, a missing
  division by the loss scale or a wrong mask would show (AdamW's update hardly depends on the scale);
- precision: under mixed precision every normalisation computes in float32, sync BN included;
- an overflowed step leaves the weights alone; the loss scale rule.
The data-parallel contracts (mean over devices, one overflow verdict, per-rank masks) are in
tests/test_step_parallel.py.
"""

import mindspore as ms
import numpy as np
import pytest
from mindspore import nn, ops

from segformer.engine.loss import SegCrossEntropyLoss
from segformer.engine.optim import AdamW, build_param_groups
from segformer.engine.step import FP32_CELLS, DynamicLossScale, TrainStep, to_mixed_precision
from segformer.models import build_model
from segformer.models.stochastic import draw_masks
from segformer.models.sync_bn import AllReduceBatchNorm2d
from workers.step_parallel_worker import batch   # the same images for one process and for two workers

NORMALISATIONS = (nn.LayerNorm, nn.BatchNorm2d, nn.SyncBatchNorm, AllReduceBatchNorm2d)
BN_STATS = ("decode_head.linear_fuse.bn.moving_mean", "decode_head.linear_fuse.bn.moving_variance")


def fresh_net():
    """b0 with the official drop path and dropout on, the same initial weights every call."""
    ms.set_seed(0)
    net = build_model("b0", drop_path_rate=0.1, head_dropout=0.1)
    net.set_train(True)
    return net


def params(net):
    return {p.name: p.asnumpy().copy() for p in net.get_parameters()}   # amp wrappers keep p.name


def reference_gradients(images, labels, masks):
    """Gradients of the big-batch loss computed directly (PyNative value_and_grad), the BN statistics
    after that one forward, and the starting weights."""
    net = fresh_net()
    start = params(net)
    loss_fn = SegCrossEntropyLoss()
    tensors = [ms.Tensor(m) for m in masks]

    def loss_of(image, label):
        return loss_fn(net(image, *tensors), label)

    _, grads = ms.value_and_grad(loss_of, None, net.trainable_params())(ms.Tensor(images), ms.Tensor(labels))
    names = [p.name for p in net.trainable_params()]
    return start, dict(zip(names, (g.asnumpy() for g in grads))), {n: params(net)[n] for n in BN_STATS}


def sgd_step_updates(images, labels, masks, *, grad_accum=1, mixed=False, loss_scale=1.0):
    """Weights moved by one TrainStep with SGD(lr=1): -(the gradient the step applied); BN statistics after."""
    net = fresh_net()
    start = params(net)
    model = to_mixed_precision(net) if mixed else net
    optimizer = nn.SGD(net.trainable_params(), learning_rate=1.0)
    step = TrainStep(model, SegCrossEntropyLoss(), optimizer, grad_accum=grad_accum, check_overflow=mixed)
    scale = ms.Tensor(loss_scale, ms.float32)
    micro = images.shape[0] // grad_accum
    for i in range(grad_accum):
        part = slice(i * micro, (i + 1) * micro)
        _, stepped = step(scale, ms.Tensor(images[part]), ms.Tensor(labels[part]),
                          ms.Tensor(masks[0][:, part]), ms.Tensor(masks[1][part]))
    if grad_accum > 1:
        assert not bool(stepped), "micro-steps before the last must not update"
        stepped = step.apply_accumulated(scale)
    assert bool(stepped)
    after = params(net)
    applied = {p.name: start[p.name] - after[p.name] for p in net.trainable_params()}
    return applied, {n: after[n] for n in BN_STATS}


def assert_gradients_close(applied, expected, rtol):
    """Relative error of the whole gradient vector (fp32 summation order differs between the paths)."""
    diff = np.sqrt(sum(float(np.sum((applied[n] - expected[n]) ** 2)) for n in expected))
    norm = np.sqrt(sum(float(np.sum(expected[n] ** 2)) for n in expected))
    assert norm > 0
    assert diff / norm < rtol, f"relative gradient error {diff / norm:.2e} (allowed {rtol:g})"


@pytest.fixture(scope="module")
def big_batch():
    images, labels = batch(2)
    masks = draw_masks(fresh_net().mask_layout, 2, seed=5, rank=0, iteration=0)
    masks[0][-1] = [0.0, 1.0]   # make sure the test sees a dropped residual branch
    return images, labels, masks, reference_gradients(images, labels, masks)


def test_graph_step_applies_the_gradient_and_moves_bn_statistics_once(big_batch):
    """Graph mode, fp32, grad_accum 1: the update is exactly the loss's gradient (masks honoured), and the
    running statistics equal one forward's (momentum applied once, not twice)."""
    images, labels, masks, (start, expected, stats_after_one_forward) = big_batch
    ms.set_context(mode=ms.GRAPH_MODE)
    try:
        applied, stats = sgd_step_updates(images, labels, masks)
    finally:
        ms.set_context(mode=ms.PYNATIVE_MODE)
    assert_gradients_close(applied, expected, 1e-5)
    for name in BN_STATS:
        assert not np.allclose(stats_after_one_forward[name], start[name]), "the forward did not move BN"
        np.testing.assert_allclose(stats[name], stats_after_one_forward[name], rtol=1e-6, atol=1e-7, err_msg=name)


def test_accumulation_applies_the_mean_gradient_and_one_forward_per_micro_batch(big_batch, pynative_cpu):
    """2 micro-batches of 1 = the batch of 2 (head BN on fixed statistics, the documented difference of
    accumulation), and each micro-batch moved BN once: twice in all, as two single-image forwards."""
    images, labels, masks, _ = big_batch
    net = fresh_net()
    net.decode_head.linear_fuse.bn.use_batch_statistics = False
    # reference with the same fixed-statistics BN
    loss_fn = SegCrossEntropyLoss()
    tensors = [ms.Tensor(m) for m in masks]
    _, grads = ms.value_and_grad(lambda x, y: loss_fn(net(x, *tensors), y), None, net.trainable_params())(
        ms.Tensor(images), ms.Tensor(labels))
    expected = {p.name: g.asnumpy() for p, g in zip(net.trainable_params(), grads)}

    net = fresh_net()
    net.decode_head.linear_fuse.bn.use_batch_statistics = False
    start = params(net)
    step = TrainStep(net, SegCrossEntropyLoss(), nn.SGD(net.trainable_params(), learning_rate=1.0), grad_accum=2)
    one = ms.Tensor(1.0, ms.float32)
    for i in range(2):
        step(one, ms.Tensor(images[i:i + 1]), ms.Tensor(labels[i:i + 1]), ms.Tensor(masks[0][:, i:i + 1]),
             ms.Tensor(masks[1][i:i + 1]))
    assert step.apply_accumulated(one)
    after = params(net)
    assert_gradients_close({n: start[n] - after[n] for n in expected}, expected, 1e-5)
    assert all(not s.asnumpy().any() for s in step.sums), "the sums are cleared after the update"

    # BN in training mode: running statistics after 2 micro-steps = after 2 single-image forwards
    net, twin = fresh_net(), fresh_net()
    step = TrainStep(net, SegCrossEntropyLoss(), nn.SGD(net.trainable_params(), learning_rate=0.0), grad_accum=2)
    for i in range(2):
        micro_masks = (ms.Tensor(masks[0][:, i:i + 1]), ms.Tensor(masks[1][i:i + 1]))
        step(one, ms.Tensor(images[i:i + 1]), ms.Tensor(labels[i:i + 1]), *micro_masks)
        twin(ms.Tensor(images[i:i + 1]), *micro_masks)
    for name in BN_STATS:
        np.testing.assert_allclose(params(net)[name], params(twin)[name], rtol=1e-6, atol=1e-7, err_msg=name)


def test_mixed_precision_divides_by_the_loss_scale(big_batch, pynative_cpu):
    """Loss scale 1024 in float16: the applied gradient is the fp32 gradient (to float16 accuracy), not
    1024 times it; and the running statistics moved once."""
    images, labels, masks, (_, expected, stats_after_one_forward) = big_batch
    applied, stats = sgd_step_updates(images, labels, masks, mixed=True, loss_scale=1024.0)
    assert_gradients_close(applied, expected, 2e-2)
    for name in BN_STATS:
        np.testing.assert_allclose(stats[name], stats_after_one_forward[name], rtol=1e-2, atol=1e-3, err_msg=name)


def test_every_normalisation_computes_in_float32_under_mixed_precision():
    """amp O2's own black list matches BatchNorm1d/2d/3d and LayerNorm by isinstance: nn.SyncBatchNorm and
    AllReduceBatchNorm2d would run in float16. to_mixed_precision keeps all of them in float32."""
    from mindspore.nn.utils import no_init_parameters

    def normalisations(net):
        return [(name, cell) for name, cell in net.cells_and_names() if isinstance(cell, NORMALISATIONS)]

    with no_init_parameters():
        plain, synced, ascend_sync = build_model("b0"), build_model("b0", sync_bn=True), build_model("b0")
        ascend_sync.decode_head.linear_fuse.bn = nn.SyncBatchNorm(256)   # what Ascend with 8 devices builds
        old_way = build_model("b0", sync_bn=True)
    kinds = set()
    for net in (plain, synced, ascend_sync):
        to_mixed_precision(net)
        found = normalisations(net)
        assert len(found) == 31   # b0: 16 block norms, 4 patch and 4 stage norms, 6 reduction norms, 1 BN
        for name, cell in found:
            kinds.add(type(cell))
            flags = cell.get_flags()
            assert flags.get("fp32") and not flags.get("fp16"), f"{name} ({type(cell).__name__}) is not float32"
        dense = [cell for _, cell in net.cells_and_names() if isinstance(cell, nn.Dense)]
        assert dense and all(cell.get_flags().get("fp16") for cell in dense), "the rest computes in float16"
    assert kinds == set(NORMALISATIONS)
    assert set(FP32_CELLS) >= set(ms.amp.get_black_list())
    # the test can tell: amp O2 alone leaves the synchronised BatchNorm in float16
    ms.amp.auto_mixed_precision(old_way, "O2")
    assert old_way.decode_head.linear_fuse.bn.get_flags().get("fp16")


class _SquaredError(nn.Cell):
    def construct(self, output, target):
        return ((ops.cast(output, ms.float32) - target) ** 2).mean()


def test_overflowed_step_leaves_weights_alone_then_a_small_scale_steps(pynative_cpu):
    dense = to_mixed_precision(nn.Dense(4, 3))   # float16 compute, float32 weights
    optimizer = AdamW(build_param_groups(dense, 1e-2, 0.0), 1e-2)
    step = TrainStep(dense, _SquaredError(), optimizer, grad_accum=2, check_overflow=True)
    image = ms.Tensor(np.ones((2, 4), np.float32))
    target = ms.Tensor(np.full((2, 3), 100.0, np.float32))
    before = [p.asnumpy().copy() for p in optimizer.parameters]

    huge = ms.Tensor(1e38, ms.float32)
    for _ in range(2):
        loss, _ = step(huge, image, target)
        assert np.isfinite(loss.asnumpy()), "the reported loss is the unscaled one"
    assert not step.apply_accumulated(huge)
    for old, param in zip(before, optimizer.parameters):
        np.testing.assert_array_equal(param.asnumpy(), old, err_msg=f"{param.name} changed by a skipped step")
    assert all(not s.asnumpy().any() for s in step.sums), "the skipped step's gradients were not cleared"

    small = ms.Tensor(8.0, ms.float32)
    for _ in range(2):
        step(small, image, target)
    assert step.apply_accumulated(small)
    assert any(not np.array_equal(param.asnumpy(), old) for old, param in zip(before, optimizer.parameters))


def test_dynamic_loss_scale_rule():
    scaler = DynamicLossScale.from_config(None)
    assert (scaler.scale, scaler.factor, scaler.window) == (65536.0, 2.0, 1000)
    scaler = DynamicLossScale.from_config({"init": 4, "factor": 2, "window": 3})
    for finite, expected in [(False, 2), (False, 1), (False, 1), (True, 1), (True, 1), (True, 2), (False, 1)]:
        scaler.update(finite)
        assert scaler.scale == expected
    with pytest.raises(ValueError, match="grow"):
        DynamicLossScale.from_config({"init": 4, "grow": 2})
