"""The photo of a scene: each object painted with its class's colour and texture, then camera effects
(lighting, blur, noise) for the whole frame."""

from __future__ import annotations

import cv2
import numpy as np
from PIL import Image, ImageDraw

from segformer.demo.appearance import TEXTURES, object_colour, pattern_shade, smooth_noise
from segformer.demo.classes import base_label


def object_mask_ids(objects, width, height) -> np.ndarray:
    """H x W int32: 1 + index of the object visible at each pixel (0: none), drawn like the labels."""
    canvas = Image.new("I", (width, height), 0)
    drawer = ImageDraw.Draw(canvas)
    for index, entry in enumerate(objects):
        if not entry.get("deleted"):
            drawer.polygon([tuple(point) for point in entry["polygon"]], fill=index + 1)
    return np.asarray(canvas)


def render_image(rng, objects, width, height) -> np.ndarray:
    """H x W x 3 uint8 RGB photo of the objects."""
    ids = object_mask_ids(objects, width, height)
    image = np.zeros((height, width, 3), np.float32)
    fine = rng.standard_normal((height, width)).astype(np.float32)
    coarse = smooth_noise(rng, height, width, 6)
    for index, entry in enumerate(objects):
        if entry.get("deleted"):
            continue
        name = base_label(entry["label"])
        pattern, fine_amp, coarse_amp = TEXTURES[name]
        colour = object_colour(rng, name)
        points = np.array(entry["polygon"], np.float32)
        bx0, by0 = points.min(axis=0)
        bx1, by1 = points.max(axis=0)
        x0, y0 = max(0, int(bx0)), max(0, int(by0))
        x1, y1 = min(width, int(bx1) + 2), min(height, int(by1) + 2)
        if x0 >= x1 or y0 >= y1:
            continue
        mask = ids[y0:y1, x0:x1] == index + 1
        if not mask.any():
            continue
        ys, xs = np.mgrid[y0:y1, x0:x1]
        u = (xs - bx0) / max(1.0, bx1 - bx0)
        v = (ys - by0) / max(1.0, by1 - by0)
        shade = pattern_shade(rng, pattern, u, v, xs, ys, colour)
        shade = shade + (fine[y0:y1, x0:x1] * fine_amp + coarse[y0:y1, x0:x1] * coarse_amp)[..., None]
        image[y0:y1, x0:x1][mask] = shade[mask]
    return finish_photo(rng, image)


def finish_photo(rng, image: np.ndarray) -> np.ndarray:
    """Camera effects for the whole frame: exposure, a lighting gradient, soft shadows, blur, sensor noise."""
    height, width = image.shape[:2]
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    # Moderate on purpose: training adds its own photometric distortion on top.
    light = 1.0 + rng.uniform(-0.12, 0.12) * (xs / width - 0.5) + rng.uniform(-0.1, 0.1) * (ys / height - 0.5)
    light = light + 0.04 * smooth_noise(rng, height, width, max(8, width // 8))
    image = image * (light * rng.uniform(0.9, 1.08))[..., None] + rng.uniform(-6, 6, 3)
    image = image * rng.uniform(0.96, 1.04, 3)  # white balance
    image = cv2.GaussianBlur(image, (3, 3), 0.6)
    image = image + rng.normal(0, 3, image.shape)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)

