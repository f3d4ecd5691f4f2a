"""The Mix Transformer (MiT) backbone of SegFormer, after NVlabs/SegFormer mix_transformer.py.

Four stages; each: overlapping patch embedding (strided conv + LayerNorm eps 1e-5), `depth` blocks of
efficient self-attention (keys/values from a spatially reduced map) and Mix-FFN (3x3 depthwise conv
between the two linears instead of a positional embedding), then a stage LayerNorm (eps 1e-6).
The backbone returns four NCHW maps at strides 4, 8, 16, 32. Attribute names are the official ones, so
parameter names follow the NVlabs state dict (see docs/model_contract.md).
`formulation` ("conv" or "matmul", see layers.py) only changes how the same function is computed.
"""

from typing import Sequence

import mindspore as ms
import numpy as np
from mindspore import nn, ops

from segformer.models.depthwise import Depthwise3x3Product, DepthwiseConv3x3
from segformer.models.layers import (ChannelsFirstLinear, ExactGELU, OverlapPatchConv, SpatialReductionConv, add_bias,
                                     after, batched_weight, dense, gelu_cdf, gelu_slope, layer_norm, map_to_tokens,
                                     resolve_formulation, tokens_to_map)
from segformer.models.stochastic import DropPath
from segformer.models.variants import MiTConfig

PATCH_EMBED_NORM_EPS = 1e-5   # nn.LayerNorm default in the official OverlapPatchEmbed
REDUCTION_NORM_EPS = 1e-5     # nn.LayerNorm default in the official Attention (sr > 1)
BLOCK_NORM_EPS = 1e-6         # norm_layer=partial(nn.LayerNorm, eps=1e-6) for norm1/norm2 and stage norms


def drop_path_rates(depths: Sequence[int], drop_path_rate: float):
    """Stochastic depth rate of every block in order: torch.linspace(0, rate, sum(depths)) in float32."""
    return [float(rate) for rate in np.linspace(0.0, drop_path_rate, sum(depths), dtype=np.float32)]


class OverlapPatchEmbed(nn.Cell):
    """Strided conv (kernel k, padding k//2) to tokens, then LayerNorm. Returns (tokens, H', W')."""

    def __init__(self, patch_size: int, stride: int, in_channels: int, embed_dim: int, formulation: str):
        super().__init__()
        self.proj = OverlapPatchConv(in_channels, embed_dim, patch_size, stride, formulation)
        self.norm = layer_norm(embed_dim, PATCH_EMBED_NORM_EPS)

    def construct(self, feature_map):
        tokens, height, width = self.proj(feature_map)
        return self.norm(tokens), height, width


