"""The SegFormer all-MLP decode head, after NVlabs/SegFormer mmseg/models/decode_heads/segformer_head.py.

Each backbone map c_i is projected to E channels by a linear layer on its tokens (`linear_c{i}`); c2..c4 are
resized bilinearly (align_corners False) to c1's size (stride 4); the four are concatenated in the order
c4, c3, c2, c1 and fused by a 1x1 conv without bias + BatchNorm + ReLU (`linear_fuse`, mmcv ConvModule);
Dropout2d, then `linear_pred` (1x1 conv with bias) gives the class logits at H/4 x W/4.
"""

from mindspore import nn, ops
from mindspore.common.initializer import HeNormal

from segformer.models.layers import map_to_tokens
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
        return self.activate(self.bn(self.conv(x)))


class SegFormerHead(nn.Cell):
    """All-MLP decoder: (c1, c2, c3, c4) -> logits [B, num_classes, h1, w1] at c1's size (stride 4)."""

    def __init__(self, in_channels, embed_dim: int, num_classes: int, dropout: float = 0.1,
                 sync_bn: bool = False):
        super().__init__()
        c1_channels, c2_channels, c3_channels, c4_channels = in_channels
        self.linear_c4 = MLP(c4_channels, embed_dim)
        self.linear_c3 = MLP(c3_channels, embed_dim)
        self.linear_c2 = MLP(c2_channels, embed_dim)
        self.linear_c1 = MLP(c1_channels, embed_dim)
        self.linear_fuse = ConvModule(4 * embed_dim, embed_dim, sync_bn)
        self.dropout = nn.Dropout2d(p=dropout)
        self.linear_pred = nn.Conv2d(embed_dim, num_classes, 1, has_bias=True)

    def _resized(self, feature_map, size):
        if feature_map.shape[2:] == size:
            return feature_map
        return ops.interpolate(feature_map, size=size, mode="bilinear", align_corners=False)

    def construct(self, features):
        c1, c2, c3, c4 = features
        size = c1.shape[2:]
        projected_c4 = self._resized(self.linear_c4(c4), size)
        projected_c3 = self._resized(self.linear_c3(c3), size)
        projected_c2 = self._resized(self.linear_c2(c2), size)
        projected_c1 = self.linear_c1(c1)
        fused = self.linear_fuse(ops.concat((projected_c4, projected_c3, projected_c2, projected_c1), axis=1))
        return self.linear_pred(self.dropout(fused))

