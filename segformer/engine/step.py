"""One training step cell for every precision and any gradient accumulation, and the loss scaler.

A micro-step computes the loss and its gradients in one call (`value_and_grad`): one forward per
micro-batch, so BatchNorm's running statistics move once per micro-batch, as in PyTorch. With
`grad_accum` 1 the same graph then applies the update; otherwise the gradients are summed and
`apply_accumulated` steps on their mean. fp32 and mixed precision share the code: the loss is multiplied
by a loss scale (1 in fp32) and the gradients divided by it (and by grad_accum) before the update.

Mixed precision skips a step whose gradients overflowed. The verdict must be one for all devices: on
Ascend (910A, or 910B in saturation mode) `mindspore.amp.all_finite` reads and clears the device's own
overflow register instead of looking at the values (mindspore/amp.py `_all_finite`), so each device's
flag is summed over the group, as MindSpore's TrainOneStepWithLossScaleCell does
(mindspore/nn/wrap/loss_scale.py, `_get_distributed_overflow_status_on_infnan_enable_allfinite`).
"""

from __future__ import annotations

from dataclasses import dataclass

import mindspore as ms
from mindspore import nn, ops

from segformer.devices import release_freed_heap
from segformer.models.sync_bn import AllReduceBatchNorm2d, world_group

# Cells that compute in float32 under mixed precision: amp's own black list (BatchNorm1d/2d/3d,
# LayerNorm, matched by isinstance) misses nn.SyncBatchNorm and our AllReduceBatchNorm2d, which derive
# from neither (mindspore/train/amp.py AMP_BLACK_LIST, _auto_black_list).
FP32_CELLS = [*ms.amp.get_black_list(), nn.SyncBatchNorm, AllReduceBatchNorm2d]


def to_mixed_precision(net: nn.Cell) -> nn.Cell:
    """amp O2 with the normalisations of FP32_CELLS kept in float32; converts `net` in place, returns it
    wrapped so that its outputs are float32 (mindspore.amp.custom_mixed_precision, the O2 code path)."""
    return ms.amp.custom_mixed_precision(net, black_list=FP32_CELLS, dtype=ms.float16)


class NetWithLoss(nn.Cell):
    """(loss * loss_scale, loss) of net(image, *net_inputs): a micro-step differentiates the first and
    reports the second (the unscaled loss stays finite when the scaled one overflows)."""

    def __init__(self, net: nn.Cell, loss_fn: nn.Cell):
        super().__init__(auto_prefix=False)
        self.net = net
        self.loss_fn = loss_fn

    def construct(self, loss_scale, image, label, *net_inputs):
        loss = ops.cast(self.loss_fn(self.net(image, *net_inputs), label), ms.float32)
        return loss * loss_scale, loss


def gradient_reducer(weights, world_size: int):
    """Averages gradients over the data-parallel devices (the identity on one device)."""
    return nn.DistributedGradReducer(weights, mean=True, degree=world_size) if world_size > 1 else ops.identity


class ApplyGradients(nn.Cell):
    """Gradient sums -> their mean over micro-batches and devices, unscaled -> optimizer step, unless
    (check_overflow) some device saw an overflow. Returns True when it stepped."""

    def __init__(self, optimizer: nn.Cell, world_size: int, grad_accum: int, check_overflow: bool):
        super().__init__(auto_prefix=False)
        self.optimizer = optimizer
        self.reduce = gradient_reducer(optimizer.parameters, world_size)
        self.grad_accum = float(grad_accum)
        self.check_overflow = check_overflow
        # fp32 (no overflow check, loss scale 1) without accumulation has nothing to divide: no Mul per parameter
        self.unscale = check_overflow or grad_accum > 1
        self.distributed = world_size > 1
        if self.distributed and check_overflow:
            self.sum_flags = ops.AllReduce(ops.ReduceOp.SUM, world_group())
        self.hyper_map = ops.HyperMap()

    def local_overflow(self, grads):
        """This device's overflow flag (float32 0/1). On Ascend's status-register modes it reflects the
        device, not only these values: hence the sum over devices in `construct`."""
        return ops.cast(ops.logical_not(ms.amp.all_finite(grads)), ms.float32)

    def construct(self, grads, loss_scale):
        if self.unscale:
            grads = self.hyper_map(ops.partial(ops.mul, 1.0 / (self.grad_accum * loss_scale)), grads)
        grads = self.reduce(grads)
        if not self.check_overflow:
            return ops.depend(ops.ones((), ms.bool_), self.optimizer(grads))
        overflow = self.local_overflow(grads)
        if self.distributed:
            overflow = self.sum_flags(overflow)
        stepped = overflow < 0.5
        if stepped:
            stepped = ops.depend(stepped, self.optimizer(grads))
        return stepped


