"""Test-time inference settings and the sliding-window grid: plain Python, no MindSpore, so that the
workflow (rules/common.smk) and light scripts can describe and validate them cheaply. The inference
itself is segformer.engine.inference.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

MODES = ("whole", "slide")


@dataclass(frozen=True)
class InferenceSettings:
    """How to predict one image. Defaults: whole image at its own size, single scale, no flip."""

    mode: str = "whole"
    scale: tuple[int, int] | None = None  # (W, H) test resize bound; official Cityscapes (2048, 1024)
    crop_size: tuple[int, int] = (1024, 1024)  # (h, w) of a slide window
    stride: tuple[int, int] = (768, 768)  # (h, w) between slide windows
    ratios: tuple[float, ...] = (1.0,)
    flip: bool = False

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"inference mode must be one of {MODES}, got {self.mode!r}")
        if self.scale is not None and (len(self.scale) != 2 or min(self.scale) <= 0):
            raise ValueError(f"inference scale must be (W, H) with positive sides, got {self.scale}")
        for name in ("crop_size", "stride"):
            value = getattr(self, name)
            if len(value) != 2 or min(value) <= 0:
                raise ValueError(f"inference {name} must be (h, w) with positive sides, got {value}")
        if not self.ratios or min(self.ratios) <= 0:
            raise ValueError(f"inference ratios must be positive numbers, got {self.ratios}")

    @classmethod
    def from_config(cls, section: dict | None) -> "InferenceSettings":
        """From the config's `evaluate` section (lists become tuples; unknown keys are refused)."""
        section = dict(section or {})
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(section) - known)
        if unknown:
            raise ValueError(f"unknown inference setting(s) {unknown}; known: {sorted(known)}")
        for key in ("scale", "crop_size", "stride", "ratios"):
            if section.get(key) is not None:
                section[key] = tuple(section[key])
        return cls(**section)

    @property
    def averages_probabilities(self) -> bool:
        return len(self.ratios) > 1 or self.flip

    def describe(self) -> str:
        """One line for logs and the results table, e.g. 'slide 1024x1024 stride 768x768, single scale'."""
        how = "whole image" if self.mode == "whole" else (
            f"slide {self.crop_size[0]}x{self.crop_size[1]} stride {self.stride[0]}x{self.stride[1]}")
        if self.scale is not None:
            how += f" at {self.scale[0]}x{self.scale[1]}"
        if not self.averages_probabilities:
            return how + ", single scale"
        ratios = ", ".join(f"{r:g}" for r in self.ratios)
        return how + f", scales x[{ratios}]" + (" with flip" if self.flip else "")


def window_boxes(height: int, width: int, crop: Sequence[int], stride: Sequence[int]) -> list[tuple[int, int, int, int]]:
    """mmseg slide_inference's windows (y1, y2, x1, x2): a grid every `stride`, the last ones pushed back
    inside the image; an image smaller than the crop is one window of its own size."""
    (crop_h, crop_w), (stride_h, stride_w) = crop, stride
    rows = max(height - crop_h + stride_h - 1, 0) // stride_h + 1
    cols = max(width - crop_w + stride_w - 1, 0) // stride_w + 1
    boxes = []
    for row in range(rows):
        for col in range(cols):
            y2 = min(row * stride_h + crop_h, height)
            x2 = min(col * stride_w + crop_w, width)
            boxes.append((max(y2 - crop_h, 0), y2, max(x2 - crop_w, 0), x2))
    return boxes
