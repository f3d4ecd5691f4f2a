"""AdamW as torch.optim.AdamW computes it, with mmcv-style parameter groups, for MindSpore.

The official SegFormer recipe trains with PyTorch's AdamW (bias-corrected moments, eps added after
the square root of the bias-corrected second moment, decoupled decay ``p *= 1 - lr_g * wd_g`` applied
before the moment update) and mmcv's ``paramwise_cfg`` groups: ``decode_head.*`` at 10x the learning
rate (its decay follows the lr, so it is 10x too), every backbone parameter whose name contains
``norm`` without decay. MindSpore's ``nn.AdamWeightDecay`` is a different update (no bias correction,
eps 1e-6 inside the root), so this module has its own optimizer Cell. It still runs MindSpore's fused
``AdamWeightDecay`` kernel, one in-place kernel per parameter, with torch's bias corrections, decay
and eps folded into the kernel's three scalars per group (``AdamW.construct``): the same update to a
few float32 ulps. Written out as a dozen elementwise kernels per parameter, the update was 3551 of the
7507 nodes of b0's compiled train step, a third of b2's step at the demo shape and 17 s of its compile.

Usage in a training loop::

    groups = build_param_groups(net, base_lr=6e-5, weight_decay=0.01)
    print(describe_param_groups(groups))
    optimizer = AdamW(groups, lr=6e-5)
    grad_fn = mindspore.value_and_grad(forward_fn, None, optimizer.parameters)
    for t in range(start_iter, max_iters):
        optimizer.set_lr(schedule(t))          # base lr; group multipliers are applied inside
        loss, grads = grad_fn(images, labels)  # (reduce grads across devices here)
        optimizer(grads)

State for resuming (``optimizer.state_parameters()``): ``adamw_m.<param name>``,
``adamw_v.<param name>``, ``adamw_step`` and ``adamw_lr``; they are ordinary Parameters of the Cell,
so ``mindspore.save_checkpoint(optimizer, path)`` stores them beside the network's weights and
``optimizer.load_state(mindspore.load_checkpoint(path))`` restores them (``load_param_into_net``
works too, but only before a train step is compiled: see ``set_lr``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

import mindspore as ms
from mindspore import Parameter, ParameterTuple, Tensor, nn, ops

# The official paramwise_cfg (NVlabs configs), in its order: custom_keys={'pos_block': decay_mult 0,
# 'norm': decay_mult 0, 'head': lr_mult 10}. mmcv 1.x takes the first key (longest first, ties
# alphabetical) that is a substring of a parameter's name; unmatched parameters (biases included) keep
# base lr and decay. MindSpore names keep the module paths and only rename norm parameters, so a name
# contains 'head' or 'norm' exactly when its PyTorch twin does: the head's BatchNorm
# (decode_head.linear_fuse.bn.gamma/beta) gets lr x10 WITH decay, as in the official run.


def default_custom_keys(head_lr_mult: float = 10.0, norm_decay_mult: float = 0.0) -> Dict[str, Dict[str, float]]:
    """The official recipe's mmcv ``custom_keys`` with the two multipliers as arguments."""
    return {
        "pos_block": {"decay_mult": 0.0},
        "norm": {"decay_mult": float(norm_decay_mult)},
        "head": {"lr_mult": float(head_lr_mult)},
    }


def sorted_custom_keys(custom_keys: Mapping[str, Mapping[str, float]]) -> List[str]:
    """Keys in mmcv's matching order: longest first, equal lengths alphabetically."""
    return sorted(sorted(custom_keys), key=len, reverse=True)


def match_custom_key(name: str, custom_keys: Mapping[str, Mapping[str, float]]) -> Optional[str]:
    """The custom key that decides parameter ``name`` under mmcv's rule, or None (defaults apply)."""
    for key in sorted_custom_keys(custom_keys):
        if key in name:
            return key
    return None


@dataclass(frozen=True)
class ParamGroup:
    """Parameters sharing one lr multiplier and one weight decay (one mmcv custom key, or 'default')."""

    name: str
    lr_mult: float
    decay_mult: float
    lr: float  # base_lr * lr_mult, before the schedule
    weight_decay: float  # base weight decay * decay_mult
    params: Tuple[Parameter, ...]

    @property
    def param_names(self) -> List[str]:
        return [p.name for p in self.params]

    @property
    def num_values(self) -> int:
        return sum(int(math.prod(p.shape)) for p in self.params)


