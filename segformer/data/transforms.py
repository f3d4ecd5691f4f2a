"""Training and evaluation transforms: the official SegFormer / mmseg 0.x Cityscapes pipeline in numpy + cv2.

Every transform is a small picklable class called as ``t(image, label, rng) -> (image, label)`` on an
H x W x 3 uint8 RGB image and an H x W uint8 label (train ids, 255 = ignore), with an explicit
``np.random.Generator``: the same generator state gives the same output, and no global RNG is used.
Each step reproduces the arithmetic of the mmseg/mmcv code it mirrors (named in each docstring), so a
sample augmented here matches what mmseg makes from the same random draws.

Train pipeline (local_configs/_base_/datasets/cityscapes_1024x1024_repeat.py, NVlabs/SegFormer):
    RandomRatioResize -> RandomCrop(cat_max_ratio) -> RandomHorizontalFlip -> PhotoMetricDistortion
    -> NormalizePadCHW (normalize, pad to the crop size with image 0 / label 255, HWC -> CHW)
Test-time resizing and normalisation reuse `rescale_size`, `resize_pair` and `NormalizePadCHW`
(see segformer.engine.inference).

Speed: every pixel-wise photometric step and the normalisation are functions of one uint8 value, so
they run as 256-entry look-up tables computed with mmseg's own float32 arithmetic (exact, and several
times faster than float math over the image); consecutive pixel-wise steps compose into one table.
Labels are only ever resized with nearest neighbour, so every output label value is an input value or 255.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np

from segformer.data.cityscapes import IGNORE_INDEX

# ImageNet statistics on RGB 0-255 (img_norm_cfg of every SegFormer config).
MEAN = (123.675, 116.28, 103.53)
STD = (58.395, 57.12, 57.375)



def _check_pair(image: np.ndarray, label: np.ndarray | None) -> None:
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be H x W x 3 uint8 RGB, got shape {image.shape} dtype {image.dtype}")
    if label is not None and (label.ndim != 2 or label.shape != image.shape[:2]):
        raise ValueError(f"label must be H x W matching the image {image.shape[:2]}, got shape {label.shape}")


# ----------------------------------------------------------------------------------------------------
# Resize
# ----------------------------------------------------------------------------------------------------
def rescale_size(width: int, height: int, scale: tuple[int, int]) -> tuple[int, int]:
    """mmcv.rescale_size with a (long, short) bound: the largest keep-ratio size that fits within `scale`.

    scale_factor = min(max(scale) / long_edge, min(scale) / short_edge);
    new size = (int(w * f + 0.5), int(h * f + 0.5)). Returns (new_width, new_height).
    """
    long_bound, short_bound = max(scale), min(scale)
    factor = min(long_bound / max(height, width), short_bound / min(height, width))
    return int(width * float(factor) + 0.5), int(height * float(factor) + 0.5)


def resize_pair(image: np.ndarray, label: np.ndarray | None, size: tuple[int, int]):
    """Resize to size (w, h): image bilinear (cv2.INTER_LINEAR, as mmcv.imresize), label nearest."""
    if (image.shape[1], image.shape[0]) != tuple(size):
        image = cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)
        if label is not None:
            label = cv2.resize(label, size, interpolation=cv2.INTER_NEAREST)
    return image, label


@dataclass(frozen=True)
class RandomRatioResize:
    """mmseg Resize(img_scale=base_scale, ratio_range=ratio_range) with keep_ratio=True.

    ratio = U[low, high) (np.random.random_sample() * (high - low) + low);
    scale = (int(W * ratio), int(H * ratio)); then mmcv.imrescale to fit within that scale.
    """

    base_scale: tuple[int, int] = (2048, 1024)  # (W, H), as mmseg's img_scale
    ratio_range: tuple[float, float] = (0.5, 2.0)

    def __post_init__(self):
        low, high = self.ratio_range
        if not 0 < low <= high:
            raise ValueError(f"ratio_range must satisfy 0 < low <= high, got {self.ratio_range}")
        if len(self.base_scale) != 2 or min(self.base_scale) <= 0:
            raise ValueError(f"base_scale must be (W, H) with positive sides, got {self.base_scale}")

    def sample_scale(self, rng: np.random.Generator) -> tuple[int, int]:
        low, high = self.ratio_range
        ratio = rng.random() * (high - low) + low
        return int(self.base_scale[0] * ratio), int(self.base_scale[1] * ratio)

    def __call__(self, image, label, rng):
        scale = self.sample_scale(rng)
        size = rescale_size(image.shape[1], image.shape[0], scale)
        return resize_pair(image, label, size)


# ----------------------------------------------------------------------------------------------------
# Crop and flip
# ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RandomCrop:
    """mmseg RandomCrop(crop_size=(h, w), cat_max_ratio) exactly.

    A box is drawn (offset_h = randint(0, max(H - h, 0) + 1), then offset_w likewise; a crop larger
    than the image is clipped to it). While cat_max_ratio < 1, up to `max_tries` (10) boxes are checked:
    a box is accepted when its non-ignored pixels hold at least 2 classes and the largest class has
    a share strictly below cat_max_ratio; each rejection draws a new box, and the box drawn after the
    10th rejection (the 11th draw) is used unchecked.
    """

    crop_size: tuple[int, int]  # (h, w)
    cat_max_ratio: float = 0.75
    ignore_index: int = IGNORE_INDEX
    max_tries: int = 10

    def __post_init__(self):
        if len(self.crop_size) != 2 or min(self.crop_size) <= 0:
            raise ValueError(f"crop_size must be (h, w) with positive sides, got {self.crop_size}")

    def draw_box(self, shape: tuple[int, ...], rng: np.random.Generator) -> tuple[int, int, int, int]:
        """(y1, y2, x1, x2) of a random box; y2/x2 may exceed the image (slicing clips)."""
        margin_h = max(shape[0] - self.crop_size[0], 0)
        margin_w = max(shape[1] - self.crop_size[1], 0)
        offset_h = int(rng.integers(0, margin_h + 1))
        offset_w = int(rng.integers(0, margin_w + 1))
        return offset_h, offset_h + self.crop_size[0], offset_w, offset_w + self.crop_size[1]

    def is_acceptable(self, label_crop: np.ndarray) -> bool:
        """mmseg's rule: >= 2 non-ignored classes and max class count / non-ignored count < cat_max_ratio."""
        counts = class_counts(label_crop)
        counts[self.ignore_index] = 0
        present = counts[counts > 0]
        return bool(len(present) > 1 and present.max() / present.sum() < self.cat_max_ratio)

    def choose_box(self, label: np.ndarray, rng: np.random.Generator) -> tuple[int, int, int, int]:
        box = self.draw_box(label.shape, rng)
        if self.cat_max_ratio < 1.0:
            for _ in range(self.max_tries):
                if self.is_acceptable(label[box[0] : box[1], box[2] : box[3]]):
                    break
                box = self.draw_box(label.shape, rng)
        return box

    def __call__(self, image, label, rng):
        y1, y2, x1, x2 = self.choose_box(label, rng)
        return image[y1:y2, x1:x2], label[y1:y2, x1:x2]


