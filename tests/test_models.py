"""Tests of segformer.models: shapes and names against the official code, the two formulations, the head's
wiring, synchronised BN, and one graph-mode training step.

Expectations are written independently of the model code: the official NVlabs state-dict shapes are derived
here from the formulas of mix_transformer.py, the variant table is retyped from docs/model_contract.md,
and the parameter names follow docs/model_contract.md.
"""

import math
import re

import mindspore as ms
import numpy as np
import pytest
import torch
from mindspore import mint, nn
from mindspore.nn.utils import no_init_parameters

from segformer.models import build_model, count_parameters, resolve_formulation, variant_config
from segformer.models.head import SegFormerHead
from segformer.models.depthwise import DepthwiseConv3x3
from segformer.models.layers import ExactGELU, OverlapPatchConv, SpatialReductionConv
from segformer.models.stochastic import ChannelDropout, DropPath, MaskLayout, draw_masks
from segformer.models.sync_bn import AllReduceBatchNorm2d

ms.set_device("CPU")

# Retyped from docs/model_contract.md (Variants) (not imported from the model code).
OFFICIAL = {  # noqa: E501 (one row per variant)
    "b0": dict(dims=(32, 64, 160, 256), depths=(2, 2, 2, 2), decoder=256, backbone_m=3.32, head_m=0.40, tensors=176),
    "b1": dict(dims=(64, 128, 320, 512), depths=(2, 2, 2, 2), decoder=256, backbone_m=13.15, head_m=0.53, tensors=176),
    "b2": dict(dims=(64, 128, 320, 512), depths=(3, 4, 6, 3), decoder=768, backbone_m=24.20, head_m=3.17, tensors=332),
    "b3": dict(dims=(64, 128, 320, 512), depths=(3, 4, 18, 3), decoder=768, backbone_m=44.07, head_m=3.17, tensors=572),
    "b4": dict(dims=(64, 128, 320, 512), depths=(3, 8, 27, 3), decoder=768, backbone_m=60.84, head_m=3.17, tensors=832),
    "b5": dict(dims=(64, 128, 320, 512), depths=(3, 6, 40, 3), decoder=768, backbone_m=81.44, head_m=3.17, tensors=1052),
}
SR_RATIOS = (8, 4, 2, 1)
PATCH_SIZES = (7, 3, 3, 3)
STRIDES = (4, 2, 2, 2)


def official_backbone_shapes(dims, depths):
    """NVlabs MixVisionTransformer state-dict keys and shapes, from the formulas of the official __init__."""
    shapes = {}
    in_channels = 3
    for stage, (dim, depth) in enumerate(zip(dims, depths), start=1):
        k, sr, hidden = PATCH_SIZES[stage - 1], SR_RATIOS[stage - 1], 4 * dim
        shapes[f"patch_embed{stage}.proj.weight"] = (dim, in_channels, k, k)
        shapes[f"patch_embed{stage}.proj.bias"] = (dim,)
        shapes[f"patch_embed{stage}.norm.weight"] = shapes[f"patch_embed{stage}.norm.bias"] = (dim,)
        for j in range(depth):
            block = f"block{stage}.{j}."
            layers = {"norm1": [(dim,), (dim,)], "attn.q": [(dim, dim), (dim,)],
                      "attn.kv": [(2 * dim, dim), (2 * dim,)]}
            if sr > 1:
                layers.update({"attn.sr": [(dim, dim, sr, sr), (dim,)], "attn.norm": [(dim,), (dim,)]})
            layers.update({"attn.proj": [(dim, dim), (dim,)], "norm2": [(dim,), (dim,)],
                           "mlp.fc1": [(hidden, dim), (hidden,)], "mlp.dwconv.dwconv": [(hidden, 1, 3, 3), (hidden,)],
                           "mlp.fc2": [(dim, hidden), (dim,)]})
            for layer, (weight, bias) in layers.items():
                shapes[block + layer + ".weight"], shapes[block + layer + ".bias"] = weight, bias
        shapes[f"norm{stage}.weight"] = shapes[f"norm{stage}.bias"] = (dim,)
        in_channels = dim
    return shapes


def contract_names(dims, depths, decoder, num_classes):
    """Full MindSpore names and shapes of SegFormer per docs/model_contract.md (norms: gamma/beta)."""
    expected = {}
    for key, shape in official_backbone_shapes(dims, depths).items():
        module, kind = key.rsplit(".", 1)
        if module.split(".")[-1].startswith("norm"):
            kind = {"weight": "gamma", "bias": "beta"}[kind]
        expected[f"backbone.{module}.{kind}"] = shape
    for i, dim in enumerate(dims, start=1):
        expected[f"decode_head.linear_c{i}.proj.weight"] = (decoder, dim)
        expected[f"decode_head.linear_c{i}.proj.bias"] = (decoder,)
    expected["decode_head.linear_fuse.conv.weight"] = (decoder, 4 * decoder, 1, 1)
    for stat in ("gamma", "beta", "moving_mean", "moving_variance"):
        expected[f"decode_head.linear_fuse.bn.{stat}"] = (decoder,)
    expected["decode_head.linear_pred.weight"] = (num_classes, decoder, 1, 1)
    expected["decode_head.linear_pred.bias"] = (num_classes,)
    return expected