def _trainable_parameters(net) -> List[Parameter]:
    if isinstance(net, nn.Cell):
        return list(net.trainable_params())
    params = list(net)
    for p in params:
        if not isinstance(p, Parameter):
            raise TypeError(f"build_param_groups: expected a Cell or Parameters, got {type(p).__name__}")
    return [p for p in params if p.requires_grad]


def _check_custom_keys(custom_keys: Mapping[str, Mapping[str, float]]) -> None:
    for key, cfg in custom_keys.items():
        unknown = set(cfg) - {"lr_mult", "decay_mult"}
        if not isinstance(key, str) or not key or unknown:
            raise ValueError(
                f"custom_keys[{key!r}] = {cfg!r}: keys must be non-empty strings mapping to "
                f"lr_mult/decay_mult only (unknown: {sorted(unknown)})"
            )


def build_param_groups(
    net,
    base_lr: float,
    weight_decay: float,
    head_lr_mult: float = 10.0,
    norm_decay_mult: float = 0.0,
    custom_keys: Optional[Mapping[str, Mapping[str, float]]] = None,
) -> List[ParamGroup]:
    """Group the trainable parameters of ``net`` (a Cell, or an iterable of Parameters) by mmcv's rule.

    ``custom_keys=None`` means the official keys (``default_custom_keys(head_lr_mult, norm_decay_mult)``);
    an explicit mapping replaces them entirely (``{}``: one group, base lr and decay for everything).
    Returns the non-empty groups in order of first appearance, each parameter in exactly one group.
    """
    if base_lr <= 0 or weight_decay < 0:
        raise ValueError(f"build_param_groups: base_lr must be > 0 and weight_decay >= 0, got {base_lr}, {weight_decay}")
    keys = default_custom_keys(head_lr_mult, norm_decay_mult) if custom_keys is None else dict(custom_keys)
    _check_custom_keys(keys)
    members: Dict[str, List[Parameter]] = {}
    seen = set()
    for param in _trainable_parameters(net):
        if param.name in seen:
            raise ValueError(f"build_param_groups: parameter name {param.name!r} appears twice")
        seen.add(param.name)
        members.setdefault(match_custom_key(param.name, keys) or "default", []).append(param)
    if not members:
        raise ValueError("build_param_groups: the network has no trainable parameters")
    groups = []
    for name, params in members.items():
        cfg = keys.get(name, {})
        lr_mult = float(cfg.get("lr_mult", 1.0))
        decay_mult = float(cfg.get("decay_mult", 1.0))
        groups.append(
            ParamGroup(
                name=name,
                lr_mult=lr_mult,
                decay_mult=decay_mult,
                lr=base_lr * lr_mult,
                weight_decay=weight_decay * decay_mult,
                params=tuple(params),
            )
        )
    return groups


def describe_param_groups(groups: Sequence[ParamGroup]) -> str:
    """A few lines for the training log: per group its size, lr multiplier, lr and weight decay."""
    lines = []
    for g in groups:
        lines.append(
            f"param group {g.name!r}: {len(g.params)} tensors, {g.num_values / 1e6:.3f} M values, "
            f"lr x{g.lr_mult:g} (base {g.lr:.3g}), weight decay {g.weight_decay:g} (x{g.decay_mult:g})"
        )
    return "\n".join(lines)


