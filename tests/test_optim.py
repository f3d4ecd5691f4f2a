"""AdamW + parameter groups + lr schedule against torch.optim.AdamW / mmcv's rules and hand-computed values."""

import numpy as np
import pytest
import torch

import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops

from segformer.engine.optim import (AdamW, build_param_groups, describe_param_groups, kernel_moment2_ratio,
                                    match_custom_key)
from segformer.engine.schedule import PolySchedule, lr_at

ms.set_device("CPU")


# ---------------------------------------------------------------- a tiny model with the real naming
class _Attn(nn.Cell):
    def __init__(self):
        super().__init__()
        self.q = nn.Dense(8, 8)
        self.sr = nn.Conv2d(8, 8, 2, 2, has_bias=True)
        self.norm = nn.LayerNorm((8,), epsilon=1e-5)


class _Block(nn.Cell):
    def __init__(self):
        super().__init__()
        self.norm1 = nn.LayerNorm((8,), epsilon=1e-6)
        self.attn = _Attn()


class _PatchEmbed(nn.Cell):
    def __init__(self):
        super().__init__()
        self.proj = nn.Conv2d(3, 8, 3, has_bias=True)
        self.norm = nn.LayerNorm((8,), epsilon=1e-5)


class _Backbone(nn.Cell):
    def __init__(self):
        super().__init__()
        self.patch_embed1 = _PatchEmbed()
        self.block1 = nn.CellList([_Block()])
        self.norm1 = nn.LayerNorm((8,), epsilon=1e-6)


class _Fuse(nn.Cell):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(16, 8, 1, has_bias=False)
        self.bn = nn.BatchNorm2d(8)


class _Proj(nn.Cell):
    def __init__(self):
        super().__init__()
        self.proj = nn.Dense(8, 8)


class _Head(nn.Cell):
    def __init__(self):
        super().__init__()
        self.linear_c1 = _Proj()
        self.linear_fuse = _Fuse()
        self.linear_pred = nn.Conv2d(8, 19, 1, has_bias=True)


class _Net(nn.Cell):
    def __init__(self):
        super().__init__()
        self.backbone = _Backbone()
        self.decode_head = _Head()


EXPECTED_GROUPS = {
    "norm": [
        "backbone.patch_embed1.norm.gamma", "backbone.patch_embed1.norm.beta",
        "backbone.block1.0.norm1.gamma", "backbone.block1.0.norm1.beta",
        "backbone.block1.0.attn.norm.gamma", "backbone.block1.0.attn.norm.beta",
        "backbone.norm1.gamma", "backbone.norm1.beta",
    ],
    "default": [
        "backbone.patch_embed1.proj.weight", "backbone.patch_embed1.proj.bias",
        "backbone.block1.0.attn.q.weight", "backbone.block1.0.attn.q.bias",
        "backbone.block1.0.attn.sr.weight", "backbone.block1.0.attn.sr.bias",
    ],
    "head": [
        "decode_head.linear_c1.proj.weight", "decode_head.linear_c1.proj.bias",
        "decode_head.linear_fuse.conv.weight",
        "decode_head.linear_fuse.bn.gamma", "decode_head.linear_fuse.bn.beta",
        "decode_head.linear_pred.weight", "decode_head.linear_pred.bias",
    ],
}


def test_param_groups_follow_the_official_rule():
    groups = build_param_groups(_Net(), base_lr=6e-5, weight_decay=0.01)
    by_name = {g.name: g for g in groups}
    assert {k: sorted(v.param_names) for k, v in by_name.items()} == {k: sorted(v) for k, v in EXPECTED_GROUPS.items()}
    # the head's BatchNorm is trained at 10x WITH decay (it matched 'head' in the official PyTorch run);
    # its moving statistics are not trainable and stay out of the optimizer
    assert (by_name["head"].lr_mult, by_name["head"].decay_mult, by_name["head"].weight_decay) == (10.0, 1.0, 0.01)
    assert by_name["head"].lr == pytest.approx(6e-4)
    assert (by_name["norm"].lr_mult, by_name["norm"].weight_decay) == (1.0, 0.0)
    assert (by_name["default"].lr_mult, by_name["default"].weight_decay) == (1.0, 0.01)
    text = describe_param_groups(groups)
    assert "'head'" in text and "x10" in text and "weight decay 0 " in text