def names_and_shapes(net, prefix=""):
    return {name: tuple(p.shape) for name, p in net.parameters_and_names() if name.startswith(prefix)}


def official_output_size(size):
    """Logit size along one axis: the official head works at the first patch embedding's output size,
    floor((n + 2 * (k // 2) - k) / s) + 1 with k = 7, s = 4."""
    return (size + 2 * (PATCH_SIZES[0] // 2) - PATCH_SIZES[0]) // STRIDES[0] + 1


def random_image(shape, seed=0):
    return ms.Tensor(np.random.RandomState(seed).randn(*shape).astype(np.float32))


def copy_parameters(source, target):
    values = {name: p.asnumpy() for name, p in source.parameters_and_names()}
    for name, p in target.parameters_and_names():
        p.set_data(ms.Tensor(values[name]))


def quick_model(variant, **kwargs):
    """build_model without the official (slow, ~1 s per 20 M) random init: small seeded values instead."""
    with no_init_parameters():
        net = build_model(variant, **kwargs)
    rng = np.random.RandomState(0)
    for _, p in net.parameters_and_names():
        fill = np.ones(p.shape, np.float32) if p.name.endswith(("gamma", "moving_variance")) else \
            (0.02 * rng.standard_normal(p.shape)).astype(np.float32)
        p.set_data(ms.Tensor(fill))
    return net


def perturb_parameters(net, seed=0):
    """Move every parameter off its init (biases 0, norms 1/0) so that wiring mistakes show in outputs."""
    rng = np.random.RandomState(seed)
    for _, p in net.parameters_and_names():
        value = p.asnumpy()
        if "moving_variance" in p.name:
            value = rng.uniform(0.5, 2.0, value.shape)
        else:
            value = value + 0.05 * rng.randn(*value.shape)
        p.set_data(ms.Tensor(value.astype(np.float32)))


@pytest.mark.parametrize("variant", sorted(OFFICIAL))
def test_parameter_shapes_and_counts_match_official_checkpoints(variant):
    spec = OFFICIAL[variant]
    with no_init_parameters():
        net = build_model(variant)
    expected = contract_names(spec["dims"], spec["depths"], spec["decoder"], 19)
    assert names_and_shapes(net) == expected
    backbone = names_and_shapes(net, "backbone.")
    assert len(backbone) == spec["tensors"]
    backbone_count = count_parameters(net, "backbone.")
    official_shapes = official_backbone_shapes(spec["dims"], spec["depths"]).values()
    assert backbone_count == sum(math.prod(shape) for shape in official_shapes)
    assert round(backbone_count / 1e6, 2) == spec["backbone_m"]
    assert round(count_parameters(net, "decode_head.") / 1e6, 2) == spec["head_m"]


def test_b0_names_follow_the_contract_as_sets():
    with no_init_parameters():
        net = build_model("b0")
    names = [name for name, _ in net.parameters_and_names()]
    assert len(names) == len(set(names))
    assert set(names) == set(contract_names(OFFICIAL["b0"]["dims"], OFFICIAL["b0"]["depths"], 256, 19))
    # checkpoint names are the Parameter names, not only the attribute paths
    assert [p.name for _, p in net.parameters_and_names()] == names
    assert isinstance(net.backbone.block1, nn.CellList) and net.decode_head is not None


@pytest.mark.parametrize("variant", sorted(OFFICIAL))
def test_output_shape_of_every_variant(variant):
    net = quick_model(variant, num_classes=7)
    net.set_train(False)
    logits = net(random_image((1, 3, 32, 64)))   # the smallest input every 8/4/2-fold reduction accepts
    assert logits.shape == (1, 7, 8, 16)


def test_output_size_for_a_size_not_divisible_by_32():
    net = quick_model("b0")
    net.set_train(False)
    logits = net(random_image((2, 3, 33, 47)))
    assert logits.shape == (2, 19, official_output_size(33), official_output_size(47)) == (2, 19, 9, 12)
    assert np.isfinite(logits.asnumpy()).all()


def test_wrong_channel_count_is_a_clear_error():
    net = quick_model("b0")
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\].*\(1, 4, 64, 64\)"):
        net(random_image((1, 4, 64, 64)))


@pytest.mark.parametrize("formulation", ["conv", "matmul"])
def test_too_small_image_is_a_clear_error(formulation):
    net = quick_model("b0", formulation=formulation)
    with pytest.raises(ValueError, match="too small.*4x4 token map.*8x8"):
        net(random_image((1, 3, 16, 16)))


def test_formulations_agree_in_outputs_gradients_names_and_shapes():
    conv_net = build_model("b0", formulation="conv")
    matmul_net = build_model("b0", formulation="matmul")
    perturb_parameters(conv_net)
    # Every BN output of the head positive (they span about -13..10 here), so that the ReLU behind it has no
    # pixel at its kink: the two formulations round differently, and a pre-activation within rounding of 0
    # gates a pixel in one and not the other (a full-suite run saw 2.6e-3 gradient differences from that).
    beta = conv_net.decode_head.linear_fuse.bn.beta
    beta.set_data(beta.value() + 20.0)
    copy_parameters(conv_net, matmul_net)
    assert names_and_shapes(conv_net) == names_and_shapes(matmul_net)
    image = random_image((1, 3, 70, 90))   # 18 x 23 tokens at stage 1: the 8x8 reduction drops a border
    results = []
    for net in (conv_net, matmul_net):
        net.set_train(False)

        def loss_and_logits(x, net=net):
            logits = net(x)
            return (logits ** 2).mean(), logits

        (loss, logits), grads = ms.value_and_grad(loss_and_logits, None, net.trainable_params(), has_aux=True)(image)
        results.append((logits.asnumpy(), float(loss), [g.asnumpy() for g in grads]))
    (conv_out, conv_loss, conv_grads), (matmul_out, matmul_loss, matmul_grads) = results
    assert conv_out.shape == (1, 19, official_output_size(70), official_output_size(90)) == (1, 19, 18, 23)
    np.testing.assert_allclose(matmul_out, conv_out, rtol=1e-4, atol=1e-4)
    assert matmul_loss == pytest.approx(conv_loss, rel=1e-5)
    names = [p.name for p in conv_net.trainable_params()]
    relative = sorted(((float(np.abs(g_matmul - g_conv).max() / (np.abs(g_conv).max() + 1e-12)), name)
                       for name, g_conv, g_matmul in zip(names, conv_grads, matmul_grads)), reverse=True)
    assert relative[0][0] < 1e-3, f"largest relative gradient differences: {relative[:5]}"   # measured < 2e-5


HF_PREFIXES = [(r"^backbone\.patch_embed(\d)\.norm\.", "segformer.stages.{}.patch_embeddings.layer_norm."),
               (r"^backbone\.patch_embed(\d)\.", "segformer.stages.{}.patch_embeddings."),
               (r"^backbone\.block(\d)\.", "segformer.stages.{}.blocks."),
               (r"^backbone\.norm(\d)\.", "segformer.stages.{}.layer_norm."),
               (r"^decode_head\.linear_c(\d)\.", "decode_head.linear_projections.{}.")]


def hugging_face_name(name):
    """In-memory transformers 5.x SegFormer name of one of our parameters (kv maps to k_proj/v_proj)."""
    for pattern, replacement in HF_PREFIXES:
        name = re.sub(pattern, lambda match, r=replacement: r.format(int(match[1]) - 1), name)
    for ours, theirs in [("norm1.", "layernorm_before."), ("norm2.", "layernorm_after."),
                         ("attn.q.", "attention.q_proj."), ("attn.proj.", "attention.o_proj."),
                         ("attn.sr.", "attention.sequence_reduction.sequence_reduction."),
                         ("attn.norm.", "attention.sequence_reduction.layer_norm."), ("linear_fuse.conv.", "linear_fuse."),
                         ("linear_fuse.bn.", "batch_norm."), ("linear_pred.", "classifier."), ("gamma", "weight"),
                         ("beta", "bias"), ("moving_mean", "running_mean"), ("moving_variance", "running_var")]:
        name = name.replace(ours, theirs)
    return name


@pytest.mark.parametrize("formulation", ["conv", "matmul"])
def test_same_function_as_hugging_face_segformer(formulation):
    """Against an independent implementation: HF SegformerForSemanticSegmentation (b0 shapes, random weights,
    block and stage LayerNorms set to the official eps 1e-6, since HF uses 1e-5 everywhere)."""
    from transformers import SegformerConfig, SegformerForSemanticSegmentation
    torch.manual_seed(0)
    reference = SegformerForSemanticSegmentation(SegformerConfig(
        hidden_sizes=[32, 64, 160, 256], depths=[2, 2, 2, 2], decoder_hidden_size=256, num_labels=19)).eval()
    with torch.no_grad():
        for module_name, module in reference.named_modules():
            block_or_stage_norm = re.search(r"layernorm_(before|after)$|stages\.\d\.layer_norm$", module_name)
            if isinstance(module, torch.nn.LayerNorm) and block_or_stage_norm:
                module.eps = 1e-6
        for parameter in reference.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
        reference.decode_head.batch_norm.running_mean.normal_()
        reference.decode_head.batch_norm.running_var.uniform_(0.5, 2.0)
    state = {key: value.numpy() for key, value in reference.state_dict().items()}
    net = quick_model("b0", formulation=formulation)
    for name, parameter in net.parameters_and_names():
        if ".attn.kv." in name:
            key = hugging_face_name(name.replace(".attn.kv.", ".attn.q."))
            value = np.concatenate([state[key.replace("q_proj", "k_proj")], state[key.replace("q_proj", "v_proj")]])
        else:
            value = state[hugging_face_name(name)]
        parameter.set_data(ms.Tensor(value))
    net.set_train(False)
    image = random_image((1, 3, 70, 90))
    with torch.no_grad():
        expected = reference(pixel_values=torch.from_numpy(image.asnumpy())).logits.numpy()
    np.testing.assert_allclose(net(image).asnumpy(), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kernel, stride, size", [(7, 4, (23, 30)), (3, 2, (9, 14))])
def test_patch_conv_formulations_match_torch_conv(kernel, stride, size):
    layers = [OverlapPatchConv(5, 6, kernel, stride, formulation) for formulation in ("conv", "matmul")]
    layers[1].weight.set_data(layers[0].weight.value())
    layers[0].bias.set_data(random_image((6,), seed=3))
    layers[1].bias.set_data(layers[0].bias.value())
    image = random_image((2, 5) + size)
    expected = torch.nn.functional.conv2d(torch.from_numpy(image.asnumpy()),
                                          torch.from_numpy(layers[0].weight.asnumpy()),
                                          torch.from_numpy(layers[0].bias.asnumpy()), stride=stride, padding=kernel // 2)
    for layer in layers:
        tokens, height, width = layer(image)
        assert (height, width) == tuple(expected.shape[2:])
        np.testing.assert_allclose(tokens.asnumpy(), expected.flatten(2).transpose(1, 2).numpy(), atol=1e-4)


def test_spatial_reduction_formulations_match_torch_conv():
    layers = [SpatialReductionConv(6, 4, formulation) for formulation in ("conv", "matmul")]
    layers[1].weight.set_data(layers[0].weight.value())
    height, width = 10, 13   # not multiples of 4: the conv ignores the last rows and columns
    tokens = random_image((2, height * width, 6))
    torch_map = torch.from_numpy(tokens.asnumpy()).transpose(1, 2).reshape(2, 6, height, width)
    expected = torch.nn.functional.conv2d(torch_map, torch.from_numpy(layers[0].weight.asnumpy()), stride=4)
    for layer in layers:
        np.testing.assert_allclose(layer(tokens, height, width).asnumpy(), expected.flatten(2).transpose(1, 2).numpy(),
                                   atol=1e-5)


def test_depthwise_conv_formulations_match_torch_grouped_conv():
    layers = [DepthwiseConv3x3(8, formulation) for formulation in ("conv", "matmul")]
    assert tuple(layers[0].weight.shape) == (8, 1, 3, 3)
    layers[0].bias.set_data(random_image((8,), seed=4))
    for name in ("weight", "bias"):
        getattr(layers[1], name).set_data(getattr(layers[0], name).value())
    feature_map = random_image((2, 8, 5, 7))
    expected = torch.nn.functional.conv2d(torch.from_numpy(feature_map.asnumpy()),
                                          torch.from_numpy(layers[0].weight.asnumpy()),
                                          torch.from_numpy(layers[0].bias.asnumpy()), padding=1, groups=8)
    for layer in layers:
        np.testing.assert_allclose(layer(feature_map).asnumpy(), expected.numpy(), atol=1e-5)


def torch_gradients(function, *arrays, seed=7):
    """PyTorch's value and input gradients of sum(function(*inputs) * r) for a fixed random r."""
    inputs = [torch.from_numpy(array.asnumpy()).requires_grad_(True) for array in arrays]
    out = function(*inputs)
    weights = torch.from_numpy(np.random.default_rng(seed).standard_normal(tuple(out.shape)).astype(np.float32))
    (out * weights).sum().backward()
    return out.detach().numpy(), [x.grad.numpy() for x in inputs], ms.Tensor(weights.numpy())


def mindspore_gradients(cell, weights, *inputs):
    def weighted_sum(*xs):
        return (cell(*xs) * weights).sum()
    grads = ms.grad(weighted_sum, grad_position=tuple(range(len(inputs))))(*inputs)
    return [g.asnumpy() for g in (grads if isinstance(grads, tuple) else (grads,))]


def test_written_out_backward_passes_equal_pytorch_autograd():
    """The CPU formulation's own bprops (ErfGELU, ChannelsFirstAttention, Depthwise3x3Product both ways,
    RecomputedMixFFN: written out to keep MindSpore's CPU memory down, docs/platform_notes.md) against
    PyTorch's autograd of the same functions."""
    from segformer.models.depthwise import Depthwise3x3Product
    from segformer.models.layers import ErfGELU
    from segformer.models.mix_transformer import ChannelsFirstAttention, RecomputedMixFFN
    x = random_image((2, 6, 5, 7), seed=11) * 3.0
    expected, (grad,), weights = torch_gradients(lambda t: torch.nn.functional.gelu(t), x)
    np.testing.assert_allclose(ErfGELU()(x).asnumpy(), expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(mindspore_gradients(ErfGELU(), weights, x)[0], grad, rtol=3e-5, atol=1e-6)

    # channels-first [batch * heads, head_dim, tokens]: 11 queries, 6 keys and values
    query, key, value = (random_image((3, 4, tokens), seed=seed) * 2.0 for tokens, seed in ((11, 12), (6, 15), (6, 16)))
    scale = 4 ** -0.5
    expected, grads, weights = torch_gradients(
        lambda q, k, v: v @ torch.softmax(scale * q.transpose(1, 2) @ k, dim=-1).transpose(1, 2), query, key, value)
    attention = ChannelsFirstAttention(scale)
    np.testing.assert_allclose(attention(query, key, value).asnumpy(), expected, rtol=1e-5, atol=1e-6)
    for ours, theirs in zip(mindspore_gradients(attention, weights, query, key, value), grads):
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)

    feature_map, kernel = random_image((2, 6, 5, 7), seed=13), random_image((6, 1, 3, 3), seed=14)
    expected, grads, weights = torch_gradients(
        lambda m, k: torch.nn.functional.conv2d(m, k, padding=1, groups=6), feature_map, kernel)
    for product in (Depthwise3x3Product(6, direct=True), Depthwise3x3Product(6, direct=False)):
        np.testing.assert_allclose(product(feature_map, kernel).asnumpy().reshape(expected.shape), expected, atol=1e-5)
        got = mindspore_gradients(lambda m, k: product(m, k).reshape(expected.shape), weights, feature_map, kernel)
        for ours, theirs in zip(got, grads):
            np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)

    # Mix-FFN: fc1 (6 -> 8), depthwise 3x3 with bias, exact GELU, fc2 (8 -> 6), on a 5 x 7 grid of tokens
    inputs = [random_image(shape, seed=seed) for shape, seed in
              (((2, 5, 7, 6), 17), ((8, 6), 18), ((8,), 19), ((8, 1, 3, 3), 20), ((8,), 21), ((6, 8), 22), ((6,), 23))]
    inputs[0] = inputs[0] * 2.0

    def torch_mix_ffn(grid, fc1_weight, fc1_bias, dw_weight, dw_bias, fc2_weight, fc2_bias):
        hidden = torch.nn.functional.linear(grid, fc1_weight, fc1_bias).permute(0, 3, 1, 2)
        hidden = torch.nn.functional.conv2d(hidden, dw_weight, dw_bias, padding=1, groups=8)
        return torch.nn.functional.linear(torch.nn.functional.gelu(hidden).flatten(2).transpose(1, 2), fc2_weight,
                                          fc2_bias)
    expected, grads, weights = torch_gradients(torch_mix_ffn, *inputs)
    taps_mix_ffn = RecomputedMixFFN(8)
    taps_mix_ffn.depthwise.use_taps()
    for mix_ffn in (RecomputedMixFFN(8), taps_mix_ffn):
        np.testing.assert_allclose(mix_ffn(*inputs).asnumpy(), expected, rtol=1e-5, atol=1e-5)
        # gradients summed over 70 tokens reach |38|: float32 summation orders (which differ between CPUs)
        # leave a few 1e-6 of that scale on every element, also where the element itself is small
        for ours, theirs in zip(mindspore_gradients(mix_ffn, weights, *inputs), grads, strict=True):
            np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5 * max(1.0, np.abs(theirs).max()))


class _RecomputingCells(nn.Cell):
    """The four cells with written-out backward passes, chained, each output gradient depending on data."""

    def __init__(self, channels: int, side: int, direct: bool):
        super().__init__()
        from segformer.models.depthwise import Depthwise3x3Product
        from segformer.models.layers import ErfGELU
        from segformer.models.mix_transformer import ChannelsFirstAttention, RecomputedMixFFN
        self.shape = (1, channels, side, side)
        self.attention = ChannelsFirstAttention(0.5)
        self.depthwise = Depthwise3x3Product(channels, direct)
        self.gelu = ErfGELU()
        self.mix_ffn = RecomputedMixFFN(channels)
        if not direct:
            self.mix_ffn.depthwise.use_taps()
        self.kernel = ms.Parameter(random_image((channels, 1, 3, 3), seed=21), name="kernel")
        self.bias = ms.Parameter(random_image((channels,), seed=23), name="bias")
        self.linear = ms.Parameter(random_image((channels, channels), seed=24), name="linear")

    def construct(self, tokens):   # [1, channels, side * side]
        attended = self.attention(tokens, tokens, tokens)
        filtered = self.depthwise(attended.reshape(self.shape), self.kernel).reshape(attended.shape)
        activated = (self.gelu(filtered) * attended).reshape(self.shape).transpose(0, 2, 3, 1)
        out = self.mix_ffn(activated, self.linear, self.bias, self.kernel, self.bias, self.linear, self.bias)
        return (out * out).sum()


class _ValueAndGradients(nn.Cell):
    def __init__(self, net: nn.Cell):
        super().__init__()
        self.value_and_grad = ms.value_and_grad(net, 0, net.trainable_params())

    def construct(self, x):
        return self.value_and_grad(x)


@pytest.mark.parametrize("direct", [True, False], ids=["direct", "taps"])
def test_written_out_backward_passes_recompute_instead_of_keeping_the_forward(direct):
    """Each written-out backward recomputes part of its forward (the attention weights, the depthwise conv or
    its taps, erf; Mix-FFN's hidden maps) so that the forward's large results need not stay allocated until
    the backward. Unless the recomputation reads its inputs through layers.after (a Depend on the output
    gradient), the compiler merges it with the identical forward expression and keeps the forward's result
    after all (measured: b2's training at 1024 x 1024 12.4 -> 7.0 GiB with it). The compiled train graph must
    hold both copies. Both ways of computing the depthwise conv (segformer.models.depthwise)."""
    from collections import Counter

    from platform_ops import frontend_graph_nodes
    nodes = Counter(name for name, _ in frontend_graph_nodes(_ValueAndGradients(_RecomputingCells(4, 4, direct)),
                                                              random_image((1, 4, 16), seed=22)))
    assert nodes["Softmax"] == 2, nodes       # forward, and the backward's recomputed attention weights
    assert nodes["Erf"] == 2 * 2, nodes       # per GELU: forward, and the backward's recomputed cdf
    if direct:
        # the C++ loops: standalone conv forward + input gradient + weight gradient; Mix-FFN's forward, its
        # recomputation, input gradient, weight gradient
        assert nodes["Custom"] == 3 + 4 and nodes["Im2Col"] == 0, nodes
        # forward + backward + recomputed: attention 2 + 4 + 1, Mix-FFN's linears 2 + 4 + 1 (fc1)
        assert nodes["BatchMatMul"] == 7 + 7, nodes
    else:
        assert nodes["Im2Col"] == 2 * 3, nodes    # per depthwise conv: forward taps, the backward's of input and dout
        # forward + backward + recomputed: attention 2 + 4 + 1, depthwise taps 1 + 2 + 0, Mix-FFN 3 + 6 + 2 (fc1, conv)
        assert nodes["BatchMatMul"] == 7 + 3 + 11, nodes


def test_formulation_is_chosen_by_device_in_one_place():
    assert resolve_formulation("auto", "CPU") == "matmul"
    assert resolve_formulation("auto", "Ascend") == "conv"
    assert resolve_formulation(None, "GPU") == "conv"
    assert resolve_formulation("conv", "CPU") == "conv"
    with pytest.raises(ValueError, match="formulation"):
        resolve_formulation("winograd", "CPU")
    with no_init_parameters():
        assert build_model("b0").formulation == "matmul"      # this test runs on CPU
        assert build_model("b0", formulation="conv").backbone.patch_embed1.proj.use_matmul is False


def test_mlp_uses_exact_erf_gelu():
    with no_init_parameters():
        act = build_model("b0").backbone.block2[1].mlp.act
    x = np.linspace(-4, 4, 161).astype(np.float32)
    exact = np.array([0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in x])
    tanh = 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))
    assert np.abs(exact - tanh).max() > 1e-4          # the two forms are distinguishable on this grid
    np.testing.assert_allclose(act(ms.Tensor(x)).asnumpy(), exact, atol=2e-6)
    # on Ascend the fused kernel (mint's exact GELU), documented for Ascend; it has no CPU kernel to run here
    assert not act.fused and ExactGELU("Ascend").fused
    assert "``Ascend``" in mint.nn.functional.gelu.__doc__.split("Supported Platforms:")[1].split("\n\n")[0]