class Attention(nn.Cell):
    """Efficient self-attention: queries from every token, keys and values (one fused `kv` linear, rows
    0:C key, C:2C value) from the map reduced by an sr x sr stride-sr conv + LayerNorm when sr > 1."""

    def __init__(self, dim: int, num_heads: int, sr_ratio: int, formulation: str):
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"attention width {dim} is not divisible by its {num_heads} heads")
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.sr_ratio = sr_ratio
        self.q = dense(dim, dim)
        self.kv = dense(dim, dim * 2)
        self.proj = dense(dim, dim)
        if sr_ratio > 1:
            self.sr = SpatialReductionConv(dim, sr_ratio, formulation)
            self.norm = layer_norm(dim, REDUCTION_NORM_EPS)
        self.scores = ops.BatchMatMul(transpose_b=True)
        self.channels_first = resolve_formulation(formulation) == "matmul"
        if self.channels_first:
            self.linear = ChannelsFirstLinear()
            self.attend = ChannelsFirstAttention(self.scale)

    def construct(self, tokens, height, width):
        if self.channels_first:
            return self._channels_first(tokens, height, width)
        batch, num_tokens, _ = tokens.shape
        query = self.q(tokens).reshape(batch, num_tokens, self.num_heads, self.head_dim).transpose(0, 2, 1, 3)
        context = tokens
        if self.sr_ratio > 1:
            context = self.norm(self.sr(tokens, height, width))
        key_value = self.kv(context).reshape(batch, -1, 2, self.num_heads, self.head_dim)
        key_value = key_value.transpose(2, 0, 3, 1, 4)
        key, value = key_value[0], key_value[1]
        scores = self.scores(query, key) * self.scale
        # softmax in float32 under mixed precision (a no-op cast in float32), then back to the value dtype
        weights = ops.cast(ops.softmax(ops.cast(scores, ms.float32), axis=-1), value.dtype)
        attended = ops.matmul(weights, value).transpose(0, 2, 1, 3).reshape(batch, num_tokens, self.dim)
        return self.proj(attended)

    def _channels_first(self, tokens, height, width):
        """The same attention without a Transpose kernel (on CPU each keeps 8 bytes per element allocated for
        the rest of the process): queries, keys and values channels-first [B * heads, head_dim, tokens] (a
        reshape of [B, C, tokens]: channel h * head_dim + j, the official head split), the products reading
        their operands transposed."""
        batch, num_tokens, _ = tokens.shape
        heads, head_dim = self.num_heads, self.head_dim
        query = self.linear.tokens_to_map(tokens, self.q.weight, self.q.bias)
        context = tokens
        if self.sr_ratio > 1:
            context = self.norm(self.sr(tokens, height, width))
        key_value = self.linear.tokens_to_map(context, self.kv.weight, self.kv.bias)   # rows 0:C key, C:2C value
        num_keys = key_value.shape[2]
        key = key_value[:, :self.dim].reshape(batch * heads, head_dim, num_keys)
        value = key_value[:, self.dim:].reshape(batch * heads, head_dim, num_keys)
        attended = self.attend(query.reshape(batch * heads, head_dim, num_tokens), key, value)
        return self.linear.map_to_tokens(attended.reshape(batch, self.dim, num_tokens), self.proj.weight,
                                         self.proj.bias)


class ChannelsFirstAttention(nn.Cell):
    """softmax(scale * q^T k) applied to v, all channels-first [B * heads, head_dim, tokens]; the result is
    channels-first [B * heads, head_dim, queries]. The softmax runs in float32 (a no-op cast in float32).

    The backward is written out and recomputes the attention weights from q and k instead of keeping them:
    [B * heads, queries, keys] is by far the largest tensor of a block (256 MiB for stage 1 at a 1024x1024
    crop), and autodiff keeps it for every block until the backward reaches it (as PyTorch's eager attention
    does). The cost is one more scores product and softmax per block (b0 at 1024x1024: about 11% of the step,
    for 0.7 GiB less). Written out also because MindSpore's own softmax backward subtracts the row sums with
    a broadcasting Sub, which on CPU keeps 16 bytes per element allocated for the rest of the process
    (docs/platform_notes.md); here the subtraction is part of a product. Why not `Cell.recompute()`: it does not
    recompute the inputs of a cell with its own bprop (docs/platform_notes.md)."""

    def __init__(self, scale: float):
        super().__init__()
        self.scale = scale
        self.softmax = ops.Softmax(axis=-1)   # the primitive: ops.softmax, a Python function, fails to compile in a bprop
        self.query_dot_keys = ops.BatchMatMul(transpose_a=True)          # q^T k: [BH, N, M]
        self.values_times_weights = ops.BatchMatMul(transpose_b=True)    # v w^T: [BH, d, N]
        self.grad_times_weights = ops.BatchMatMul()                      # dout w: [BH, d, M]
        self.grad_dot_values = ops.BatchMatMul(transpose_a=True)         # dout^T v: [BH, N, M]
        self.keys_times_grad = ops.BatchMatMul(transpose_b=True)         # k ds^T: [BH, d, N]
        self.queries_times_grad = ops.BatchMatMul()                      # q ds: [BH, d, M]
        self.concat_channels = ops.Concat(axis=1)
        self.ones_like = ops.OnesLike()

    def weights(self, query, key):
        """The attention weights [BH, N, M] in float32."""
        return self.softmax(ops.cast(self.query_dot_keys(query, key) * self.scale, ms.float32))

    def construct(self, query, key, value):
        return self.values_times_weights(value, ops.cast(self.weights(query, key), value.dtype))

    def bprop(self, query, key, value, out, dout):
        weights = self.weights(after(query, dout), key)
        value_grad = self.grad_times_weights(dout, ops.cast(weights, value.dtype))
        # softmax backward: w * (dw - rowsum(dw * w)) with dw = dout^T v. The row sums come from the output,
        # rowsum(dw * w) = sum over channels of dout * out (as FlashAttention computes them: 32 terms a query,
        # not one per key), and their subtraction rides in the product as one more channel,
        # [dout; -r]^T [v; 1] = dw - r 1^T: no [queries, keys] reduction, broadcast or difference (on CPU those
        # run on one thread: 0.9 s of b0's step at 1024 x 1024).
        row_sums = (ops.cast(dout, ms.float32) * ops.cast(out, ms.float32)).sum(axis=1, keepdims=True)
        grad_and_sums = self.concat_channels((dout, ops.cast(-row_sums, dout.dtype)))
        values_and_ones = self.concat_channels((value, self.ones_like(value[:, :1])))
        centered_grad = ops.cast(self.grad_dot_values(grad_and_sums, values_and_ones), ms.float32)
        scores_grad = ops.cast(weights * centered_grad, query.dtype)
        query_grad = self.keys_times_grad(key, scores_grad) * self.scale
        key_grad = self.queries_times_grad(query, scores_grad) * self.scale
        return query_grad, key_grad, value_grad