def class_counts(label: np.ndarray) -> np.ndarray:
    """Pixel count per uint8 value (length 256). cv2.calcHist is ~10x faster than np.unique here."""
    if label.size == 0:
        return np.zeros(256, np.int64)
    hist = cv2.calcHist([np.ascontiguousarray(label)], [0], None, [256], [0, 256])
    return hist.ravel().astype(np.int64)


@dataclass(frozen=True)
class RandomHorizontalFlip:
    """mmseg RandomFlip(prob): flip image and label together when rng.random() < prob."""

    prob: float = 0.5

    def __call__(self, image, label, rng):
        if rng.random() < self.prob:
            image = cv2.flip(image, 1)
            label = cv2.flip(label, 1)
        return image, label


# ----------------------------------------------------------------------------------------------------
# Photometric distortion
# ----------------------------------------------------------------------------------------------------
_IDENTITY_LUT = np.arange(256, dtype=np.uint8)


def affine_lut(alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
    """mmseg PhotoMetricDistortion.convert as a table: uint8(clip(float32(x) * alpha + beta, 0, 255))."""
    values = np.arange(256, dtype=np.uint8).astype(np.float32) * alpha + beta
    return np.clip(values, 0, 255).astype(np.uint8)


def hue_lut(delta: int) -> np.ndarray:
    """mmseg hue step on OpenCV's 8-bit hue (0..179): (h + delta) % 180."""
    return ((np.arange(256, dtype=np.int64) + delta) % 180).astype(np.uint8)


def _apply_hsv_lut(image: np.ndarray, channel: int, lut: np.ndarray) -> np.ndarray:
    """RGB -> HSV (8-bit, same values as mmcv.bgr2hsv on the BGR image), table on one channel, -> RGB."""
    hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)
    hsv[..., channel] = lut[hsv[..., channel]]  # faster than cv2.LUT with a 3-channel table
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