def test_layer_norm_eps_of_each_norm():
    with no_init_parameters():
        net = build_model("b2")
    seen = 0
    for name, cell in net.cells_and_names():
        if isinstance(cell, nn.LayerNorm):
            seen += 1
            expected = 1e-5 if (".patch_embed" in name or name.endswith("attn.norm")) else 1e-6
            assert cell.epsilon == expected, name
    # patch embeds, norm1/norm2 of 16 blocks, reduction norms of the 13 blocks with sr > 1, stage norms
    assert seen == 4 + 2 * 16 + 13 + 4


def test_layer_norm_eps_is_the_one_used_in_the_computation():
    with no_init_parameters():
        norm = build_model("b0").backbone.block1[0].norm1
    norm.init_parameters_data()
    x = np.tile(np.array([0.0, 1e-3], np.float32), 16)[None]   # variance 2.5e-7: 1e-6 and 1e-5 differ a lot
    expected = (x - x.mean()) / np.sqrt(x.var() + 1e-6)
    np.testing.assert_allclose(norm(ms.Tensor(x)).asnumpy(), expected, rtol=1e-3)


@pytest.mark.parametrize("formulation", ["conv", "matmul"])
def test_head_concatenates_c4_c3_c2_c1_and_resizes_like_torch(formulation):
    """Slot k of the fuse weight must meet c4, c3, c2, c1 for k = 0..3, in both formulations (the matmul one
    fuses before resizing)."""
    dims, embed = (3, 4, 5, 6), 8
    head = SegFormerHead(dims, embed, num_classes=embed, dropout=0.1, formulation=formulation)
    head.set_train(False)
    features = [random_image((1, c, 12 // 2 ** i, 20 // 2 ** i), seed=i) for i, c in enumerate(dims)]
    identity = np.eye(embed, dtype=np.float32).reshape(embed, embed, 1, 1)
    head.linear_pred.weight.set_data(ms.Tensor(identity))
    head.linear_pred.bias.set_data(ms.Tensor(np.zeros(embed, np.float32)))
    projections = [head.linear_c1, head.linear_c2, head.linear_c3, head.linear_c4]
    for slot, source in enumerate((3, 2, 1, 0)):
        fuse = np.zeros((embed, 4 * embed, 1, 1), np.float32)
        fuse[:, slot * embed:(slot + 1) * embed] = identity
        head.linear_fuse.conv.weight.set_data(ms.Tensor(fuse))
        proj = projections[source].proj
        tokens = torch.from_numpy(features[source].asnumpy()).flatten(2).transpose(1, 2)
        projected = torch.nn.functional.linear(tokens, torch.from_numpy(proj.weight.asnumpy()),
                                               torch.from_numpy(proj.bias.asnumpy()))
        projected = projected.transpose(1, 2).reshape(1, embed, *features[source].shape[2:])
        resized = torch.nn.functional.interpolate(projected, size=(12, 20), mode="bilinear", align_corners=False)
        expected = torch.relu(resized / math.sqrt(1 + 1e-5)).numpy()    # eval BN: mean 0, var 1
        np.testing.assert_allclose(head(features).asnumpy(), expected, atol=1e-5, err_msg=f"slot {slot}")


def test_drop_path_rates_spread_linearly_over_all_blocks():
    with no_init_parameters():
        net = build_model("b2")
    depths = OFFICIAL["b2"]["depths"]
    official = [x.item() for x in torch.linspace(0, 0.1, sum(depths))]
    blocks = [block for stage in (net.backbone.block1, net.backbone.block2, net.backbone.block3, net.backbone.block4)
              for block in stage]
    assert len(blocks) == sum(depths)
    np.testing.assert_allclose([block.drop_path.drop_prob for block in blocks], official, rtol=0, atol=1e-7)
    assert blocks[0].drop_path.drop_prob == 0.0 and blocks[-1].drop_path.drop_prob == pytest.approx(0.1)
    assert net.decode_head.dropout.keep_prob == pytest.approx(0.9)
    with no_init_parameters():
        assert build_model("b0", drop_path_rate=0.0).backbone.block4[1].drop_path.drop_prob == 0.0


def test_drop_path_drops_whole_samples_and_rescales():
    layer = DropPath(0.5)
    x = ms.Tensor(np.ones((400, 3, 2), np.float32))
    (keep,), _ = draw_masks(MaskLayout((0.5,), 1, 1.0), 400, seed=0, rank=0, iteration=0)
    layer.set_train(True)
    y = layer(x, ms.Tensor(keep)).asnumpy()
    per_sample = y.reshape(400, -1)
    assert set(np.unique(per_sample)) <= {0.0, 2.0}
    assert (per_sample.min(axis=1) == per_sample.max(axis=1)).all()
    np.testing.assert_array_equal(per_sample[:, 0] == 2.0, keep == 1.0)
    assert 120 < (per_sample[:, 0] == 0).sum() < 280
    with pytest.raises(ValueError, match="keep mask"):
        layer(x, None)
    layer.set_train(False)
    np.testing.assert_array_equal(layer(x, None).asnumpy(), x.asnumpy())


def test_channel_dropout_drops_whole_channels_and_rescales():
    layer = ChannelDropout(0.25)
    x = ms.Tensor(np.ones((3, 8, 4, 5), np.float32))
    _, keep = draw_masks(MaskLayout((), 8, 0.75), 3, seed=0, rank=0, iteration=0)
    layer.set_train(True)
    y = layer(x, ms.Tensor(keep)).asnumpy()
    np.testing.assert_array_equal(y, np.broadcast_to(keep[:, :, None, None] / 0.75, y.shape).astype(np.float32))
    layer.set_train(False)
    np.testing.assert_array_equal(layer(x, None).asnumpy(), x.asnumpy())


def test_training_masks_have_the_official_distribution_and_are_a_function_of_seed_rank_iteration():
    """keep ~ Bernoulli(1 - p) independently per (draw, sample) and per (sample, channel), as timm's
    drop_path and torch's Dropout2d: checked by the counts against binomial bounds (6 sigma) and by
    independence between rows; and the masks are reproducible and differ per rank, iteration, micro-step."""
    net = build_model("b2", head_dropout=0.1)   # drop path 0 .. 0.1 over 16 blocks, 32 draws
    layout = net.mask_layout
    assert layout.path_keep_probs == tuple(1 - r for r in net.backbone.drop_path_rates for _ in range(2))
    assert (layout.channels, layout.channel_keep_prob) == (768, pytest.approx(0.9))
    batch, repeats = 64, 40
    path = np.concatenate([draw_masks(layout, batch, seed=3, rank=0, iteration=i)[0] for i in range(repeats)], 1)
    channel = np.concatenate([draw_masks(layout, batch, seed=3, rank=0, iteration=i)[1] for i in range(repeats)])
    probs = np.asarray(layout.path_keep_probs)
    n = batch * repeats
    assert np.all(np.abs(path.mean(1) - probs) <= 6 * np.sqrt(probs * (1 - probs) / n) + 1e-12)
    assert path[0].all() and path[1].all(), "the first block has drop path 0: always kept"
    m = channel.size
    assert abs(channel.mean() - 0.9) <= 6 * np.sqrt(0.09 / m)
    last = path[-1] - path[-1].mean()
    assert abs(np.mean(last * (path[-3] - path[-3].mean()))) < 6 * 0.09 / np.sqrt(n), "draws are independent"
    same = draw_masks(layout, 2, seed=3, rank=1, iteration=7, micro_step=1)
    again = draw_masks(layout, 2, seed=3, rank=1, iteration=7, micro_step=1)
    for a, b in zip(same, again):
        np.testing.assert_array_equal(a, b)
    for other in ({"rank": 0}, {"iteration": 8}, {"micro_step": 0}, {"seed": 4}):
        args = {"seed": 3, "rank": 1, "iteration": 7, "micro_step": 1, **other}
        assert not np.array_equal(draw_masks(layout, 2, **args)[1], same[1]), other


def test_official_initialisation():
    ms.set_seed(0)
    net = build_model("b1")
    params = {name: p.asnumpy() for name, p in net.parameters_and_names()}
    linear = params["backbone.block2.0.mlp.fc1.weight"]
    assert linear.std() == pytest.approx(0.02, rel=0.05) and np.abs(linear).max() < 2.0
    assert not params["backbone.block2.0.mlp.fc1.bias"].any()
    patch = params["backbone.patch_embed1.proj.weight"]                  # fan_out = 7 * 7 * 64
    assert patch.std() == pytest.approx(math.sqrt(2 / (49 * 64)), rel=0.05)
    dwconv = params["backbone.block1.0.mlp.dwconv.dwconv.weight"]         # fan_out = 3 * 3 * 256 / 256
    assert dwconv.std() == pytest.approx(math.sqrt(2 / 9), rel=0.1)
    sr = params["backbone.block1.0.attn.sr.weight"]                       # fan_out = 8 * 8 * 64
    assert sr.std() == pytest.approx(math.sqrt(2 / (64 * 64)), rel=0.05)
    assert (params["backbone.norm1.gamma"] == 1).all() and not params["backbone.norm1.beta"].any()
    fuse = params["decode_head.linear_fuse.conv.weight"]                 # kaiming normal, fan_out = 256
    assert fuse.std() == pytest.approx(math.sqrt(2 / 256), rel=0.05)
    assert (params["decode_head.linear_fuse.bn.moving_variance"] == 1).all()


def test_all_reduce_batch_norm_equals_batch_norm_on_one_device():
    plain = nn.BatchNorm2d(6, eps=1e-5, momentum=0.9)
    synced = AllReduceBatchNorm2d(6, eps=1e-5, momentum=0.9)
    assert not synced.synchronised
    assert sorted(names_and_shapes(plain).items()) == sorted(names_and_shapes(synced).items())
    gamma, beta = random_image((6,), seed=1), random_image((6,), seed=2)
    channel_weights = ms.Tensor(np.arange(6, dtype=np.float32).reshape(1, 6, 1, 1) ** 2)
    for layer in (plain, synced):
        layer.gamma.set_data(gamma)
        layer.beta.set_data(beta)
        layer.set_train(True)
    for step in range(2):
        x = random_image((3, 6, 5, 7), seed=10 + step) * 3 + 1
        outputs = []
        for layer in (plain, synced):
            grad_fn = ms.value_and_grad(lambda t, n=layer: (n(t) * channel_weights).sum(), 0, layer.trainable_params())
            _, (x_grad, param_grads) = grad_fn(x)
            outputs.append([layer(x).asnumpy(), x_grad.asnumpy()] + [g.asnumpy() for g in param_grads])
        for got, want in zip(outputs[1], outputs[0]):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    # value_and_grad plus the forward above ran 4 training passes per layer on identical inputs
    np.testing.assert_allclose(synced.moving_mean.asnumpy(), plain.moving_mean.asnumpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(synced.moving_variance.asnumpy(), plain.moving_variance.asnumpy(), rtol=1e-5, atol=1e-6)
    for layer in (plain, synced):
        layer.set_train(False)
    x = random_image((2, 6, 3, 3), seed=5)
    np.testing.assert_allclose(synced(x).asnumpy(), plain(x).asnumpy(), rtol=1e-5, atol=1e-5)


def test_sync_bn_keyword_keeps_the_checkpoint_names():
    with no_init_parameters():
        plain, synced = build_model("b0"), build_model("b0", sync_bn=True)
    assert isinstance(synced.decode_head.linear_fuse.bn, AllReduceBatchNorm2d)
    assert names_and_shapes(plain) == names_and_shapes(synced)


def test_variant_names_and_config_lookup():
    assert variant_config("MiT_B3") == variant_config("b3")
    with pytest.raises(ValueError, match="b6"):
        build_model("b6")


@pytest.mark.slow
def test_graph_mode_training_step_and_channel_error(tmp_path, monkeypatch):
    """One graph compile: value_and_grad of b0 in train mode (DropPath, Dropout2d, BN batch statistics)."""
    monkeypatch.chdir(tmp_path)   # the failed compile of the wrong-channel call dumps rank_0/om/analyze_fail.ir here
    net = build_model("b0", sync_bn=True)
    net.set_train(True)
    image = random_image((2, 3, 64, 64))
    masks = [ms.Tensor(mask) for mask in draw_masks(net.mask_layout, 2, seed=0, rank=0, iteration=0)]
    ms.set_context(mode=ms.GRAPH_MODE)
    try:
        def loss_fn(x):
            return (net(x, *masks) ** 2).mean()

        grad_fn = ms.value_and_grad(loss_fn, None, net.trainable_params())
        loss, grads = grad_fn(image)
        assert np.isfinite(float(loss))
        assert len(grads) == len(net.trainable_params())
        assert all(np.isfinite(g.asnumpy()).all() for g in grads)
        assert np.abs(grads[0].asnumpy()).max() > 0
        with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
            net(random_image((1, 1, 64, 64)))
    finally:
        ms.set_context(mode=ms.PYNATIVE_MODE)
    assert np.abs(net.decode_head.linear_fuse.bn.moving_mean.asnumpy()).max() > 0
