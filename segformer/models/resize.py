"""Bilinear resizing of NCHW maps, PyTorch's `F.interpolate(mode="bilinear")` (no antialias).

Along one axis a bilinear resize is a fixed linear map: output position o reads the two input positions
around its source coordinate with weights (1 - f, f). Written as an [out, in] matrix per axis, the 2-D
resize of every [h, w] plane is rows @ plane @ cols^T, two matrix products. On CPU that beats MindSpore's
ResizeBilinear / ResizeBilinearGrad kernels about 2x forward + backward, at the demo's shapes and at
1024 x 1024 alike (benchmarks/README.md), and the matrices cost nothing after the graph compile: their
sizes are static, so they are graph constants. The weights follow PyTorch's CPU kernel in float32 (source
coordinate, floor, clamp at both ends, the width pass summed before the height pass as it does), so the
results agree with F.interpolate to float32 rounding.

"conv" formulation (Ascend/GPU): MindSpore's own ResizeBilinear kernels, as before.
"""

from functools import lru_cache

import numpy as np

import mindspore as ms
from mindspore import Tensor, nn, ops

from segformer.models.layers import resolve_formulation


@lru_cache(maxsize=64)
def bilinear_weights(in_size: int, out_size: int, align_corners: bool = False) -> np.ndarray:
    """[out_size, in_size] float32: row o holds the weights output position o gives each input position.

    PyTorch's rule (aten UpSample.h, area_pixel_compute_source_index, guard_index_and_lambda), in float32
    (checked equal, bit for bit, to F.interpolate of unit vectors over all sizes 1..40 -> 1..80):
    source = scale * o with scale (in-1)/(out-1) for align_corners, else (o + 0.5) * in/out - 0.5 clamped at
    0; i0 = floor(source) (at most in-1), i1 = i0 + 1 (at most in-1), weights 1 - f and f, f = source - i0.
    Equal sizes give the identity. Read-only: the array is shared by every caller."""
    if in_size == out_size:
        weights = np.eye(out_size, dtype=np.float32)
    else:
        target = np.arange(out_size, dtype=np.float32)
        if align_corners:
            scale = np.float32(in_size - 1) / np.float32(out_size - 1) if out_size > 1 else np.float32(0)
            source = scale * target
        else:
            scale = np.float32(in_size) / np.float32(out_size)
            # PyTorch's build computes scale * (o + 0.5) - 0.5 as one fused multiply-add (one rounding): the
            # float32 product is exact in float64, so this rounds once too (float32 steps differ in ~1 ulp)
            product = np.float64(scale) * (target + np.float32(0.5)).astype(np.float64)
            source = np.maximum((product - 0.5).astype(np.float32), np.float32(0))
        first = np.minimum(np.floor(source).astype(np.int64), in_size - 1)
        fraction = np.clip(source - first.astype(np.float32), 0, 1).astype(np.float32)
        second = np.minimum(first + 1, in_size - 1)
        weights = np.zeros((out_size, in_size), np.float32)
        rows = np.arange(out_size)
        np.add.at(weights, (rows, first), np.float32(1) - fraction)
        np.add.at(weights, (rows, second), fraction)
    weights.flags.writeable = False
    return weights


@ops.constexpr
def interpolation_matrix(in_size, out_size, align_corners):
    """`bilinear_weights` as a float32 Tensor, evaluated while the graph compiles (sizes are static)."""
    return Tensor(bilinear_weights(int(in_size), int(out_size), bool(align_corners)), ms.float32)


class SeparableResize(nn.Cell):
    """plane -> rows @ plane @ cols^T for every [h, w] plane of an NCHW map: rows [H, h], cols [W, w].

    The width pass is one MatMul over all B*C*h lines; the height pass a BatchMatMul of the rows matrix
    (broadcast: CPU BatchMatMul does not broadcast) with each plane. An axis whose size is unchanged is
    skipped. The backward is the adjoint, rows^T @ dout @ cols, written out so that the constant matrices
    get no gradient work."""

    def __init__(self):
        super().__init__()
        self.times_cols_transposed = ops.MatMul(transpose_b=True)
        self.times_cols = ops.MatMul()
        self.rows_times = ops.BatchMatMul()
        self.rows_transposed_times = ops.BatchMatMul(transpose_a=True)
        self.zeros_like = ops.ZerosLike()

    def construct(self, feature_map, rows, cols):
        batch, channels, height, width = feature_map.shape
        out_height, out_width = rows.shape[0], cols.shape[0]
        planes = feature_map
        if out_width != width:
            planes = self.times_cols_transposed(planes.reshape(-1, width), cols)
        planes = planes.reshape(batch * channels, height, out_width)
        if out_height != height:
            planes = self.rows_times(per_plane(rows, batch * channels), planes)
        return planes.reshape(batch, channels, out_height, out_width)

    def bprop(self, feature_map, rows, cols, out, dout):
        batch, channels, height, width = feature_map.shape
        out_height, out_width = rows.shape[0], cols.shape[0]
        planes = dout.reshape(batch * channels, out_height, out_width)
        if out_height != height:
            planes = self.rows_transposed_times(per_plane(rows, batch * channels), planes)
        if out_width != width:
            planes = self.times_cols(planes.reshape(-1, out_width), cols)
        return planes.reshape(feature_map.shape), self.zeros_like(rows), self.zeros_like(cols)


def per_plane(matrix, planes: int):
    return ops.broadcast_to(matrix.reshape((1,) + matrix.shape), (planes,) + matrix.shape)


class BilinearResize(nn.Cell):
    """`resize(feature_map, size)`: [B, C, h, w] -> [B, C, size[0], size[1]], bilinear; the input itself when
    the size is unchanged. "matmul" formulation: `SeparableResize`; "conv": ops.interpolate."""

    def __init__(self, align_corners: bool = False, formulation: str = "auto"):
        super().__init__()
        self.align_corners = bool(align_corners)
        self.separable = resolve_formulation(formulation) == "matmul"
        self.product = SeparableResize()

    def construct(self, feature_map, size):
        height, width = feature_map.shape[2], feature_map.shape[3]
        if height == size[0] and width == size[1]:
            return feature_map
        if not self.separable:
            return ops.interpolate(feature_map, size=size, mode="bilinear", align_corners=self.align_corners)
        rows = ops.cast(interpolation_matrix(height, size[0], self.align_corners), feature_map.dtype)
        cols = ops.cast(interpolation_matrix(width, size[1], self.align_corners), feature_map.dtype)
        return self.product(feature_map, rows, cols)
