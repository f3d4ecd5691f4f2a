"""Building blocks of the MiT backbone and its head: convolutions with a choice of formulation, channels-first
linear products, and the official initialisers.

Two formulations of the same function, chosen in one place (`resolve_formulation`): "conv" (Ascend/GPU)
follows the official code literally; "matmul" (CPU, where MindSpore's NCHW conv kernels are slow) computes
the convolutions as exact matrix products and lets BatchMatMul read operands transposed instead of
transposing tensors. The parameters are the same conv-shaped weights either way: one checkpoint serves both.
"""

import math
from typing import Optional

import mindspore as ms
from mindspore import Parameter, mint, nn, ops
from mindspore.common.initializer import Normal, TruncatedNormal, initializer

FORMULATIONS = ("conv", "matmul")
SQRT1_2 = 0.7071067811865476   # 1 / sqrt(2), C's M_SQRT1_2
GELU_PDF_SCALE = 0.3989422804014327   # 1 / sqrt(2 pi) = M_2_SQRTPI * M_SQRT1_2 * 0.5 (PyTorch's kBeta)


def resolve_formulation(requested: Optional[str] = "auto", device: Optional[str] = None) -> str:
    """The formulation of the strided convolutions: "matmul" on CPU, "conv" on Ascend/GPU.

    `requested` other than None/"auto" is taken as is (after a check); `device` defaults to the
    current device (mindspore.get_current_device()).
    """
    if requested not in (None, "auto"):
        if requested not in FORMULATIONS:
            raise ValueError(f"unknown formulation {requested!r}; expected 'auto' or one of {FORMULATIONS}")
        return requested
    if device is None:
        device = ms.get_current_device().device_target
    return "matmul" if str(device).upper() == "CPU" else "conv"


def linear_weight_init():
    """Official MiT init of nn.Linear weights: timm trunc_normal_(std=.02), bounds at +-2 (absolute)."""
    return TruncatedNormal(sigma=0.02, a=-2.0, b=2.0)


def conv_weight_init(out_channels: int, kernel_size: int, groups: int = 1):
    """Official MiT init of conv weights: normal(0, sqrt(2 / fan_out)), fan_out = k*k*out/groups."""
    fan_out = kernel_size * kernel_size * out_channels // groups
    return Normal(sigma=math.sqrt(2.0 / fan_out))


def conv_output_size(size: int, kernel_size: int, stride: int, padding: int) -> int:
    """Output length of a convolution along one axis (PyTorch/MindSpore floor formula)."""
    return (size + 2 * padding - kernel_size) // stride + 1


def dense(in_features: int, out_features: int) -> nn.Dense:
    """nn.Dense initialised like the official backbone's nn.Linear (trunc normal .02, zero bias)."""
    return nn.Dense(in_features, out_features, weight_init=linear_weight_init(), bias_init="zeros")


def layer_norm(channels: int, eps: float) -> nn.LayerNorm:
    """LayerNorm over the last axis with an explicit eps (MindSpore's default 1e-7 is nobody's)."""
    return nn.LayerNorm((channels,), begin_norm_axis=-1, begin_params_axis=-1, epsilon=eps)


class ExactGELU(nn.Cell):
    """GELU with erf (the official nn.GELU; MindSpore's nn.GELU defaults to the tanh form).

    On Ascend the fused kernel of mint.nn.functional.gelu (documented for Ascend only, no CPU kernel);
    elsewhere `ErfGELU`, PyTorch's CPU formulas written out."""

    def __init__(self, device: Optional[str] = None):
        super().__init__()
        self.fused = (device or ms.get_current_device().device_target) == "Ascend"
        self.erf_gelu = ErfGELU()

    def construct(self, x):
        if self.fused:
            return mint.nn.functional.gelu(x, approximate="none")
        return self.erf_gelu(x)


class ErfGELU(nn.Cell):
    """x * 0.5 * (1 + erf(x / sqrt 2)) and its gradient as PyTorch's CPU kernels compute them.

    Why not ops.gelu(approximate="none"): MindSpore composes it with a Div, and its CPU Div kernel keeps 16
    bytes per output element allocated for the rest of the process; and differentiating the composition
    keeps three activation-sized intermediates per layer for the backward, this backward only x
    (docs/platform_notes.md, "Memory on CPU")."""

    def construct(self, x):
        return x * gelu_cdf(x)

    def bprop(self, x, out, dout):
        x = after(x, dout)
        return (dout * gelu_slope(x, gelu_cdf(x)),)


