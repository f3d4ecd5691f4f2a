"""Learning-rate schedule of the official recipe: mmcv 1.x poly decay with linear warmup, per iteration.

mmcv 1.x (``PolyLrUpdaterHook`` with ``by_epoch=False``, ``LrUpdaterHook.before_train_iter``) sets, before
iteration ``t`` (0-based: ``runner.iter`` counts the iterations already done), for every group with
initial lr ``base``::

    regular(t) = (base - min_lr) * (1 - t / max_iters) ** power + min_lr
    lr(t)      = regular(t) * (1 - (1 - t / warmup_iters) * (1 - warmup_ratio))   if t < warmup_iters
               = regular(t)                                                        otherwise

The linear warmup scales the *decayed* lr, not the initial one, so lr(warmup_iters) is
``base * (1 - warmup_iters / max_iters)`` (power 1, min_lr 0), not ``base``.
Official values: base 6e-5, max_iters 160000, power 1.0, min_lr 0, warmup 'linear', 1500 iterations,
ratio 1e-6. The head's 10x is a multiplier of ``base``; with min_lr 0 it is the same as running the
schedule on ``10 * base``, which is how mmcv treats the head group. (With min_lr > 0, mmcv would floor
every group at the same absolute min_lr; ``AdamW`` multiplies the scheduled base lr instead.)

Pure Python / numpy: the training loop calls ``schedule(t)`` before each step and hands the value to
``AdamW.set_lr``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Mapping, Optional


WARMUP_KINDS = (None, "linear")


def _check(max_iters: int, warmup: Optional[str], warmup_iters: int, warmup_ratio: float, power: float) -> None:
    if int(max_iters) != max_iters or max_iters <= 0:
        raise ValueError(f"schedule: max_iters must be a positive integer, got {max_iters!r}")
    if warmup not in WARMUP_KINDS:
        raise ValueError(f"schedule: warmup must be one of {WARMUP_KINDS}, got {warmup!r}")
    if warmup is not None:
        if int(warmup_iters) != warmup_iters or warmup_iters <= 0:
            raise ValueError(f"schedule: warmup_iters must be a positive integer, got {warmup_iters!r}")
        if not 0.0 < warmup_ratio <= 1.0:
            raise ValueError(f"schedule: warmup_ratio must be in (0, 1], got {warmup_ratio!r}")
    if power < 0:
        raise ValueError(f"schedule: power must be >= 0, got {power!r}")


def lr_at(
    t: int,
    base_lr: float,
    max_iters: int,
    *,
    power: float = 1.0,
    min_lr: float = 0.0,
    warmup: Optional[str] = "linear",
    warmup_iters: int = 1500,
    warmup_ratio: float = 1e-6,
) -> float:
    """Learning rate for 0-based iteration ``t`` (0 <= t < max_iters), exactly as mmcv 1.x computes it."""
    _check(max_iters, warmup, warmup_iters, warmup_ratio, power)
    if int(t) != t or not 0 <= t < max_iters:
        raise ValueError(f"schedule: iteration {t!r} outside [0, max_iters={max_iters})")
    regular = (base_lr - min_lr) * (1 - t / max_iters) ** power + min_lr
    if warmup is None or t >= warmup_iters:
        return regular
    k = (1 - t / warmup_iters) * (1 - warmup_ratio)
    return regular * (1 - k)


@dataclass(frozen=True)
class PolySchedule:
    """The schedule's settings in one object: ``schedule(t)`` is ``lr_at(t, ...)``."""

    base_lr: float
    max_iters: int
    power: float = 1.0
    min_lr: float = 0.0
    warmup: Optional[str] = "linear"
    warmup_iters: int = 1500
    warmup_ratio: float = 1e-6

    def __post_init__(self):
        _check(self.max_iters, self.warmup, self.warmup_iters, self.warmup_ratio, self.power)

    def _kwargs(self):
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("base_lr", "max_iters")}

    def __call__(self, t: int) -> float:
        return lr_at(t, self.base_lr, self.max_iters, **self._kwargs())

    @classmethod
    def from_config(cls, base_lr: float, max_iters: int, cfg: Mapping[str, Any]) -> "PolySchedule":
        """From a config mapping with keys power, min_lr, warmup ('linear' or none), warmup_iters, warmup_ratio."""
        known = {f.name for f in fields(cls)} - {"base_lr", "max_iters"}
        unknown = set(cfg) - known
        if unknown:
            raise ValueError(f"schedule config: unknown keys {sorted(unknown)} (known: {sorted(known)})")
        kwargs = dict(cfg)
        if isinstance(kwargs.get("warmup"), str) and kwargs["warmup"].lower() in ("none", "null", ""):
            kwargs["warmup"] = None
        return cls(base_lr=base_lr, max_iters=max_iters, **kwargs)
