"""Batch normalisation for the decode head, synchronised across data-parallel devices when asked.

On Ascend/GPU with more than one device, MindSpore's nn.SyncBatchNorm does it. On CPU it does not work in
MindSpore 2.10 (its constructor finds no world group for the mccl backend), so `AllReduceBatchNorm2d`
computes the global batch statistics itself with `ops.AllReduce(SUM)` over the world group: first the sums
and element counts (-> global mean), then the sums of squared deviations (-> global variance), the same
two-pass figures a single device would get on the concatenated batch. With one device (or no communication
initialised) it skips the AllReduce and is plain train-mode BatchNorm.
Parameter names are MindSpore's BatchNorm names: gamma, beta, moving_mean, moving_variance.
"""

import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops
from mindspore.common.initializer import initializer


def world_size() -> int:
    """Number of devices in the communication world; 1 when communication is not initialised."""
    from mindspore.communication import GlobalComm, get_group_size
    if not GlobalComm.INITED:
        return 1
    return int(get_group_size())


def world_group() -> str:
    """Name of the world communication group of the initialised backend (hccl, nccl or mccl)."""
    from mindspore.communication import GlobalComm
    return GlobalComm.WORLD_COMM_GROUP


class AllReduceBatchNorm2d(nn.Cell):
    """BatchNorm2d over the batch of all devices (NCHW), with moving statistics updated like BN.

    momentum follows MindSpore: moving = momentum * moving + (1 - momentum) * batch (0.9 = PyTorch's 0.1).
    The moving variance takes the unbiased batch variance, as PyTorch and MindSpore BatchNorm do.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.9):
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.gamma = Parameter(initializer("ones", [num_features], ms.float32), name="gamma")
        self.beta = Parameter(initializer("zeros", [num_features], ms.float32), name="beta")
        self.moving_mean = Parameter(initializer("zeros", [num_features], ms.float32), name="moving_mean",
                                     requires_grad=False)
        self.moving_variance = Parameter(initializer("ones", [num_features], ms.float32),
                                         name="moving_variance", requires_grad=False)
        self.devices = world_size()
        self.synchronised = self.devices > 1
        if self.synchronised:
            self.all_reduce = ops.AllReduce(ops.ReduceOp.SUM, world_group())

    def _global_sum(self, values):
        if self.synchronised:
            return self.all_reduce(values)
        return values

    def _batch_statistics(self, x):
        """Mean, biased variance (for normalising) and unbiased variance (for the moving average)."""
        local_count = x.shape[0] * x.shape[2] * x.shape[3]
        count_and_sums = ops.concat((Tensor([local_count], ms.float32), x.sum(axis=(0, 2, 3))))
        count_and_sums = self._global_sum(count_and_sums)
        count = count_and_sums[0]
        mean = count_and_sums[1:] / count
        centred = x - mean.reshape(1, -1, 1, 1)
        variance = self._global_sum((centred * centred).sum(axis=(0, 2, 3))) / count
        unbiased_variance = variance * count / ops.maximum(count - 1.0, 1.0)
        return mean, variance, unbiased_variance

    def construct(self, x):
        if self.training:
            mean, variance, unbiased_variance = self._batch_statistics(x)
            keep = self.momentum
            ops.assign(self.moving_mean, keep * self.moving_mean + (1.0 - keep) * ops.stop_gradient(mean))
            ops.assign(self.moving_variance,
                       keep * self.moving_variance + (1.0 - keep) * ops.stop_gradient(unbiased_variance))
        else:
            mean, variance = self.moving_mean, self.moving_variance
        scale = self.gamma * ops.rsqrt(variance + self.eps)
        shift = self.beta - mean * scale
        return x * scale.reshape(1, -1, 1, 1) + shift.reshape(1, -1, 1, 1)

    def extend_repr(self):
        return f"num_features={self.num_features}, eps={self.eps}, momentum={self.momentum}, devices={self.devices}"


def make_batch_norm(num_features: int, eps: float = 1e-5, momentum: float = 0.9, sync: bool = False) -> nn.Cell:
    """The head's BatchNorm2d: plain nn.BatchNorm2d, or synchronised across devices when `sync`.

    Synchronised: nn.SyncBatchNorm on Ascend/GPU with more than one device, AllReduceBatchNorm2d otherwise
    (CPU, where nn.SyncBatchNorm fails, or one device, where it reduces to plain BN)."""
    if not sync:
        return nn.BatchNorm2d(num_features, eps=eps, momentum=momentum)
    if ms.get_current_device().device_target in ("Ascend", "GPU") and world_size() > 1:
        return nn.SyncBatchNorm(num_features, eps=eps, momentum=momentum)
    return AllReduceBatchNorm2d(num_features, eps=eps, momentum=momentum)