class DWConv(nn.Cell):
    """3x3 depthwise conv (with bias) applied to tokens laid out as their H x W map."""

    def __init__(self, dim: int, formulation: str):
        super().__init__()
        self.dwconv = DepthwiseConv3x3(dim, formulation)

    def construct(self, tokens, height, width):
        return map_to_tokens(self.dwconv(tokens_to_map(tokens, height, width)))


class Mlp(nn.Cell):
    """Mix-FFN: fc1 -> depthwise 3x3 conv on the token map -> exact (erf) GELU -> fc2."""

    def __init__(self, dim: int, hidden_dim: int, formulation: str):
        super().__init__()
        self.fc1 = dense(dim, hidden_dim)
        self.dwconv = DWConv(hidden_dim, formulation)
        self.act = ExactGELU()
        self.fc2 = dense(hidden_dim, dim)
        self.channels_first = resolve_formulation(formulation) == "matmul"
        if self.channels_first:
            self.recomputed = RecomputedMixFFN(hidden_dim)

    def construct(self, tokens, height, width):
        if self.channels_first:
            return self._channels_first(tokens, height, width)
        hidden = self.act(self.dwconv(self.fc1(tokens), height, width))
        return self.fc2(hidden)

    def _channels_first(self, tokens, height, width):
        """The same layers as one cell that keeps only its input for the backward (`RecomputedMixFFN`)."""
        grid = tokens.reshape(tokens.shape[0], height, width, tokens.shape[2])
        parameters = (self.fc1.weight, self.fc1.bias, self.dwconv.dwconv.weight, self.dwconv.dwconv.bias,
                      self.fc2.weight, self.fc2.bias)
        return self.recomputed(grid, *[ops.cast(parameter, tokens.dtype) for parameter in parameters])