@dataclass(frozen=True)
class PhotoMetricDistortion:
    """mmseg PhotoMetricDistortion, same steps, probabilities and draw order (uint8 in, uint8 out).

    1. brightness: if randint(2): + U(-32, 32)
    2. mode = randint(2); if mode == 1: contrast: if randint(2): * U(0.5, 1.5)
    3. saturation: if randint(2): HSV, S * U(0.5, 1.5), back to RGB
    4. hue: if randint(2): HSV, H = (H + randint(-18, 18)) % 180, back to RGB (numpy's randint excludes
       the upper bound, so the delta is in [-18, 17], as in mmseg)
    5. if mode == 0: contrast as in 2.
    Each value step clips to [0, 255] and truncates to uint8 (mmseg's convert()). mmseg's docstring says
    "mode 0 = contrast first" but its code does contrast first when mode == 1; we follow the code.
    Saturation and hue each do their own HSV round trip, as mmseg does (the round trip is lossy).
    """

    brightness_delta: int = 32
    contrast_range: tuple[float, float] = (0.5, 1.5)
    saturation_range: tuple[float, float] = (0.5, 1.5)
    hue_delta: int = 18

    def draw(self, rng: np.random.Generator) -> dict:
        """The random decisions, in mmseg's order; None where a step is skipped."""
        params = {"brightness": None, "contrast": None, "saturation": None, "hue": None}
        if rng.integers(2):
            params["brightness"] = rng.uniform(-self.brightness_delta, self.brightness_delta)
        params["contrast_first"] = bool(rng.integers(2) == 1)
        if params["contrast_first"] and rng.integers(2):
            params["contrast"] = rng.uniform(*self.contrast_range)
        if rng.integers(2):
            params["saturation"] = rng.uniform(*self.saturation_range)
        if rng.integers(2):
            params["hue"] = int(rng.integers(-self.hue_delta, self.hue_delta))
        if not params["contrast_first"] and rng.integers(2):
            params["contrast"] = rng.uniform(*self.contrast_range)
        return params

    @staticmethod
    def apply(image: np.ndarray, params: dict) -> np.ndarray:
        """Apply drawn params. Pixel-wise steps between HSV round trips compose into one table
        (exact: each step maps uint8 -> uint8 on its own)."""
        pending = _IDENTITY_LUT
        if params["brightness"] is not None:
            pending = affine_lut(beta=params["brightness"])[pending]
        if params["contrast_first"] and params["contrast"] is not None:
            pending = affine_lut(alpha=params["contrast"])[pending]
        hsv_steps = []
        if params["saturation"] is not None:
            hsv_steps.append((1, affine_lut(alpha=params["saturation"])))
        if params["hue"] is not None:
            hsv_steps.append((0, hue_lut(params["hue"])))
        for channel, lut in hsv_steps:
            if pending is not _IDENTITY_LUT:
                image = cv2.LUT(image, pending)
                pending = _IDENTITY_LUT
            image = _apply_hsv_lut(image, channel, lut)
        if not params["contrast_first"] and params["contrast"] is not None:
            pending = affine_lut(alpha=params["contrast"])[pending]
        if pending is not _IDENTITY_LUT:
            image = cv2.LUT(image, pending)
        return image

    def __call__(self, image, label, rng):
        return self.apply(image, self.draw(rng)), label


