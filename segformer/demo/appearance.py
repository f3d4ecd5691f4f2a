"""How each class looks: a colour family and a texture per class, and smooth noise.

One colour family per train class, chosen so that classes stay apart even under the training's hue,
saturation and brightness jitter (cars blue, city buses green, trams red, trucks white, pedestrians in
purple, riders in high-vis orange, yellow signs, silver poles, black traffic-light housings, pink
motorcycles, cyan bicycles): a b0 trained from scratch for a few hundred iterations learns every class,
small ones included, while texture, lighting and noise keep it a photo.
"""

from __future__ import annotations

import cv2
import numpy as np

PALETTES = {
    "sky": [(120, 170, 225), (150, 190, 232), (172, 196, 226)],
    "road": [(84, 84, 88), (94, 92, 90), (74, 76, 82)],
    "sidewalk": [(172, 150, 152), (160, 146, 150), (182, 160, 150)],
    "building": [(196, 182, 164), (212, 202, 186), (178, 164, 150), (190, 178, 172), (164, 152, 140), (204, 194, 178)],
    "wall": [(120, 124, 132), (112, 116, 126), (128, 132, 138)],
    "fence": [(110, 74, 40), (96, 64, 36), (124, 84, 46)],
    "pole": [(188, 192, 204), (176, 182, 194), (198, 200, 208)],
    "traffic light": [(24, 24, 22), (30, 30, 28)],
    "traffic sign": [(248, 204, 24), (240, 196, 16), (252, 214, 40)],
    "vegetation": [(50, 104, 36), (62, 118, 44), (42, 90, 32)],
    "terrain": [(150, 170, 66), (160, 178, 76), (142, 160, 60)],
    "person": [(150, 52, 190), (134, 44, 172), (166, 72, 204), (120, 40, 160)],
    "rider": [(246, 128, 20), (240, 110, 24), (250, 146, 36)],
    "car": [(48, 84, 196), (72, 116, 214), (40, 74, 180), (96, 136, 220)],
    "truck": [(232, 232, 226), (218, 222, 226), (236, 230, 214)],
    "bus": [(40, 150, 70), (30, 138, 60), (56, 162, 84)],
    "train": [(196, 32, 40), (176, 26, 34), (210, 48, 52)],
    "motorcycle": [(222, 44, 150), (200, 36, 136), (232, 70, 166)],
    "bicycle": [(20, 160, 140), (16, 146, 128), (36, 174, 152)],
    "ego vehicle": [(26, 26, 32), (42, 42, 52)],
    "license plate": [(236, 236, 230), (232, 202, 42)],
    "static": [(122, 102, 82), (102, 102, 102)],
    "dynamic": [(142, 92, 42), (92, 62, 122)],
    "ground": [(122, 102, 82)],
    "parking": [(132, 116, 116)],
    "rail track": [(102, 82, 62)],
    "guard rail": [(172, 172, 178)],
    "polegroup": [(58, 64, 80), (50, 56, 72)],
}
# pattern, fine-noise amplitude, coarse-noise amplitude
TEXTURES = {
    "sky": ("vertical_gradient", 2, 6), "road": ("plain", 7, 10), "sidewalk": ("tiles", 6, 8),
    "building": ("windows", 6, 10), "wall": ("blocks", 5, 6), "fence": ("lattice", 6, 6),
    "pole": ("plain", 4, 3), "polegroup": ("plain", 4, 3), "traffic light": ("lamps", 4, 2),
    "traffic sign": ("sign", 4, 2), "vegetation": ("foliage", 14, 26), "terrain": ("plain", 12, 14),
    "person": ("clothes", 6, 4), "rider": ("clothes", 6, 4), "car": ("vehicle", 5, 4), "truck": ("vehicle", 5, 4),
    "bus": ("window_row", 5, 4), "train": ("window_row", 5, 4), "motorcycle": ("plain", 6, 4),
    "bicycle": ("plain", 6, 4), "ego vehicle": ("vertical_gradient", 3, 4), "license plate": ("plain", 3, 1),
    "static": ("plain", 6, 6), "dynamic": ("plain", 6, 6), "ground": ("plain", 10, 12), "parking": ("tiles", 6, 8),
    "rail track": ("lattice", 6, 6), "guard rail": ("plain", 4, 4),
}