def gelu_cdf(x):
    """Phi(x) = 0.5 * (1 + erf(x / sqrt 2)), the standard normal CDF: GELU(x) = x * Phi(x)."""
    return 0.5 * (1.0 + ops.erf(x * SQRT1_2))


def gelu_slope(x, cdf):
    """d GELU / dx = Phi(x) + x * phi(x), given cdf = Phi(x) (PyTorch's CPU formula)."""
    return cdf + x * (ops.exp(x * x * -0.5) * GELU_PDF_SCALE)


def after(tensor, dout):
    """`tensor`, to be used only once `dout` exists. A written-out backward that recomputes part of its
    forward reads its inputs through this: else the graph compiler merges the recomputation with the
    forward's identical expression (common subexpression elimination), and the forward's result stays
    allocated from the forward to the backward after all."""
    return ops.depend(tensor, dout)


def add_bias(tokens, bias):
    """tokens [..., C] + bias [C] as one BiasAdd over a [-1, C] view. Why not `+`: on CPU a broadcasting
    Add keeps 16 bytes per output element allocated for the rest of the process (docs/platform_notes.md)."""
    return ops.bias_add(tokens.reshape(-1, tokens.shape[-1]), bias).reshape(tokens.shape)


def in_dtype_of(activations, weight, bias):
    """`weight` and `bias` cast to the activations' dtype: under mixed precision (amp) the activations
    arrive in float16 while these directly used float32 Parameters stay float32, and MatMul/Conv2D need
    one dtype. A no-op in float32."""
    return ops.cast(weight, activations.dtype), ops.cast(bias, activations.dtype)


class _ConvShapedParameters(nn.Cell):
    """Holds `weight` [out, in / groups, k, k] and `bias` [out] initialised like the official MiT convs."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, groups: int = 1):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        shape = [out_channels, in_channels // groups, kernel_size, kernel_size]
        self.weight = Parameter(
            initializer(conv_weight_init(out_channels, kernel_size, groups), shape, ms.float32), name="weight")
        self.bias = Parameter(initializer("zeros", [out_channels], ms.float32), name="bias")


class OverlapPatchConv(_ConvShapedParameters):
    """Conv2d(in, out, k, stride, padding k//2) on an NCHW map, returned as tokens [B, H'*W', out].

    "conv": the conv kernel. "matmul": im2col (ops.unfold, [B, in*k*k, H'*W']) times the flattened weight,
    the same sum in the same (in, ky, kx) order; the product reads the columns transposed, so the tokens
    come out without a transpose of the (k*k times larger) column tensor.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, formulation: str):
        super().__init__(in_channels, out_channels, kernel_size)
        self.stride = stride
        self.padding = kernel_size // 2
        self.use_matmul = resolve_formulation(formulation) == "matmul"
        self.conv2d = ops.Conv2D(out_channels, kernel_size, mode=1, pad_mode="pad", pad=self.padding,
                                 stride=stride)
        self.columns_times_weight = ops.BatchMatMul(transpose_a=True, transpose_b=True)

    def construct(self, image):
        batch, _, height, width = image.shape
        out_height = conv_output_size(height, self.kernel_size, self.stride, self.padding)
        out_width = conv_output_size(width, self.kernel_size, self.stride, self.padding)
        weight, bias = in_dtype_of(image, self.weight, self.bias)
        if self.use_matmul:
            columns = ops.unfold(image, self.kernel_size, padding=self.padding, stride=self.stride)
            flat_weight = weight.reshape(1, self.out_channels, -1)
            flat_weight = ops.broadcast_to(flat_weight, (batch,) + flat_weight.shape[1:])
            tokens = add_bias(self.columns_times_weight(columns, flat_weight), bias)
        else:
            feature_map = ops.bias_add(self.conv2d(image, weight), bias)
            tokens = feature_map.reshape(batch, self.out_channels, -1).transpose(0, 2, 1)
        return tokens, out_height, out_width


