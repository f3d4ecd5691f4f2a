"""Does this state fit this model? One answer for training's starting point, evaluation and conversion.

A state is a mapping of MindSpore parameter names to arrays or tensors. It fits when every expected
name is there with the expected shape and nothing else is; a state without a decode head (an ImageNet
backbone) is checked against the backbone alone when the caller accepts that. The optimizer's state in
a training checkpoint (`adamw_*`, segformer.engine.optim) is not part of the model.
"""

from __future__ import annotations

from typing import Callable, Iterable, Mapping

OPTIMIZER_STATE_PREFIX = "adamw_"
HEAD_PREFIX = "decode_head."


class CheckpointMismatch(ValueError):
    """A state that does not fit the model; the message names the source and every offending key."""


def without_optimizer_state(state: Mapping) -> dict:
    return {name: value for name, value in state.items() if not name.startswith(OPTIMIZER_STATE_PREFIX)}


def has_head(names: Iterable[str]) -> bool:
    return any(name.startswith(HEAD_PREFIX) for name in names)


def model_shapes(net, *, backbone_only: bool = False) -> dict[str, tuple]:
    """{name: shape} of a built model's parameters (BatchNorm statistics included)."""
    shapes = {name: tuple(param.shape) for name, param in net.parameters_and_names()}
    return {k: v for k, v in shapes.items() if not (backbone_only and k.startswith(HEAD_PREFIX))}


def check_fit(state: Mapping, expected: Mapping[str, tuple], source: str, *, absent: Iterable[str] = (),
              spell: Callable[[str], str] = str) -> None:
    """Raise CheckpointMismatch unless `state` has exactly the `expected` names and shapes, naming every
    missing, unexpected and mis-shaped key. `spell(name)` is how the source writes a name (for messages);
    `absent` adds source keys known to be missing that have no name of their own."""
    def named(key):
        spelled = spell(key)
        return key if spelled == key else f"{key} (source: {spelled})"

    missing = [named(k) for k in sorted(set(expected) - set(state))] + sorted(absent)
    unexpected = sorted(set(state) - set(expected))
    mismatched = [f"{named(k)}: checkpoint {tuple(state[k].shape)}, model {tuple(expected[k])}"
                  for k in sorted(set(state) & set(expected)) if tuple(state[k].shape) != tuple(expected[k])]
    problems = [f"{title} ({len(keys)}): {', '.join(keys)}"
                for title, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched))
                if keys]
    if problems:
        raise CheckpointMismatch(f"{source}: does not fit the model:\n  " + "\n  ".join(problems))


def check_fits_model(state: Mapping, net, source: str, *, head_required: bool) -> None:
    """`state` (optimizer state removed) against a built model: all of it, or, when the state holds no
    decode head and `head_required` is False, the backbone alone (the head keeps its initialisation)."""
    head = has_head(state)
    if head_required and not head:
        raise CheckpointMismatch(f"{source}: holds no decode head (a backbone-only checkpoint?); "
                                 f"a trained model is needed here")
    check_fit(state, model_shapes(net, backbone_only=not head), source)