class TrainStep(nn.Cell):
    """`step(loss_scale, image, label, *net_inputs) -> (loss, stepped)`: one micro-step.

    grad_accum 1: loss, gradients and the update in one graph. grad_accum > 1: the micro-step adds its
    gradients to `sums` and returns stepped=False; after the last one `apply_accumulated(loss_scale)`
    updates and clears the sums. `loss` is the unscaled loss; `net_inputs` are the model's extra inputs
    (its training masks). Without check_overflow (fp32) the loss scale must be 1: nothing divides by it.
    """

    def __init__(self, net: nn.Cell, loss_fn: nn.Cell, optimizer: nn.Cell, *, world_size: int = 1,
                 grad_accum: int = 1, check_overflow: bool = False):
        super().__init__(auto_prefix=False)
        if grad_accum < 1:
            raise ValueError(f"grad_accum must be >= 1, got {grad_accum}")
        self.net_with_loss = NetWithLoss(net, loss_fn)
        self.weights = optimizer.parameters
        self.value_and_grad = ops.value_and_grad(self.net_with_loss, None, self.weights, has_aux=True)
        self.apply_gradients = ApplyGradients(optimizer, world_size, grad_accum, check_overflow)
        self.grad_accum = grad_accum
        self._compiled = False
        if grad_accum > 1:
            self.sums = self.weights.clone(prefix="grad_sum", init="zeros")
            self.hyper_map = ops.HyperMap()
            self.apply_sums = _ApplySums(self.apply_gradients, self.sums)

    def __call__(self, *args):
        # Graph mode: the first call compiles apart from running, and the heap the compiler freed goes back
        # to the system before the step's tensors take their memory (else it stays in the process's peak).
        if not self._compiled and ms.get_context("mode") == ms.GRAPH_MODE:
            self.compile(*args)
            release_freed_heap()
            self._compiled = True
        return super().__call__(*args)

    def construct(self, loss_scale, image, label, *net_inputs):
        (_, loss), grads = self.value_and_grad(loss_scale, image, label, *net_inputs)
        if self.grad_accum == 1:
            return loss, self.apply_gradients(grads, loss_scale)
        return ops.depend(loss, self.hyper_map(ops.assign_add, self.sums, grads)), False

    def apply_accumulated(self, loss_scale) -> bool:
        """After grad_accum micro-steps: the update on their mean gradient; True when it stepped."""
        return bool(self.apply_sums(loss_scale).asnumpy())


class _ApplySums(nn.Cell):
    """ApplyGradients on the accumulated sums, which it then clears (one small graph of its own)."""

    def __init__(self, apply_gradients: ApplyGradients, sums):
        super().__init__(auto_prefix=False)
        self.apply_gradients = apply_gradients
        self.sums = sums
        self.hyper_map = ops.HyperMap()

    def construct(self, loss_scale):
        stepped = self.apply_gradients(self.sums, loss_scale)
        cleared = self.hyper_map(ops.assign, self.sums, self.hyper_map(ops.zeros_like, self.sums))
        return ops.depend(stepped, cleared)


@dataclass
class DynamicLossScale:
    """Loss scale as torch GradScaler / MindSpore DynamicLossScaleManager: divide by `factor` on an
    overflowed step (not below `min_scale`), multiply by it after `window` consecutive good steps."""

    scale: float = 65536.0
    factor: float = 2.0
    window: int = 1000
    good_steps: int = 0
    min_scale: float = 1.0

    @classmethod
    def from_config(cls, config: dict | None) -> "DynamicLossScale":
        config = dict(config or {})
        unknown = set(config) - {"init", "factor", "window"}
        if unknown:
            raise ValueError(f"train.loss_scale: unknown keys {sorted(unknown)} (expected init, factor, window)")
        scaler = cls(scale=float(config.get("init", 65536.0)), factor=float(config.get("factor", 2.0)),
                     window=int(config.get("window", 1000)))
        if not (scaler.scale >= scaler.min_scale and scaler.factor > 1.0 and scaler.window >= 1):
            raise ValueError(f"train.loss_scale: need init >= 1, factor > 1, window >= 1; got {config}")
        return scaler

    def update(self, finite: bool) -> None:
        if finite:
            self.good_steps += 1
            if self.good_steps >= self.window:
                self.scale *= self.factor
                self.good_steps = 0
        else:
            self.scale = max(self.scale / self.factor, self.min_scale)
            self.good_steps = 0