def bias_correction_table(beta: float, take_sqrt: bool = False) -> np.ndarray:
    """float32 ``1 - beta**t`` (or its square root) for t = 1, 2, ... up to the first t where it rounds to 1.

    torch computes the bias corrections in float64 on the host. In a float32 graph, 1 - beta2**t
    (about 1e-3 in the first steps) loses five digits to cancellation, and MindSpore's CPU exp/expm1
    are only good to a few 1e-6, so the exact values come from this small table instead (17 k entries
    for beta 0.999); every later step uses its last entry, 1.0, which is what float32 gives there anyway.
    """
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"bias_correction_table: beta must be in [0, 1), got {beta}")
    if beta == 0.0:
        return np.ones(1, np.float32)
    # beyond t_max, beta**t < 2**-60: float32(1 - beta**t) is 1.0 with a wide margin
    t_max = int(math.ceil(60 * math.log(2) / -math.log(beta))) + 1
    if t_max > 20_000_000:
        raise ValueError(f"bias_correction_table: beta {beta} too close to 1 ({t_max} table entries)")
    t = np.arange(1, t_max + 1, dtype=np.float64)
    values = -np.expm1(t * math.log(beta))
    values = (np.sqrt(values) if take_sqrt else values).astype(np.float32)
    first_one = int(np.argmax(values == np.float32(1.0)))
    return values[: first_one + 1]


def kernel_moment2_ratio(beta2: float) -> float:
    """The fused kernel's second moment as a multiple of torch's (a constant, a little below 1).

    Both decay v by float32(beta2) each step; torch adds float32(1 - beta2) * g * g (the complement taken
    in double), the kernel float32(1) - float32(beta2) (for 0.999: 0.00099998713, 1.3e-5 smaller). The
    recursion is linear, so the kernel's v is torch's times this constant ratio, from the first step on.
    """
    kernel = np.float32(1.0) - np.float32(beta2)
    return float(kernel) / float(np.float32(1.0 - beta2)) if beta2 > 0.0 else 1.0


_fused_update = ops.MultitypeFuncGraph("fused_update")


@_fused_update.register("Function", "Tensor", "Tensor", "Tensor", "Tensor", "Tensor",
                        "Tensor", "Tensor", "Tensor", "Tensor")
def _fused_update_one(kernel, beta1, beta2, lr, eps, decay, param, m, v, grad):
    """One parameter's whole update as one in-place kernel (MindSpore's AdamWeightDecay)."""
    return kernel(param, m, v, lr, beta1, beta2, eps, decay, ops.cast(grad, ms.float32))