def test_mmcv_key_order_longest_first_then_alphabetical():
    keys = {"norm": {"decay_mult": 0.0}, "head": {"lr_mult": 10.0}, "pos_block": {"decay_mult": 0.0}}
    # equal length: alphabetical, so 'head' wins over 'norm' (mmcv sorts sorted(keys) by length, reversed)
    assert match_custom_key("decode_head.some_norm.weight", keys) == "head"
    assert match_custom_key("backbone.pos_block.norm.weight", keys) == "pos_block"
    assert match_custom_key("backbone.block1.0.attn.q.bias", keys) is None
    single = build_param_groups(_Net(), base_lr=1.0, weight_decay=0.5, custom_keys={})
    assert [g.name for g in single] == ["default"] and single[0].weight_decay == 0.5


def _model_params(rng):
    """Parameters named like the real ones, one per group kind (weights, biases, norms, head BN)."""
    specs = [
        ("backbone.block1.0.norm1.gamma", (6,)),
        ("backbone.block1.0.norm1.beta", (6,)),
        ("backbone.block1.0.attn.q.weight", (6, 6)),
        ("backbone.block1.0.attn.q.bias", (6,)),
        ("decode_head.linear_fuse.bn.gamma", (5,)),
        ("decode_head.linear_pred.weight", (4, 5, 1, 1)),
        ("decode_head.linear_pred.bias", (4,)),
    ]
    return [Parameter(Tensor(rng.standard_normal(s).astype(np.float32)), name=n) for n, s in specs]


def _torch_adamw(params, groups, lr, wd):
    """torch.optim.AdamW with the same grouping, params copied from MindSpore."""
    tensors = {p.name: torch.nn.Parameter(torch.from_numpy(p.asnumpy().copy())) for p in params}
    torch_groups = [
        {"params": [tensors[n] for n in g.param_names], "lr": lr * g.lr_mult, "weight_decay": wd * g.decay_mult,
         "initial_lr": lr * g.lr_mult}
        for g in groups
    ]
    return tensors, torch.optim.AdamW(torch_groups, lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=wd)