class SpatialReductionConv(_ConvShapedParameters):
    """Conv2d(C, C, kernel = stride = ratio) of the attention's key/value path, on tokens of an H x W map.

    "conv": tokens -> NCHW -> conv kernel -> tokens. "matmul": cut the token grid into ratio x ratio
    patches (the rows/columns a strided conv never reaches are dropped, as the conv drops them) and
    multiply by the weight flattened in the patch's (ky, kx, in) order.
    """

    def __init__(self, channels: int, ratio: int, formulation: str):
        super().__init__(channels, channels, ratio)
        self.ratio = ratio
        self.use_matmul = resolve_formulation(formulation) == "matmul"
        self.conv2d = ops.Conv2D(channels, ratio, mode=1, pad_mode="valid", stride=ratio)

    def construct(self, tokens, height, width):
        batch = tokens.shape[0]
        channels = self.out_channels
        ratio = self.ratio
        if height < ratio or width < ratio:
            raise ValueError(f"image too small for SegFormer: a {height}x{width} token map cannot be reduced by "
                             f"the attention's {ratio}x{ratio} stride-{ratio} conv (inputs need at least 29x29 pixels)")
        weight, bias = in_dtype_of(tokens, self.weight, self.bias)
        if self.use_matmul:
            out_height = height // ratio
            out_width = width // ratio
            grid = tokens.reshape(batch, height, width, channels)
            if out_height * ratio != height or out_width * ratio != width:
                grid = grid[:, :out_height * ratio, :out_width * ratio, :]
            patches = grid.reshape(batch, out_height, ratio, out_width, ratio, channels)
            patches = patches.transpose(0, 1, 3, 2, 4, 5).reshape(batch, out_height * out_width, -1)
            flat_weight = weight.transpose(0, 2, 3, 1).reshape(channels, -1)
            return add_bias(ops.matmul(patches, flat_weight.T), bias)
        feature_map = tokens.transpose(0, 2, 1).reshape(batch, channels, height, width)
        reduced = ops.bias_add(self.conv2d(feature_map, weight), bias)
        return reduced.reshape(batch, channels, -1).transpose(0, 2, 1)


def batched_weight(weight, batch: int):
    """A weight repeated over the batch axis (BatchMatMul does not broadcast on CPU)."""
    return ops.broadcast_to(weight.reshape((1,) + weight.shape), (batch,) + weight.shape)


class ChannelsFirstLinear(nn.Cell):
    """Matrix products of a Linear layer's weight [out, in] with channels-first [B, in, N] activations.

    On CPU an explicit transpose between the token layout [B, N, C] and the map layout [B, C, N] costs
    more than the matrix product itself; BatchMatMul reads either operand transposed for free.
    """

    def __init__(self):
        super().__init__()
        self.weight_times_tokens = ops.BatchMatMul(transpose_b=True)
        self.map_times_weight = ops.BatchMatMul(transpose_a=True, transpose_b=True)
        self.weight_times_map = ops.BatchMatMul()

    def tokens_to_map(self, tokens, weight, bias):
        """Linear on tokens [B, N, in], result channels-first [B, out, N]."""
        weight, bias = in_dtype_of(tokens, weight, bias)
        return ops.bias_add(self.weight_times_tokens(batched_weight(weight, tokens.shape[0]), tokens), bias)

    def map_to_tokens(self, feature_map, weight, bias):
        """Linear on channels-first [B, in, N], result as tokens [B, N, out]."""
        weight, bias = in_dtype_of(feature_map, weight, bias)
        return add_bias(self.map_times_weight(feature_map, batched_weight(weight, feature_map.shape[0])), bias)

    def map_to_map(self, feature_map, weight):
        """Linear (no bias) on channels-first [B, in, N], result channels-first [B, out, N]."""
        weight = ops.cast(weight, feature_map.dtype)
        return self.weight_times_map(batched_weight(weight, feature_map.shape[0]), feature_map)


def tokens_to_map(tokens, height: int, width: int):
    """[B, H*W, C] tokens -> [B, C, H, W] feature map."""
    batch, _, channels = tokens.shape
    return tokens.reshape(batch, height, width, channels).transpose(0, 3, 1, 2)


def map_to_tokens(feature_map):
    """[B, C, H, W] feature map -> [B, H*W, C] tokens."""
    batch, channels = feature_map.shape[0], feature_map.shape[1]
    return feature_map.reshape(batch, channels, -1).transpose(0, 2, 1)