class AdamW(nn.Cell):
    """torch.optim.AdamW (amsgrad off) over ``ParamGroup``s, runnable inside a MindSpore graph.

    ``lr`` is the base learning rate (the schedule's value); group ``g`` steps with ``lr * g.lr_mult``
    and decays with ``g.weight_decay``. Call ``set_lr`` between steps: it changes a Parameter, so a
    compiled train step picks it up without recompiling. ``construct(grads)`` takes the gradients in
    the order of ``self.parameters`` and returns True once every parameter is updated.
    """

    def __init__(self, groups: Sequence[ParamGroup], lr: float, betas: Tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8):
        super().__init__(auto_prefix=False)
        beta1, beta2 = (float(b) for b in betas)
        if not (0.0 <= beta1 < 1.0 and 0.0 <= beta2 < 1.0) or eps < 0 or lr < 0:
            raise ValueError(f"AdamW: need 0 <= betas < 1, eps >= 0, lr >= 0; got betas={betas}, eps={eps}, lr={lr}")
        if not groups:
            raise ValueError("AdamW: no parameter groups")
        self.groups = tuple(groups)
        params = [p for g in self.groups for p in g.params]
        names = [p.name for p in params]
        if len(set(names)) != len(names):
            raise ValueError("AdamW: a parameter appears in more than one group")
        not_fp32 = [p.name for p in params if p.dtype != ms.float32]
        if not_fp32:  # the recipe keeps fp32 master weights; mixed precision casts inside the network
            raise ValueError(f"AdamW: parameters must be float32, these are not: {not_fp32[:5]}")
        self.parameters = ParameterTuple(params)
        self.moments1 = self.parameters.clone(prefix="adamw_m", init="zeros")
        self.moments2 = self.parameters.clone(prefix="adamw_v", init="zeros")
        self.step = Parameter(Tensor(0, ms.int32), name="adamw_step", requires_grad=False)
        self.learning_rate = Parameter(Tensor(lr, ms.float32), name="adamw_lr", requires_grad=False)
        # each group's parameters are a contiguous run of self.parameters: (start, stop, lr_mult, weight_decay)
        bounds = np.cumsum([0] + [len(g.params) for g in self.groups])
        self.group_runs = tuple((int(start), int(stop), g.lr_mult, g.weight_decay)
                                for start, stop, g in zip(bounds[:-1], bounds[1:], self.groups))
        self.beta1 = Tensor(beta1, ms.float32)
        self.beta2 = Tensor(beta2, ms.float32)
        self.eps = float(eps)
        self.moment2_root_ratio = math.sqrt(kernel_moment2_ratio(beta2))
        # exact float32 bias corrections by step (constants, not state): see bias_correction_table
        table1 = bias_correction_table(beta1)
        table2 = bias_correction_table(beta2, take_sqrt=True)
        self.bias_correction1_table = Tensor(table1)
        self.bias_correction2_sqrt_table = Tensor(table2)
        self.last1 = len(table1) - 1
        self.last2 = len(table2) - 1
        self.kernel = ops.AdamWeightDecay()
        self.hyper_map = ops.HyperMap()

    def set_lr(self, lr: float) -> None:
        """Set the base learning rate for the next steps (call from Python, outside the graph).

        Written with ``ops.assign`` into the existing buffer: ``Parameter.set_data`` would swap the
        buffer, and a train step already compiled with ``mindspore.jit`` keeps reading the old one
        (measured with MindSpore 2.10: the lr silently stays at its first value).
        """
        ops.assign(self.learning_rate, Tensor(float(lr), ms.float32))

    def get_lr(self) -> float:
        return float(self.learning_rate.asnumpy())

    def group_lrs(self) -> Dict[str, float]:
        """Current learning rate of every group, for the training log."""
        base = self.get_lr()
        return {g.name: base * g.lr_mult for g in self.groups}

    def state_parameters(self) -> List[Parameter]:
        """Everything a resumed run needs besides the network weights."""
        return [*self.moments1, *self.moments2, self.step, self.learning_rate]

    def load_state(self, param_dict: Mapping[str, object]) -> None:
        """Restore ``state_parameters()`` from a loaded checkpoint (``mindspore.load_checkpoint``).

        Values are written in place (``ops.assign``), so this is safe also after a train step was
        compiled; ``load_param_into_net`` swaps buffers and is only safe before the first compile.
        """
        missing = [p.name for p in self.state_parameters() if p.name not in param_dict]
        if missing:
            raise KeyError(f"AdamW.load_state: checkpoint lacks {len(missing)} optimizer entries, e.g. {missing[:3]}")
        for p in self.state_parameters():
            value = param_dict[p.name]
            value = value if isinstance(value, Tensor) else Tensor(value)
            if tuple(value.shape) != tuple(p.shape):
                raise ValueError(f"AdamW.load_state: {p.name} has shape {tuple(value.shape)} in the checkpoint, "
                                 f"{tuple(p.shape)} here")
            ops.assign(p, ops.cast(value, p.dtype))

    @property
    def num_steps(self) -> int:
        return int(self.step.asnumpy())

    def construct(self, gradients):
        step = ops.assign_add(self.step, ops.ones((), ms.int32))
        bias_correction1 = ops.gather(self.bias_correction1_table, ops.minimum(step - 1, self.last1), 0)
        bias_correction2_sqrt = ops.gather(self.bias_correction2_sqrt_table, ops.minimum(step - 1, self.last2), 0)
        lr = ops.depend(self.learning_rate, step)
        # torch:      p <- p * (1 - lr_g * wd) - lr_g / bc1 * m / (sqrt(v) / sqrt(bc2) + eps)
        # the kernel: p <- p - lr_k * (m / (sqrt(v_k) + eps_k) + decay_k * p), with v_k = ratio * v;
        # the same update with the bias corrections and the ratio folded into three scalars per group
        root = bias_correction2_sqrt * self.moment2_root_ratio
        eps_k = self.eps * root
        done = ()
        for start, stop, lr_mult, weight_decay in self.group_runs:
            lr_k = (lr * lr_mult) * root / bias_correction1
            decay_k = weight_decay * bias_correction1 / root
            update = ops.partial(_fused_update, self.kernel, self.beta1, self.beta2, lr_k, eps_k, decay_k)
            done += self.hyper_map(update, self.parameters[start:stop], self.moments1[start:stop],
                                   self.moments2[start:stop], gradients[start:stop])
        return ops.depend(ops.ones((), ms.bool_), done)
