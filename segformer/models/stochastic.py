"""The training-time random layers (stochastic depth and the head's Dropout2d), with masks drawn outside the graph.

Why outside: MindSpore's random kernels keep their state inside the compiled graph (a resumed run restarts
it) and `ops.bernoulli` is documented for GPU and CPU only, not Ascend. Here the model takes its keep masks
as inputs, drawn with numpy from (seed, rank, iteration, micro-step): the same masks after a resume, other
masks on every data-parallel rank (as each official GPU draws its own), and on any device only a
multiplication in the graph. Distribution as the official code: a sample's residual branch (timm
drop_path) or a channel (torch Dropout2d) is kept with probability 1 - p and then scaled by 1 / (1 - p).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from mindspore import nn, ops

# a fixed word so that these draws never share a stream with another use of the same seed
_STREAM = 0x5E6F


class _Drop(nn.Cell):
    """x * keep / keep_prob, keep in {0, 1} of shape `mask_shape(x)` drawn outside the graph. Identity in
    eval mode or at drop probability 0."""

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = float(drop_prob)
        self.keep_prob = 1.0 - self.drop_prob

    def construct(self, x, keep):
        if not self.training or self.drop_prob == 0.0:
            return x
        if keep is None:
            raise ValueError("drop path / dropout in training needs its keep mask "
                             "(see segformer.models.stochastic.draw_masks)")
        # keep / keep_prob on the small mask, then one same-shape product: on CPU a broadcasting Mul (and any
        # Div) keeps 16 bytes per output element allocated for the rest of the process
        scale = ops.cast(keep, x.dtype).reshape(self.mask_shape(x)) * (1.0 / self.keep_prob)
        return x * ops.broadcast_to(scale, x.shape)

    def extend_repr(self):
        return f"drop_prob={self.drop_prob}"


class DropPath(_Drop):
    """Stochastic depth per sample (timm drop_path): keep [B] for x [B, ...]."""

    def mask_shape(self, x):
        return (x.shape[0],) + (1,) * (x.ndim - 1)


class ChannelDropout(_Drop):
    """Dropout2d (torch) on [B, C, H, W]: keep [B, C], one draw per channel of each sample."""

    def mask_shape(self, x):
        return (x.shape[0], x.shape[1], 1, 1)


@dataclass(frozen=True)
class MaskLayout:
    """What a model's training masks look like: one keep probability per drop-path draw (each block draws
    twice, attention then MLP, in block order), and the head's channel count and keep probability."""

    path_keep_probs: tuple[float, ...]
    channels: int
    channel_keep_prob: float


def draw_masks(layout: MaskLayout, batch: int, *, seed: int, rank: int, iteration: int, micro_step: int = 0):
    """Keep masks for one micro-batch: (path_keep [draws, batch], channel_keep [batch, channels]), float32 0/1.

    A pure function of its arguments (numpy's SeedSequence over them), so resuming reproduces the masks and
    ranks differ. Compared in float64 against the keep probability: P(keep) = 1 - p exactly up to 2**-53.
    """
    rng = np.random.default_rng([_STREAM, int(seed), int(rank), int(iteration), int(micro_step)])
    probs = np.asarray(layout.path_keep_probs, np.float64).reshape(-1, 1)
    path_keep = (rng.random((len(layout.path_keep_probs), batch)) < probs).astype(np.float32)
    channel_keep = (rng.random((batch, layout.channels)) < layout.channel_keep_prob).astype(np.float32)
    return path_keep, channel_keep