# ----------------------------------------------------------------------------------------------------
# Normalize, pad, to CHW
# ----------------------------------------------------------------------------------------------------
def normalize_lut(mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """3 x 256 float32 table equal to mmcv.imnormalize on uint8 values.

    Built by running mmcv's own OpenCV arithmetic (cv2.subtract of the float64 mean, then cv2.multiply
    by the float64 1 / std, on a float32 image) over the 256 values, so the rounding is OpenCV's.
    """
    values = np.repeat(np.arange(256, dtype=np.float32)[None, :, None], 3, axis=2)  # 1 x 256 x 3
    mean64 = np.float64(np.asarray(mean, np.float64).reshape(1, -1))
    stdinv64 = 1 / np.float64(np.asarray(std, np.float64).reshape(1, -1))
    cv2.subtract(values, mean64, values)
    cv2.multiply(values, stdinv64, values)
    return np.ascontiguousarray(values[0].T)


@dataclass(frozen=True)
class NormalizePadCHW:
    """mmseg Normalize (RGB) + Pad(size, pad_val=0, seg_pad_val=255) + DefaultFormatBundle.

    Returns a 3 x H x W float32 image and an H x W int32 label (int32 because MindSpore's
    cross-entropy / gather ops want int32 class indices; mmseg uses int64). With pad_size (h, w), the
    outputs are padded at the bottom/right to exactly that size: image with 0 (after normalisation,
    as mmseg pads after Normalize) and label with 255. pad_size None keeps the input size.
    """

    mean: tuple[float, float, float] = MEAN
    std: tuple[float, float, float] = STD
    pad_size: tuple[int, int] | None = None
    ignore_index: int = IGNORE_INDEX

    def __post_init__(self):
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError(f"mean and std must have 3 values, std positive; got {self.mean}, {self.std}")
        object.__setattr__(self, "_lut", normalize_lut(self.mean, self.std))

    def normalize_chw(self, image: np.ndarray, out_hw: tuple[int, int] | None = None) -> np.ndarray:
        height, width = image.shape[:2]
        out_h, out_w = out_hw or (height, width)
        if out_h < height or out_w < width:
            raise ValueError(f"pad size {(out_h, out_w)} is smaller than the image {(height, width)}")
        out = np.zeros((3, out_h, out_w), np.float32)
        for channel, plane in enumerate(cv2.split(image)):
            if (out_h, out_w) == (height, width):
                cv2.LUT(plane, self._lut[channel], dst=out[channel])
            else:
                out[channel, :height, :width] = cv2.LUT(plane, self._lut[channel])
        return out

    def __call__(self, image, label, rng=None):
        # No shape match required: at evaluation the image may be rescaled while the label is not.
        _check_pair(image, None)
        out_hw = tuple(self.pad_size) if self.pad_size is not None else None
        image_chw = self.normalize_chw(image, out_hw)
        label_out = None
        if label is not None:
            height, width = label.shape
            out_h, out_w = out_hw or (height, width)
            label_out = np.full((out_h, out_w), self.ignore_index, np.int32)
            label_out[:height, :width] = label
        return image_chw, label_out


# ----------------------------------------------------------------------------------------------------
# Composition and factories
# ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Compose:
    """Apply transforms in order; each sees the same generator, so draws follow the pipeline order."""

    transforms: tuple

    def __call__(self, image, label, rng=None):
        _check_pair(image, label)
        for transform in self.transforms:
            image, label = transform(image, label, rng)
        return image, label


def augmentation_from_settings(settings: dict) -> dict:
    """build_train_transform's keyword arguments from a variant's `train` settings (schema names)."""
    keys = ("crop_size", "base_scale", "ratio_range", "cat_max_ratio", "flip_prob", "photometric")
    return {**{key: settings[key] for key in keys}, "ignore_index": settings["loss"]["ignore_index"]}


def build_train_transform(
    *,
    crop_size: tuple[int, int] = (1024, 1024),
    base_scale: tuple[int, int] = (2048, 1024),
    ratio_range: tuple[float, float] = (0.5, 2.0),
    cat_max_ratio: float = 0.75,
    flip_prob: float = 0.5,
    photometric: bool = True,
    mean: Sequence[float] = MEAN,
    std: Sequence[float] = STD,
    ignore_index: int = IGNORE_INDEX,
) -> Compose:
    """The official train pipeline: `(image_u8_rgb, label_u8, rng) -> (image 3xhxw f32, label hxw i32)`
    with (h, w) = crop_size. Defaults are the official Cityscapes 1024x1024 values."""
    steps = [
        RandomRatioResize(tuple(base_scale), tuple(ratio_range)),
        RandomCrop(tuple(crop_size), cat_max_ratio, ignore_index),
        RandomHorizontalFlip(flip_prob),
    ]
    if photometric:
        steps.append(PhotoMetricDistortion())
    steps.append(NormalizePadCHW(tuple(mean), tuple(std), tuple(crop_size), ignore_index))
    return Compose(tuple(steps))