def test_adamw_matches_torch_over_three_scheduled_steps():
    rng = np.random.default_rng(0)
    params = _model_params(rng)
    base_lr, wd = 1e-2, 0.05  # large enough that decay and steps stand far above fp32 rounding
    groups = build_param_groups(params, base_lr=base_lr, weight_decay=wd)
    assert [g.name for g in groups] == ["norm", "default", "head"]
    optimizer = AdamW(groups, lr=base_lr)
    torch_params, torch_opt = _torch_adamw(optimizer.parameters, groups, base_lr, wd)
    schedule = PolySchedule(base_lr=base_lr, max_iters=10, warmup_iters=2, warmup_ratio=0.1)

    @ms.jit
    def apply(grads):
        return optimizer(grads)

    for t in range(3):
        lr = schedule(t)
        optimizer.set_lr(lr)
        for group, g in zip(torch_opt.param_groups, groups):
            group["lr"] = lr * g.lr_mult  # what mmcv's LrUpdaterHook does per group
        # q.bias gets gradients near eps (1e-8), where eps's place (after the root) decides the step
        grads = [(rng.standard_normal(p.shape) * (3e-8 if p.name.endswith("q.bias") else 0.1)).astype(np.float32)
                 for p in optimizer.parameters]
        apply(ms.mutable(tuple(Tensor(g) for g in grads)))  # mutable: one compile for all steps
        for p, g in zip(optimizer.parameters, grads):
            torch_params[p.name].grad = torch.from_numpy(g)
        torch_opt.step()
        for p in optimizer.parameters:
            np.testing.assert_allclose(p.asnumpy(), torch_params[p.name].detach().numpy(), rtol=1e-6, atol=1e-7,
                                       err_msg=f"{p.name} after step {t + 1}")
    assert optimizer.num_steps == 3
    ratio = kernel_moment2_ratio(0.999)   # the fused kernel's v is torch's times a constant (1 - 1.3e-5)
    assert ratio == pytest.approx(1 - 1.29e-5, abs=1e-7)
    for p, m, v in zip(optimizer.parameters, optimizer.moments1, optimizer.moments2):
        state = torch_opt.state[torch_params[p.name]]
        np.testing.assert_allclose(m.asnumpy(), state["exp_avg"].numpy(), rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(v.asnumpy(), ratio * state["exp_avg_sq"].numpy(), rtol=1e-6, atol=1e-20)
    assert optimizer.group_lrs()["head"] == pytest.approx(10 * schedule(2), rel=1e-6)


def test_decay_and_lr_multipliers_explicitly():
    """Zero gradient: a fresh AdamW step is pure decay. Unit gradient: the step is lr_group * sign(g)."""
    rng = np.random.default_rng(1)
    params = _model_params(rng)
    before = {p.name: p.asnumpy().copy() for p in params}
    lr, wd = 1e-2, 0.1
    optimizer = AdamW(build_param_groups(params, base_lr=lr, weight_decay=wd), lr=lr)
    optimizer(tuple(Tensor(np.zeros(p.shape, np.float32)) for p in optimizer.parameters))
    after = {p.name: p.asnumpy() for p in optimizer.parameters}
    for name in ("backbone.block1.0.norm1.gamma", "backbone.block1.0.norm1.beta"):
        np.testing.assert_array_equal(after[name], before[name])  # norms: no decay
    for name in ("backbone.block1.0.attn.q.weight", "backbone.block1.0.attn.q.bias"):  # biases decay too
        np.testing.assert_allclose(after[name], before[name] * (1 - lr * wd), rtol=1e-6)
    for name in ("decode_head.linear_fuse.bn.gamma", "decode_head.linear_pred.bias"):  # head: 10x lr, so 10x decay
        np.testing.assert_allclose(after[name], before[name] * (1 - 10 * lr * wd), rtol=1e-6)

    params = _model_params(rng)
    before = {p.name: p.asnumpy().copy() for p in params}
    optimizer = AdamW(build_param_groups(params, base_lr=lr, weight_decay=0.0), lr=lr)
    optimizer(tuple(Tensor(np.full(p.shape, 3.0, np.float32)) for p in optimizer.parameters))
    steps = {p.name: before[p.name] - p.asnumpy() for p in optimizer.parameters}
    np.testing.assert_allclose(steps["backbone.block1.0.attn.q.bias"], lr, rtol=1e-5)
    np.testing.assert_allclose(steps["decode_head.linear_pred.weight"], 10 * lr, rtol=1e-5)


def test_state_saves_and_resumes(tmp_path):
    rng = np.random.default_rng(2)
    grads = [tuple(Tensor(rng.standard_normal(s).astype(np.float32)) for s in [(6,), (6,), (6, 6), (6,), (5,), (4, 5, 1, 1), (4,)])
             for _ in range(3)]
    params_a = _model_params(np.random.default_rng(3))
    opt_a = AdamW(build_param_groups(params_a, base_lr=1e-2, weight_decay=0.05), lr=1e-2)
    opt_a(grads[0])
    opt_a.set_lr(5e-3)
    opt_a(grads[1])
    ckpt = str(tmp_path / "state.ckpt")
    ms.save_checkpoint(opt_a, ckpt)
    opt_a(grads[2])

    saved = ms.load_checkpoint(ckpt)
    assert {"adamw_step", "adamw_lr", "adamw_m.decode_head.linear_pred.bias", "adamw_v.backbone.block1.0.norm1.gamma",
            "backbone.block1.0.attn.q.weight"} <= set(saved)

    # before any compile: the stock loader restores network and optimizer state together
    params_b = _model_params(np.random.default_rng(4))  # different values: everything must come from the file
    opt_b = AdamW(build_param_groups(params_b, base_lr=1e-2, weight_decay=0.05), lr=1e-2)
    not_loaded, _ = ms.load_param_into_net(opt_b, saved, strict_load=True)
    assert not not_loaded
    assert opt_b.num_steps == 2 and opt_b.get_lr() == pytest.approx(5e-3)
    opt_b(grads[2])
    for pa, pb in zip(opt_a.parameters, opt_b.parameters):
        np.testing.assert_array_equal(pa.asnumpy(), pb.asnumpy())

    # after a compiled step: load_state writes in place, so the compiled graph sees the restored state
    params_c = _model_params(np.random.default_rng(2))
    opt_c = AdamW(build_param_groups(params_c, base_lr=1e-2, weight_decay=0.05), lr=1e-2)

    @ms.jit
    def apply(g):
        return opt_c(g)

    apply(ms.mutable(grads[0]))
    saved = ms.load_checkpoint(ckpt)  # afresh: load_param_into_net above made opt_b share these buffers
    for p in opt_c.parameters:
        ops.assign(p, Tensor(saved[p.name].asnumpy()))
    opt_c.load_state(saved)
    assert opt_c.num_steps == 2
    apply(ms.mutable(grads[2]))
    for pa, pc in zip(opt_a.parameters, opt_c.parameters):
        np.testing.assert_array_equal(pa.asnumpy(), pc.asnumpy())
    with pytest.raises(KeyError, match="lacks"):
        opt_c.load_state({k: v for k, v in saved.items() if k != "adamw_step"})


# ---------------------------------------------------------------- schedule
OFFICIAL = dict(base_lr=6e-5, max_iters=160000)
HAND_COMPUTED = {  # 6e-5 * (1 - t/160000) * (1 - (1 - t/1500) * (1 - 1e-6)) below 1500, without the warmup factor after
    0: 6e-11,
    1: 4.005970962525e-08,
    1499: 5.939824978962525e-05,
    1500: 5.94375e-05,
    80000: 3e-05,
    159999: 3.75e-10,
}


@pytest.mark.parametrize("t", sorted(HAND_COMPUTED))
def test_official_schedule_values(t):
    assert lr_at(t, **OFFICIAL) == pytest.approx(HAND_COMPUTED[t], rel=1e-12)
    assert lr_at(t, 6e-4, 160000) == pytest.approx(10 * HAND_COMPUTED[t], rel=1e-12)  # the head keeps its 10x


def test_schedule_table_and_limits():
    schedule = PolySchedule(**OFFICIAL)
    table = np.array([schedule(t) for t in range(160000)])
    for t, value in HAND_COMPUTED.items():
        assert table[t] == pytest.approx(value, rel=1e-12)
    assert lr_at(3, 1.0, 10, warmup=None) == pytest.approx(0.7)
    assert np.all(np.diff(table[1500:]) < 0) and np.all(np.diff(table[:1500]) > 0)
    for bad in (-1, 160000):
        with pytest.raises(ValueError, match="outside"):
            lr_at(bad, **OFFICIAL)
    with pytest.raises(ValueError, match="warmup"):
        PolySchedule.from_config(6e-5, 100, {"warmup": "cosine"})
    with pytest.raises(ValueError, match="unknown keys"):
        PolySchedule.from_config(6e-5, 100, {"warmup_iter": 10})
    assert PolySchedule.from_config(1.0, 10, {"warmup": "none"})(0) == 1.0


def _pytorch_name(name):
    """The NVlabs/PyTorch name of a MindSpore parameter (only norm parameters are renamed)."""
    head, _, leaf = name.rpartition(".")
    return f"{head}.{ {'gamma': 'weight', 'beta': 'bias'}.get(leaf, leaf) }"


def test_groups_on_the_full_b0_match_the_official_pytorch_grouping():
    from segformer.models import build_model

    net = build_model("b0")
    groups = {g.name: g for g in build_param_groups(net, base_lr=6e-5, weight_decay=0.01)}
    assert {k: len(g.params) for k, g in groups.items()} == {"default": 116, "norm": 60, "head": 13}
    official_keys = {"pos_block": {"decay_mult": 0.0}, "norm": {"decay_mult": 0.0}, "head": {"lr_mult": 10.0}}
    for name, group in groups.items():
        for param_name in group.param_names:  # the same rule on the PyTorch names lands in the same group
            assert (match_custom_key(_pytorch_name(param_name), official_keys) or "default") == name, param_name
    assert all(n.startswith("decode_head.") for n in groups["head"].param_names)
    assert all(n.startswith("backbone.") and n.endswith(("gamma", "beta")) for n in groups["norm"].param_names)
    assert "decode_head.linear_fuse.bn.gamma" in groups["head"].param_names
    in_optimizer = {n for g in groups.values() for n in g.param_names}
    assert {n for n, _ in net.parameters_and_names()} - in_optimizer == {
        "decode_head.linear_fuse.bn.moving_mean", "decode_head.linear_fuse.bn.moving_variance"}
