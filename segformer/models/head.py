"""The SegFormer all-MLP decode head, after NVlabs/SegFormer mmseg/models/decode_heads/segformer_head.py.

Each backbone map c_i is projected to E channels by a linear layer on its tokens (`linear_c{i}`); c2..c4 are
resized bilinearly (align_corners False) to c1's size (stride 4); the four are concatenated in the order
c4, c3, c2, c1 and fused by a 1x1 conv without bias + BatchNorm + ReLU (`linear_fuse`, mmcv ConvModule);
Dropout2d, then `linear_pred` (1x1 conv with bias) gives the class logits at H/4 x W/4.

In the "matmul" formulation (CPU) the same function is computed in a cheaper order: a 1x1 conv mixes
channels only and bilinear resizing mixes positions only (its weights sum to 1), so they commute, and
    fuse(concat(up(P4 c4), up(P3 c3), up(P2 c2), P1 c1)) = sum_i up((W_i P_i) c_i) + sum_i W_i b_i
where W_i is the slice of the fuse weight that meets source i in the concat and P_i, b_i are linear_c{i}.
Each source then needs one E x C_i product at its own resolution instead of the 4E -> E conv over the
stride-4 map (for b0 at 512x1024 about 17 GFLOP less per image; at E = 768, 150 GFLOP less). The resizes
themselves are two matrix products each there (segformer.models.resize).
The parameters and their roles are unchanged.
"""

import mindspore as ms
from mindspore import nn, ops
from mindspore.common.initializer import HeNormal

from segformer.models.layers import ChannelsFirstLinear, map_to_tokens, resolve_formulation
from segformer.models.resize import BilinearResize
from segformer.models.stochastic import ChannelDropout
from segformer.models.sync_bn import make_batch_norm

BN_EPS = 1e-5
BN_MOMENTUM = 0.9   # MindSpore keeps `momentum` of the old value: PyTorch/mmcv momentum 0.1


class MLP(nn.Cell):
    """Linear projection of a feature map's tokens: [B, C, h, w] -> [B, E, h, w] (`proj` is nn.Linear-like).

    PyTorch's default nn.Linear init, as the official head leaves it."""

    def __init__(self, in_channels: int, embed_dim: int):
        super().__init__()
        self.proj = nn.Dense(in_channels, embed_dim)

    def construct(self, feature_map):
        batch, _, height, width = feature_map.shape
        projected = self.proj(map_to_tokens(feature_map))
        return projected.transpose(0, 2, 1).reshape(batch, -1, height, width)


class ConvModule(nn.Cell):
    """mmcv ConvModule(4E -> E, 1x1, no bias, BN, ReLU): `conv` then `bn` then ReLU.

    mmcv initialises the conv with kaiming normal (fan_out, relu gain) and the norm to 1/0."""

    def __init__(self, in_channels: int, out_channels: int, sync_bn: bool):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 1, has_bias=False,
                              weight_init=HeNormal(negative_slope=0, mode="fan_out", nonlinearity="relu"))
        self.bn = make_batch_norm(out_channels, eps=BN_EPS, momentum=BN_MOMENTUM, sync=sync_bn)
        self.activate = nn.ReLU()

    def construct(self, x):
        return self.normalize_and_activate(self.conv(x))

    def normalize_and_activate(self, convolved):
        return self.activate(self.bn(convolved))


class SegFormerHead(nn.Cell):
    """All-MLP decoder: (c1, c2, c3, c4) -> logits [B, num_classes, h1, w1] at c1's size (stride 4)."""

    def __init__(self, in_channels, embed_dim: int, num_classes: int, dropout: float = 0.1,
                 sync_bn: bool = False, formulation: str = "conv"):
        super().__init__()
        c1_channels, c2_channels, c3_channels, c4_channels = in_channels
        self.embed_dim = embed_dim
        self.linear_c4 = MLP(c4_channels, embed_dim)
        self.linear_c3 = MLP(c3_channels, embed_dim)
        self.linear_c2 = MLP(c2_channels, embed_dim)
        self.linear_c1 = MLP(c1_channels, embed_dim)
        self.linear_fuse = ConvModule(4 * embed_dim, embed_dim, sync_bn)
        self.dropout = ChannelDropout(dropout)
        self.linear_pred = nn.Conv2d(embed_dim, num_classes, 1, has_bias=True)
        self.fuse_before_resize = resolve_formulation(formulation) == "matmul"
        self.resize = BilinearResize(align_corners=False, formulation=formulation)
        if self.fuse_before_resize:
            self.linear = ChannelsFirstLinear()

    def construct(self, features, channel_keep=None):
        """channel_keep: [B, E] keep masks of the Dropout2d before linear_pred (training only; None in eval)."""
        if self.fuse_before_resize:
            fused = self.linear_fuse.normalize_and_activate(self._fuse_before_resize(features))
        else:
            fused = self._fuse_concatenated(features)
        return self.linear_pred(self.dropout(fused, channel_keep))

    def _fuse_concatenated(self, features):
        """The official order: project, resize, concatenate (c4, c3, c2, c1), then linear_fuse."""
        c1, c2, c3, c4 = features
        size = c1.shape[2:]
        projected_c4 = self.resize(self.linear_c4(c4), size)
        projected_c3 = self.resize(self.linear_c3(c3), size)
        projected_c2 = self.resize(self.linear_c2(c2), size)
        projected_c1 = self.linear_c1(c1)
        return self.linear_fuse(ops.concat((projected_c4, projected_c3, projected_c2, projected_c1), axis=1))

    def _fuse_before_resize(self, features):
        """linear_fuse's conv output (before BN), computed as sum_i up((W_i P_i) c_i) + sum_i W_i b_i."""
        c1, c2, c3, c4 = features
        size = c1.shape[2:]
        fuse_weight = self.linear_fuse.conv.weight.reshape(self.embed_dim, 4 * self.embed_dim)
        fused_c4, shift_c4 = self._fused_source(c4, self.linear_c4, fuse_weight, 0)
        fused_c3, shift_c3 = self._fused_source(c3, self.linear_c3, fuse_weight, 1)
        fused_c2, shift_c2 = self._fused_source(c2, self.linear_c2, fuse_weight, 2)
        fused_c1, shift_c1 = self._fused_source(c1, self.linear_c1, fuse_weight, 3)
        fused = self.resize(fused_c4, size) + self.resize(fused_c3, size) + self.resize(fused_c2, size)
        shift = (shift_c4 + shift_c3 + shift_c2 + shift_c1).reshape(-1)
        # BiasAdd, not a broadcasting Add (which on CPU keeps 16 bytes per element allocated); float16 under mixed
        return ops.bias_add(fused + fused_c1, ops.cast(shift, fused_c1.dtype))

    def _fused_source(self, feature_map, projection, fuse_weight, slot):
        """(W_slot P) c at c's resolution, and W_slot b, for the source in concat position `slot`."""
        batch, channels, height, width = feature_map.shape
        slot_weight = fuse_weight[:, slot * self.embed_dim:(slot + 1) * self.embed_dim]
        # composed in float32 (under mixed precision amp may hand these weights over in float16; a no-op in fp32)
        slot_weight = ops.cast(slot_weight, ms.float32)
        composed = ops.matmul(slot_weight, ops.cast(projection.proj.weight, ms.float32))
        shift = ops.matmul(slot_weight, ops.cast(projection.proj.bias, ms.float32).reshape(-1, 1))
        fused = self.linear.map_to_map(feature_map.reshape(batch, channels, height * width), composed)
        return fused.reshape(batch, self.embed_dim, height, width), shift