class RecomputedMixFFN(nn.Cell):
    """Mix-FFN on the CPU formulation: fc1, 3x3 depthwise conv (with bias), exact GELU, fc2, from tokens laid
    out as their grid [B, H, W, C] to tokens [B, H*W, C]. The 4C-wide hidden activations are a channels-first
    map [B, 4C, H*W], the depthwise conv's layout: fc1 writes and fc2 reads it transposed inside their matrix
    products, which on CPU is much cheaper than transposing it to and from tokens.

    The backward is written out and keeps only the input tokens, which fc1's weight gradient needs anyway:
    autodiff keeps three 4C-wide maps per block until the backward reaches it (fc1's output for the conv's
    weight gradient, the GELU's input, the GELU's output for fc2's weight gradient), as PyTorch does; b5 at
    1024 x 1024 holds 2.4 GiB of them. They are recomputed instead: one more fc1 product and the depthwise
    conv (on the taps path, the im2col its weight gradient needs anyway: the compiler computes it once)."""

    def __init__(self, hidden_channels: int):
        super().__init__()
        self.depthwise = Depthwise3x3Product(hidden_channels)
        self.bias_add = ops.BiasAdd()   # the primitive: ops.bias_add makes one on the fly, which fails in a bprop
        self.weight_times_tokens = ops.BatchMatMul(transpose_b=True)                          # W1 x^T: [B, 4C, N]
        self.grad_times_tokens = ops.BatchMatMul()                                            # dh x: [B, 4C, C]
        self.grad_times_weight = ops.BatchMatMul(transpose_a=True)                            # dh^T W1: [B, N, C]
        self.activations_times_weight = ops.BatchMatMul(transpose_a=True, transpose_b=True)   # a^T W2^T: [B, N, C]
        self.weight_times_grad = ops.BatchMatMul(transpose_a=True, transpose_b=True)          # W2^T dout^T: [B, 4C, N]
        self.grad_times_activations = ops.BatchMatMul(transpose_a=True, transpose_b=True)     # dout^T a^T: [B, C, 4C]

    def hidden_map(self, grid, fc1_weight, fc1_bias):
        """fc1 of the tokens, as the hidden map [B, 4C, H, W]."""
        batch, height, width, channels = grid.shape
        tokens = grid.reshape(batch, height * width, channels)
        hidden = self.bias_add(self.weight_times_tokens(batched_weight(fc1_weight, batch), tokens), fc1_bias)
        return hidden.reshape(batch, -1, height, width)

    def filtered(self, hidden, dw_weight, dw_bias):
        """The depthwise conv's output [B, 4C, H*W] from the hidden map."""
        return self.bias_add(self.depthwise.filtered(hidden, dw_weight), dw_bias)

    def construct(self, grid, fc1_weight, fc1_bias, dw_weight, dw_bias, fc2_weight, fc2_bias):
        filtered = self.filtered(self.hidden_map(grid, fc1_weight, fc1_bias), dw_weight, dw_bias)
        activations = filtered * gelu_cdf(filtered)
        return add_bias(self.activations_times_weight(activations, batched_weight(fc2_weight, grid.shape[0])),
                        fc2_bias)

    def bprop(self, grid, fc1_weight, fc1_bias, dw_weight, dw_bias, fc2_weight, fc2_bias, out, dout):
        batch, height, width, channels = grid.shape
        grid = after(grid, dout)
        hidden = self.hidden_map(grid, fc1_weight, fc1_bias)
        filtered = self.filtered(hidden, dw_weight, dw_bias)
        cdf = gelu_cdf(filtered)
        fc2_bias_grad = dout.reshape(-1, channels).sum(axis=0)
        fc2_weight_grad = self.grad_times_activations(dout, filtered * cdf).sum(axis=0)
        filtered_grad = self.weight_times_grad(batched_weight(fc2_weight, batch), dout) * gelu_slope(filtered, cdf)
        dw_bias_grad = filtered_grad.sum(axis=(0, 2))
        dw_weight_grad = self.depthwise.weight_gradient(hidden, filtered_grad)
        hidden_grad = self.depthwise.input_gradient(filtered_grad, dw_weight, hidden.shape)
        hidden_grad = hidden_grad.reshape(batch, dw_weight.shape[0], height * width)
        fc1_bias_grad = hidden_grad.sum(axis=(0, 2))
        tokens = grid.reshape(batch, height * width, channels)
        fc1_weight_grad = self.grad_times_tokens(hidden_grad, tokens).sum(axis=0)
        tokens_grad = self.grad_times_weight(hidden_grad, batched_weight(fc1_weight, batch))
        return (tokens_grad.reshape(grid.shape), fc1_weight_grad, fc1_bias_grad, dw_weight_grad, dw_bias_grad,
                fc2_weight_grad, fc2_bias_grad)