def object_colour(rng, name):
    palette = PALETTES[name]
    colour = np.array(palette[rng.integers(len(palette))], np.float32)
    return np.clip(colour + rng.normal(0, 6, 3), 0, 255)


def pattern_shade(rng, pattern, u, v, xs, ys, colour):
    """Per-pixel colour (h x w x 3) of a pattern; u, v are 0..1 across the object's bounding box."""
    shade = np.ones_like(u)
    if pattern == "vertical_gradient":
        shade = 0.85 + 0.3 * v
    elif pattern == "tiles":
        period = rng.integers(5, 9)
        shade = np.where((xs % period == 0) | (ys % period == 0), 0.8, 1.0)
    elif pattern == "windows":
        nx, ny = rng.integers(3, 9), rng.integers(3, 8)
        win = ((u * nx) % 1 > 0.3) & ((u * nx) % 1 < 0.75) & ((v * ny) % 1 > 0.3) & ((v * ny) % 1 < 0.75)
        shade = np.where(win, rng.uniform(0.35, 0.6), 1.0)
    elif pattern == "blocks":  # concrete blocks: horizontal joints, staggered vertical ones
        row = ys // 4
        shade = np.where((ys % 4 == 0) | ((xs + 4 * (row % 2)) % 8 == 0), 0.7, 1.0)
    elif pattern == "lattice":
        period = rng.integers(3, 6)
        shade = np.where(((xs + ys) % period == 0) | ((xs - ys) % period == 0), 0.55, 1.0)
    elif pattern == "foliage":
        shade = 0.75 + 0.5 * rng.uniform(size=u.shape) ** 2
    elif pattern == "lamps":
        lit = rng.integers(3)
        lamp = np.array([(230, 40, 30), (240, 180, 30), (40, 220, 90)][lit], np.float32)
        centre_v = (lit + 0.5) / 3
        on = ((u - 0.5) ** 2 * 4 + ((v - centre_v) * 3) ** 2 * 4) < 0.6
        out = np.where(on[..., None], lamp, colour)
        return out
    elif pattern == "sign":
        border = np.maximum(np.abs(u - 0.5), np.abs(v - 0.5)) > 0.36
        return np.where(border[..., None], np.array([240, 240, 240], np.float32), colour)
    elif pattern == "clothes":
        trousers = colour * rng.uniform(0.35, 0.55)  # a darker shade of the class's colour family
        skin = np.array((225, 180, 150), np.float32) * rng.uniform(0.6, 1.05)
        out = np.where((v > 0.58)[..., None], trousers, colour)
        return np.where((v < 0.15)[..., None], skin, out)
    elif pattern == "vehicle":
        glass = (v > 0.08) & (v < 0.42) & (u > 0.15) & (u < 0.85)
        wheels = (v > 0.82) & ((u < 0.25) | (u > 0.75))
        shade = np.where(glass, 0.55, np.where(wheels, 0.3, 1.0))
    elif pattern == "window_row":
        n = rng.integers(4, 10)
        win = (v > 0.15) & (v < 0.5) & ((u * n) % 1 > 0.15) & ((u * n) % 1 < 0.85)
        shade = np.where(win, 0.3, 1.0)
    return colour * shade[..., None]


def smooth_noise(rng, height, width, cell):
    """Zero-mean, unit-ish noise varying over about `cell` pixels."""
    small = rng.standard_normal((max(2, height // cell + 2), max(2, width // cell + 2))).astype(np.float32)
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)