class Block(nn.Cell):
    """Pre-norm transformer block: x + DropPath(Attn(norm1 x)); x + DropPath(Mlp(norm2 x)).

    The two DropPath calls draw separately (as timm's do): rows `2 * index` and `2 * index + 1` of the
    backbone's path_keep masks."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: int, sr_ratio: int, drop_path: float,
                 formulation: str, index: int = 0):
        super().__init__()
        self.norm1 = layer_norm(dim, BLOCK_NORM_EPS)
        self.attn = Attention(dim, num_heads, sr_ratio, formulation)
        self.drop_path = DropPath(drop_path)
        self.norm2 = layer_norm(dim, BLOCK_NORM_EPS)
        self.mlp = Mlp(dim, dim * mlp_ratio, formulation)
        self.attn_draw = 2 * index
        self.mlp_draw = 2 * index + 1

    def construct(self, tokens, height, width, path_keep=None):
        attn_keep = None if path_keep is None else path_keep[self.attn_draw]
        mlp_keep = None if path_keep is None else path_keep[self.mlp_draw]
        tokens = tokens + self.drop_path(self.attn(self.norm1(tokens), height, width), attn_keep)
        return tokens + self.drop_path(self.mlp(self.norm2(tokens), height, width), mlp_keep)


class MixVisionTransformer(nn.Cell):
    """MiT backbone: image [B, 3, H, W] -> (c1, c2, c3, c4), NCHW maps at strides 4, 8, 16, 32.

    Stage i has `patch_embed{i}`, `block{i}` (a CellList) and `norm{i}`, as in the official code.
    """

    def __init__(self, config: MiTConfig, drop_path_rate: float, formulation: str):
        super().__init__()
        self.in_channels = config.in_channels
        self.drop_path_rates = drop_path_rates(config.depths, drop_path_rate)
        in_channels = config.in_channels
        first_block = 0
        for stage in range(4):
            dim = config.embed_dims[stage]
            depth = config.depths[stage]
            rates = self.drop_path_rates[first_block:first_block + depth]
            first_block += depth
            patch_embed = OverlapPatchEmbed(config.patch_sizes[stage], config.strides[stage], in_channels, dim,
                                            formulation)
            blocks = nn.CellList([
                Block(dim, config.num_heads[stage], config.mlp_ratios[stage], config.sr_ratios[stage], rate,
                      formulation, index=first_block - depth + offset)
                for offset, rate in enumerate(rates)])
            setattr(self, f"patch_embed{stage + 1}", patch_embed)
            setattr(self, f"block{stage + 1}", blocks)
            setattr(self, f"norm{stage + 1}", layer_norm(dim, BLOCK_NORM_EPS))
            in_channels = dim

    @property
    def path_keep_probs(self):
        """Keep probability of every DropPath draw, in the row order of `path_keep` (two per block)."""
        return tuple(1.0 - rate for rate in self.drop_path_rates for _ in range(2))

    def _stage(self, patch_embed, blocks, norm, feature_map, path_keep):
        tokens, height, width = patch_embed(feature_map)
        for block in blocks:
            tokens = block(tokens, height, width, path_keep)
        return tokens_to_map(norm(tokens), height, width)

    def construct(self, image, path_keep=None):
        """path_keep: [2 x blocks, B] keep masks of the DropPath draws (training only; None in eval)."""
        if image.ndim != 4 or image.shape[1] != self.in_channels:
            raise ValueError(f"SegFormer expects images of shape [B, {self.in_channels}, H, W], "
                             f"got shape {image.shape}")
        c1 = self._stage(self.patch_embed1, self.block1, self.norm1, image, path_keep)
        c2 = self._stage(self.patch_embed2, self.block2, self.norm2, c1, path_keep)
        c3 = self._stage(self.patch_embed3, self.block3, self.norm3, c2, path_keep)
        c4 = self._stage(self.patch_embed4, self.block4, self.norm4, c3, path_keep)
        return c1, c2, c3, c4
