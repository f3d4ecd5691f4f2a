"""A synthetic street-scene dataset in exact Cityscapes layout, so the workflow runs without downloads.

Each frame is first a list of labelled polygons (the `*_gtFine_polygons.json`, the single source of
truth); the photo is rendered from those polygons and `*_gtFine_labelIds.png` /
`*_gtFine_instanceIds.png` are drawn from the json by cityscapesscripts itself. Scenes follow a
street in perspective: sky, buildings, road and sidewalks meeting at a vanishing point, terrain,
trees, walls, fences, poles with traffic lights and signs, vehicles, persons and riders, plus group
labels (cargroup, persongroup, bicyclegroup), void labels (ego vehicle, static, dynamic, ground,
parking, rail track, guard rail, polegroup), license plates and deleted objects. Each object gets a
colour from its class's own colour family (little overlap between classes) with per-object variation
and a class texture (windows, tiles, foliage, ...), and the frame gets a mild lighting gradient,
shading noise, blur and sensor noise. The scenes are dense and the small classes (poles, lights,
signs, persons, two-wheelers) large enough for SegFormer's 1/4-resolution output, so that a b0
trained from scratch for 300 iterations learns all 19 classes (val mIoU about 0.59). Every train
class appears in every split: each frame features a rotating share of the 15 classes that are not
in every scene, and a frame whose features ended up hidden is drawn again from the next random state.

Everything follows from the seed (frame by frame, so more frames keep the first ones unchanged); the
dataset is built in a temporary sibling folder and renamed into place at the end.
"""

from __future__ import annotations

import json
import logging
import math
import os
import secrets
import shutil
import tempfile
from pathlib import Path

import cv2
import numpy as np
from cityscapesscripts.helpers.annotation import Annotation
from cityscapesscripts.helpers.labels import labels as CITYSCAPES_LABELS
from cityscapesscripts.helpers.labels import name2label
from cityscapesscripts.preparation.json2instanceImg import createInstanceImage
from cityscapesscripts.preparation.json2labelImg import createLabelImage
from PIL import Image, ImageDraw

from segformer.data.cityscapes import IMAGE_SUFFIX, INSTANCE_IDS_SUFFIX, LABEL_IDS_SUFFIX, POLYGONS_SUFFIX
from segformer.io import write_json, write_png

log = logging.getLogger(__name__)

MANIFEST_NAME = "demo_manifest.json"
DEFAULT_CITIES = {"train": ("aachen", "bremen", "zurich"), "val": ("frankfurt", "lindau", "munster")}
TRAIN_CLASSES = tuple(
    label.name for label in sorted(CITYSCAPES_LABELS, key=lambda label: label.trainId) if 0 <= label.trainId < 255
)
# In every scene by construction; the other 15 are scheduled as "featured" classes.
ALWAYS_PRESENT = ("road", "sidewalk", "building", "sky")
FEATURED_CLASSES = tuple(name for name in TRAIN_CLASSES if name not in ALWAYS_PRESENT)
# label id -> train id, to check which train classes a drawn labelIds image holds.
LABEL_ID_TO_TRAIN_ID = np.full(256, 255, np.uint8)
for _label in CITYSCAPES_LABELS:
    if _label.id >= 0:
        LABEL_ID_TO_TRAIN_ID[_label.id] = _label.trainId
MAX_SCENE_ATTEMPTS = 50
# Featured classes per frame: as many as fit in one small frame, so that every class is frequent
# enough to be learnt quickly; it also sets the fewest frames per split.
MAX_FEATURED_PER_FRAME = 4
MIN_FRAMES_PER_SPLIT = math.ceil(len(FEATURED_CLASSES) / MAX_FEATURED_PER_FRAME)


# ----------------------------------------------------------------------------------------------
# Scene: a list of Cityscapes objects {"label", "polygon", ("deleted")} in drawing order.
# ----------------------------------------------------------------------------------------------


def rect(x0, y0, x1, y1):
    return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]


def ellipse(cx, cy, rx, ry, n=14, rng=None, roughness=0.0):
    points = []
    for i in range(n):
        angle = 2 * math.pi * i / n
        r = 1.0 + (rng.uniform(-roughness, roughness) if rng is not None else 0.0)
        points.append((cx + rx * r * math.cos(angle), cy + ry * r * math.sin(angle)))
    return points


def scaled(shape, x, y_bottom, w, h):
    """Place a unit shape (x in [-0.5, 0.5] from the centre, y in [0, 1] from the top) at a foot point."""
    return [(x + u * w, y_bottom - h + v * h) for u, v in shape]


PERSON = [(-0.1, 0), (0.1, 0), (0.12, 0.12), (0.05, 0.16), (0.3, 0.2), (0.36, 0.55), (0.22, 0.55), (0.2, 0.35),
          (0.18, 0.6), (0.22, 1.0), (0.05, 1.0), (0, 0.65), (-0.05, 1.0), (-0.22, 1.0), (-0.18, 0.6), (-0.2, 0.35),
          (-0.22, 0.55), (-0.36, 0.55), (-0.3, 0.2), (-0.05, 0.16), (-0.12, 0.12)]
RIDER = [(-0.1, 0), (0.1, 0), (0.13, 0.14), (0.05, 0.2), (0.32, 0.3), (0.45, 0.55), (0.3, 0.58), (0.2, 0.45),
         (0.25, 0.75), (0.35, 1.0), (0.15, 1.0), (0.0, 0.8), (-0.25, 0.8), (-0.3, 0.5), (-0.25, 0.22), (-0.05, 0.18),
         (-0.13, 0.13)]
CAR = [(-0.5, 1), (-0.5, 0.45), (-0.32, 0.38), (-0.22, 0), (0.24, 0), (0.34, 0.38), (0.5, 0.45), (0.5, 1)]
TRUCK = [(-0.5, 1), (-0.5, 0), (0.22, 0), (0.22, 0.3), (0.42, 0.32), (0.5, 0.6), (0.5, 1)]
BUS = [(-0.5, 1), (-0.5, 0.04), (-0.46, 0), (0.46, 0), (0.5, 0.04), (0.5, 1)]
TRAIN = [(-0.5, 1), (-0.5, 0.12), (-0.42, 0.02), (-0.1, 0.02), (-0.08, 0), (0.08, 0), (0.1, 0.02), (0.42, 0.02),
         (0.5, 0.12), (0.5, 1)]
BICYCLE = [(-0.5, 0.55), (-0.35, 1), (-0.15, 0.55), (0.15, 0.5), (0.35, 1), (0.5, 0.55), (0.28, 0.1), (0.35, 0),
           (0.2, 0), (0.1, 0.35), (-0.2, 0.3), (-0.25, 0.1)]
MOTORCYCLE = [(-0.5, 0.6), (-0.38, 1), (-0.2, 0.7), (0.2, 0.7), (0.38, 1), (0.5, 0.6), (0.4, 0.3), (0.3, 0),
              (0.15, 0.05), (0.1, 0.3), (-0.3, 0.25), (-0.45, 0.35)]


class Street:
    """Perspective frame of one scene: horizon, vanishing point and the ground strips along the street."""

    def __init__(self, rng, width, height):
        self.width, self.height = width, height
        self.horizon = height * rng.uniform(0.36, 0.5)
        self.vx = width * rng.uniform(0.35, 0.65)
        # x where each strip boundary line (from the vanishing point) meets the bottom row.
        road_half = width * rng.uniform(0.5, 0.85)
        centre = self.vx + width * rng.uniform(-0.15, 0.15)
        self.road = (centre - road_half, centre + road_half)
        self.walk = (self.road[0] - width * rng.uniform(0.4, 1.2), self.road[1] + width * rng.uniform(0.4, 1.2))

    def depth(self, y):
        """0 at the horizon, 1 at the bottom row: the size factor of an object standing at row y."""
        return max(0.0, (y - self.horizon) / (self.height - self.horizon))

    def x_on(self, bottom_x, y):
        """x of the boundary line ending at bottom_x, at row y."""
        return self.vx + (bottom_x - self.vx) * self.depth(y)

    def visible_depth(self, bottom_x):
        """The largest depth at which the boundary line ending at bottom_x is still inside the frame."""
        if 0 <= bottom_x <= self.width:
            return 1.0
        edge = 0.0 if bottom_x < 0 else self.width
        return (edge - self.vx) / (bottom_x - self.vx)

    def wedge(self, bottom_x0, bottom_x1):
        """The ground between two boundary lines, running past the bottom of the image."""
        depth_below = (self.height * 1.05 - self.horizon) / (self.height - self.horizon)
        return [(self.vx, self.horizon), (self.vx + (bottom_x1 - self.vx) * depth_below, self.height * 1.05),
                (self.vx + (bottom_x0 - self.vx) * depth_below, self.height * 1.05)]


def obj(label, polygon, deleted=False):
    entry = {"label": label, "polygon": [[int(round(x)), int(round(y))] for x, y in polygon]}
    if deleted:
        entry["deleted"] = 1
    return entry


def background(rng, street):
    """Sky, buildings, distant trees and the ground strips (road, sidewalks, terrain) in back-to-front order."""
    W, H, yh, vx = street.width, street.height, street.horizon, street.vx
    objects = [obj("sky", rect(-4, -4, W + 4, yh + 2))]
    for side, (x_near, x_far) in (("left", (-0.05 * W, vx - W * rng.uniform(0.04, 0.12))),
                                  ("right", (W * 1.05, vx + W * rng.uniform(0.04, 0.12)))):
        edges = np.sort(rng.uniform(0, 1, rng.integers(1, 4)))
        cuts = [x_near] + [x_near + (x_far - x_near) * e for e in edges] + [x_far]
        for x0, x1 in zip(cuts[:-1], cuts[1:]):
            if abs(x1 - x0) < 2:
                continue
            top0 = yh * (1 - rng.uniform(0.55, 0.95) * min(1.0, abs(x0 - vx) / (0.5 * W) + 0.25))
            top1 = yh * (1 - rng.uniform(0.55, 0.95) * min(1.0, abs(x1 - vx) / (0.5 * W) + 0.25))
            polygon = [(x0, yh + 3), (x0, top0), (x1, top1), (x1, yh + 3)]
            if rng.uniform() < 0.4:  # a gable or a roof box
                xm = (x0 + x1) / 2
                ridge = min(top0, top1) - abs(x1 - x0) * 0.15
                polygon = [(x0, yh + 3), (x0, top0), (xm, ridge), (x1, top1), (x1, yh + 3)]
            objects.append(obj("building", polygon))
    if rng.uniform() < 0.3:  # a tree line on the horizon
        x = vx + W * rng.uniform(-0.2, 0.1)
        objects.append(obj("vegetation", ellipse(x, yh - H * 0.03, W * 0.12, H * 0.06, 16, rng, 0.25)))
    left_outer = "terrain" if rng.uniform() < 0.3 else "sidewalk"
    right_outer = "terrain" if rng.uniform() < 0.3 else "sidewalk"
    far = W * 12
    objects.append(obj(left_outer, street.wedge(street.vx - far, street.walk[0])))
    objects.append(obj(right_outer, street.wedge(street.walk[1], street.vx + far)))
    objects.append(obj("sidewalk", street.wedge(street.walk[0], street.road[0])))
    objects.append(obj("sidewalk", street.wedge(street.road[1], street.walk[1])))
    objects.append(obj("road", street.wedge(*street.road)))
    if rng.uniform() < 0.3:  # a parking bay or a ground patch beside the road
        y0, y1 = sorted(rng.uniform(yh + 0.3 * (H - yh), H * 0.95, 2))
        inset = (street.road[1] - street.road[0]) * 0.12
        label = "parking" if rng.uniform() < 0.5 else "ground"
        objects.append(obj(label, [(street.x_on(street.road[0], y0), y0), (street.x_on(street.road[0] + inset, y0), y0),
                                   (street.x_on(street.road[0] + inset, y1), y1), (street.x_on(street.road[0], y1), y1)]))
    return objects


def ground_point(rng, street, strip, near=(0.15, 0.95)):
    """A random foot point (x, y, depth) inside the frame on a strip given as its bottom x range, with depth in `near`.

    Strips run out of the frame sideways; depths where the strip's visible part is too narrow are
    drawn again (if none fits, the last depth is kept with the strip's middle clamped into the frame).
    """
    margin = 0.04 * street.width
    for _ in range(20):
        depth = rng.uniform(*near)
        y = street.horizon + depth * (street.height - street.horizon)
        lo = max(street.x_on(min(strip), y), margin)
        hi = min(street.x_on(max(strip), y), street.width - margin)
        if hi - lo > margin:
            return rng.uniform(lo, hi), y, depth
    return float(np.clip(street.x_on(sum(strip) / 2, y), margin, street.width - margin)), y, depth


def sidewalk_strip(rng, street):
    return (street.walk[0], street.road[0]) if rng.uniform() < 0.5 else (street.road[1], street.walk[1])


# Each placer returns (foot row, objects in drawing order) for one instance of a scene element;
# the foot row sorts elements far to near.


def place_vehicle(rng, street, kind):
    W = street.width
    x, y, d = ground_point(rng, street, (street.road[0] * 0.8 + street.road[1] * 0.2,
                                         street.road[0] * 0.2 + street.road[1] * 0.8), (0.3, 0.95))
    shape, w_rel, aspect = {"car": (CAR, 0.34, 0.55), "truck": (TRUCK, 0.42, 0.75),
                            "bus": (BUS, 0.5, 0.7), "train": (TRAIN, 0.75, 0.45)}[kind]
    w = max(10 * W / 256, d * W * w_rel * rng.uniform(0.85, 1.15))
    h = max(6 * W / 256, w * aspect * rng.uniform(0.9, 1.1))
    out = []
    if kind == "train":  # trams run on rails set into the road
        out.append(obj("rail track", rect(x - w * 0.55, y - h * 0.04, x + w * 0.55, y + h * 0.08)))
    out.append(obj(kind, scaled(shape, x, y, w, h)))
    if kind == "car" and rng.uniform() < 0.5:
        out.append(obj("license plate", rect(x - w * 0.1, y - h * 0.3, x + w * 0.1, y - h * 0.18)))
    return y, out


def place_person(rng, street, kind):
    """One to three pedestrians walking side by side (an instance each)."""
    x, y, d = ground_point(rng, street, sidewalk_strip(rng, street), (0.3, 0.95))
    out = []
    for i in range(rng.integers(1, 4)):
        h = max(12 * street.width / 256, d * street.height * 0.62 * rng.uniform(0.88, 1.1))
        out.append(obj("person", scaled(PERSON, x + i * h * 0.42 * rng.uniform(0.9, 1.3), y, h * 0.45, h)))
    return y, out


def place_two_wheeler(rng, street, kind):
    """A bicycle or motorcycle, with a rider always for kind 'rider' and sometimes otherwise."""
    vehicle = kind if kind != "rider" else ("bicycle" if rng.uniform() < 0.6 else "motorcycle")
    strip = street.road if vehicle == "motorcycle" else sidewalk_strip(rng, street)
    x, y, d = ground_point(rng, street, strip, (0.4, 0.95))
    w = max(12 * street.width / 256, d * street.width * (0.22 if vehicle == "bicycle" else 0.26) * rng.uniform(0.9, 1.1))
    h = w * 0.6
    out = [obj(vehicle, scaled(BICYCLE if vehicle == "bicycle" else MOTORCYCLE, x, y, w, h))]
    if kind == "rider" or rng.uniform() < 0.5:
        out.append(obj("rider", scaled(RIDER, x - w * 0.05, y - h * 0.6, h * 0.9, h * 2.0)))
    return y, out


def place_pole(rng, street, kind):
    """A row of one to three street poles along a sidewalk, in perspective; the nearest one carries
    what `kind` names (a traffic light and/or a sign), the others a light or a sign by chance."""
    x, y, d = ground_point(rng, street, sidewalk_strip(rng, street), (0.5, 0.95))
    bottom_x = street.vx + (x - street.vx) / d  # the line from the vanishing point through the foot point
    out = []
    for i in reversed(range(rng.integers(1, 4))):  # far to near
        depth = d * 0.7 ** i
        if depth < 0.25:
            continue
        row = street.horizon + depth * (street.height - street.horizon)
        out += one_pole(rng, street, street.x_on(bottom_x, row), row, depth, kind if i == 0 else "")
    return y, out


def one_pole(rng, street, x, y, d, kind):
    """A pole standing at (x, y) at depth d, with a traffic light and/or a sign."""
    h = max(16 * street.width / 256, d * street.height * rng.uniform(0.6, 0.9))
    # Thick enough (>= 5 px) to survive the training's downscaling and SegFormer's 1/4-resolution output.
    pw = max(5.0, d * street.width * 0.028)
    out = [obj("pole", rect(x - pw / 2, y - h, x + pw / 2, y))]
    if kind == "traffic light" or (kind != "traffic sign" and rng.uniform() < 0.45):
        lw = max(9.0, d * street.width * 0.06)
        out.append(obj("traffic light", rect(x - lw / 2, y - h - lw * 2.6, x + lw / 2, y - h + 1)))
    if kind == "traffic sign" or rng.uniform() < 0.5:
        r = max(8.0, d * street.width * 0.055)
        cy = y - h * rng.uniform(0.6, 0.9)
        shape = rng.integers(3)
        polygon = (ellipse(x, cy, r, r, 12) if shape == 0 else
                   [(x - r, cy - r), (x + r, cy - r), (x, cy + r)] if shape == 1 else rect(x - r, cy - r, x + r, cy + r))
        out.append(obj("traffic sign", polygon))
    return out


def place_polegroup(rng, street, kind):
    """Three poles too close to separate, outlined together (label 'polegroup', ignored in training)."""
    x, y, d = ground_point(rng, street, sidewalk_strip(rng, street), (0.3, 0.9))
    h, pw = max(12 * street.width / 256, d * street.height * 0.5), max(2.0, d * street.width * 0.01)
    comb = [(x - 3 * pw, y), (x - 3 * pw, y - h), (x - 2 * pw, y - h), (x - 2 * pw, y - h * 0.3),
            (x - 0.5 * pw, y - h * 0.3), (x - 0.5 * pw, y - h * 0.9), (x + 0.5 * pw, y - h * 0.9),
            (x + 0.5 * pw, y - h * 0.3), (x + 2 * pw, y - h * 0.3), (x + 2 * pw, y - h * 0.8),
            (x + 3 * pw, y - h * 0.8), (x + 3 * pw, y)]
    return y, [obj("polegroup", comb)]


def place_tree(rng, street, kind):
    x, y, d = ground_point(rng, street, sidewalk_strip(rng, street), (0.2, 0.9))
    h = max(14 * street.width / 256, d * street.height * rng.uniform(0.7, 1.0))
    tw, r = max(2.0, d * street.width * 0.015), h * rng.uniform(0.25, 0.4)
    return y, [obj("vegetation", rect(x - tw / 2, y - h * 0.6, x + tw / 2, y)),
               obj("vegetation", ellipse(x, y - h * 0.6 - r * 0.6, r * 1.1, r, 16, rng, 0.2))]


def place_barrier(rng, street, kind):
    """A wall, fence, guard rail or hedge running along a sidewalk, in perspective."""
    left = rng.uniform() < 0.5
    bottom_x = street.walk[0] * 0.6 + street.road[0] * 0.4 if left else street.walk[1] * 0.6 + street.road[1] * 0.4
    deepest = min(0.95, street.visible_depth(bottom_x))  # beyond it the line has left the frame
    d0 = rng.uniform(0.05, 0.6) * deepest
    d1 = rng.uniform(d0 + 0.3 * (deepest - d0), deepest)
    ya, yb = (street.horizon + dd * (street.height - street.horizon) for dd in (d0, d1))
    xa, xb = street.x_on(bottom_x, ya), street.x_on(bottom_x, yb)
    rise = {"wall": 0.45, "fence": 0.4, "guard rail": 0.08, "hedge": 0.2}[kind] * street.height
    label = "vegetation" if kind == "hedge" else kind
    return yb, [obj(label, [(xa, ya), (xa, ya - rise * d0 - 3), (xb, yb - rise * d1 - 3), (xb, yb)])]


def place_verge(rng, street, kind):
    """A grass verge (terrain) on the outer half of a sidewalk."""
    strip = sidewalk_strip(rng, street)
    inner = 0.5 * (strip[0] + strip[1])
    outer = strip[0] if strip[0] < street.road[0] else strip[1]
    ya, yb = sorted(street.horizon + rng.uniform(0.15, 0.95, 2) * (street.height - street.horizon))
    yb = max(yb, ya + 0.1 * (street.height - street.horizon))
    return yb, [obj("terrain", [(street.x_on(outer, ya), ya), (street.x_on(inner, ya), ya),
                                (street.x_on(inner, yb), yb), (street.x_on(outer, yb), yb)])]


def place_box(rng, street, kind):
    """A 'static' or 'dynamic' thing on a sidewalk (a bin, a cart)."""
    x, y, d = ground_point(rng, street, sidewalk_strip(rng, street), (0.3, 0.9))
    s = max(4.0, d * street.width * 0.04)
    return y, [obj(kind, rect(x - s / 2, y - s * 1.3, x + s / 2, y))]


def place_group(rng, street, kind):
    """A distant clump of cars, persons or bicycles outlined as one polygon with a *group label."""
    shape_strip = {"cargroup": (street.road, 0.34, 0.55), "persongroup": (sidewalk_strip(rng, street), 0.2, 2.5),
                   "bicyclegroup": (sidewalk_strip(rng, street), 0.16, 0.6)}
    strip, w_rel, aspect = shape_strip[kind]
    x, y, d = ground_point(rng, street, strip, (0.12, 0.3))
    w = max(6 * street.width / 256, d * street.width * w_rel)
    h = w * aspect
    polygon = [(x - w / 2, y), (x - w / 2, y - h * 0.8)]
    for i in range(3):  # three members' tops
        cx = x - w / 2 + (i + 0.5) * w / 3
        polygon += [(cx - w * 0.12, y - h * rng.uniform(0.85, 1.0)), (cx + w * 0.12, y - h * rng.uniform(0.85, 1.0))]
    polygon += [(x + w / 2, y - h * 0.8), (x + w / 2 + w / 6, y)]
    return y, [obj(kind, polygon)]


PLACERS = {
    "car": place_vehicle, "truck": place_vehicle, "bus": place_vehicle, "train": place_vehicle,
    "person": place_person, "rider": place_two_wheeler, "bicycle": place_two_wheeler, "motorcycle": place_two_wheeler,
    "pole": place_pole, "traffic light": place_pole, "traffic sign": place_pole, "polegroup": place_polegroup,
    "vegetation": place_tree, "tree": place_tree, "terrain": place_verge,
    "wall": place_barrier, "fence": place_barrier, "guard rail": place_barrier, "hedge": place_barrier,
    "static": place_box, "dynamic": place_box,
    "cargroup": place_group, "persongroup": place_group, "bicyclegroup": place_group,
}


def place(rng, street, kind):
    """(foot row, objects) for one instance of scene element `kind`."""
    return PLACERS[kind](rng, street, kind)


# Featured classes in drawing order: the street's edges (walls, verges, fences, trees) at the back,
# then big vehicles, thin and small things in front.
FEATURED_ORDER = ("wall", "terrain", "fence", "vegetation", "train", "bus", "truck", "car", "motorcycle", "bicycle",
                  "rider", "person", "pole", "traffic light", "traffic sign")
EXTRA_KINDS = ("car", "car", "person", "person", "pole", "traffic light", "tree", "traffic sign", "traffic sign",
               "bicycle", "rider", "static", "fence", "hedge", "terrain", "wall", "cargroup", "persongroup",
               "bicyclegroup", "polegroup", "dynamic", "guard rail", "truck")


def scene_objects(rng: np.random.Generator, width: int, height: int, featured=()) -> list[dict]:
    """One street scene as Cityscapes json objects in drawing order, with one instance of each `featured` class."""
    street = Street(rng, width, height)
    objects = background(rng, street)
    kinds = [str(kind) for kind in rng.choice(EXTRA_KINDS, size=rng.integers(8, 16))]
    placed = [place(rng, street, kind) for kind in kinds]
    # Painter's order: far (small foot row) first. Featured classes go last, largest first, so
    # that little hides them (make_frame checks and redraws the scene if something still does).
    for _, group in sorted(placed, key=lambda item: item[0]):
        objects += group
    for kind in sorted(featured, key=FEATURED_ORDER.index):
        objects += place(rng, street, kind)[1]
    if rng.uniform() < 0.3:  # an annotation the annotator deleted: in the json, drawn nowhere
        x, y = rng.uniform(0, width), rng.uniform(street.horizon, height)
        box = rect(x, y - height * 0.2, x + width * 0.15, y)
        objects.append(obj(str(rng.choice(TRAIN_CLASSES)), box, deleted=True))
    e = height * rng.uniform(0.04, 0.08)  # the hood of the car carrying the camera
    objects.append(obj("ego vehicle", [(-5, height + 5), (-5, height - e), (width * 0.3, height - e * 1.4),
                                       (width * 0.7, height - e * 1.4), (width + 5, height - e), (width + 5, height + 5)]))
    return objects


# ----------------------------------------------------------------------------------------------
# Rendering: colours and textures per object, then lighting and noise for the whole frame.
# ----------------------------------------------------------------------------------------------

# One colour family per train class, chosen so that classes stay apart even under the training's
# hue, saturation and brightness jitter (cars blue, city buses green, trams red, trucks white,
# pedestrians in purple, riders in high-vis orange, yellow signs, silver poles, black
# traffic-light housings, pink motorcycles, cyan bicycles): a b0 trained from scratch for a few
# hundred iterations learns every class, small ones included, while texture, lighting and noise
# keep it a photo.
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


def base_label(name: str) -> str:
    """cargroup -> car; names cityscapesscripts knows (polegroup included) stay as they are."""
    return name[: -len("group")] if name not in name2label and name.endswith("group") else name


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


def object_mask_ids(objects, width, height) -> np.ndarray:
    """H x W int32: 1 + index of the object visible at each pixel (0: none), drawn like the labels."""
    canvas = Image.new("I", (width, height), 0)
    drawer = ImageDraw.Draw(canvas)
    for index, entry in enumerate(objects):
        if not entry.get("deleted"):
            drawer.polygon([tuple(point) for point in entry["polygon"]], fill=index + 1)
    return np.asarray(canvas)


def smooth_noise(rng, height, width, cell):
    """Zero-mean, unit-ish noise varying over about `cell` pixels."""
    small = rng.standard_normal((max(2, height // cell + 2), max(2, width // cell + 2))).astype(np.float32)
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)


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


# ----------------------------------------------------------------------------------------------
# Dataset
# ----------------------------------------------------------------------------------------------


def featured_schedule(n_images: int) -> list[tuple[str, ...]]:
    """Featured classes per frame: a rotation over FEATURED_CLASSES, MAX_FEATURED_PER_FRAME at a time, that covers
    all of them in MIN_FRAMES_PER_SPLIT frames (4 and 15 are coprime, so the rotation reaches every class)."""
    n, per_image = len(FEATURED_CLASSES), MAX_FEATURED_PER_FRAME
    return [tuple(FEATURED_CLASSES[(i * per_image + j) % n] for j in range(per_image)) for i in range(n_images)]


def annotation_of(polygons: dict) -> Annotation:
    annotation = Annotation()
    annotation.fromJsonText(json.dumps(polygons))
    return annotation


def visible_train_classes(label_ids: np.ndarray) -> set[str]:
    train_ids = np.unique(LABEL_ID_TO_TRAIN_ID[label_ids])
    return {TRAIN_CLASSES[t] for t in train_ids if t < len(TRAIN_CLASSES)}


def make_frame(seed: int, split_index: int, image_index: int, width: int, height: int, featured):
    """(polygons json dict, labelIds, instanceIds, RGB image) of one frame; redrawn until its classes show."""
    wanted = set(ALWAYS_PRESENT) | set(featured)
    rng = np.random.default_rng(np.random.SeedSequence([seed, split_index, image_index]))
    for _ in range(MAX_SCENE_ATTEMPTS):
        polygons = {"imgHeight": height, "imgWidth": width, "objects": scene_objects(rng, width, height, featured)}
        annotation = annotation_of(polygons)
        label_ids = np.asarray(createLabelImage(annotation, "ids"), np.uint8)
        if wanted <= visible_train_classes(label_ids):
            break
    else:
        raise RuntimeError(f"demo frame {split_index}/{image_index}: could not show {sorted(wanted)} "
                           f"at {width}x{height}; use a larger size")
    instance_ids = np.asarray(createInstanceImage(annotation, "ids")).astype(np.uint16)
    image = render_image(rng, polygons["objects"], width, height)
    return polygons, label_ids, instance_ids, image


def check_cities(cities) -> dict[str, tuple[str, ...]]:
    cities = dict(DEFAULT_CITIES if cities is None else cities)
    for split in ("train", "val"):
        names = tuple(cities.get(split, ()))
        if not names:
            raise ValueError(f"cities: no city given for split {split!r}")
        for name in names:
            if not name or "_" in name or "/" in name or name != name.strip():
                raise ValueError(f"cities[{split!r}]: {name!r} is not a valid city name "
                                 "(no underscores, slashes or spaces)")
        cities[split] = names
    return cities


def write_frame(root: Path, split: str, city: str, stem: str, frame) -> list[Path]:
    polygons, label_ids, instance_ids, image = frame
    gt_dir = root / "gtFine" / split / city
    paths = [root / "leftImg8bit" / split / city / f"{stem}{IMAGE_SUFFIX}", gt_dir / f"{stem}{POLYGONS_SUFFIX}",
             gt_dir / f"{stem}{LABEL_IDS_SUFFIX}", gt_dir / f"{stem}{INSTANCE_IDS_SUFFIX}"]
    write_png(paths[0], cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    write_json(paths[1], polygons)
    write_png(paths[2], label_ids)
    write_png(paths[3], instance_ids)
    return paths


def prepare_destination(out_root: Path, force: bool) -> None:
    if out_root.exists() and not out_root.is_dir():
        raise FileExistsError(f"{out_root}: exists and is not a folder")
    if out_root.is_dir() and any(out_root.iterdir()) and not force:
        raise FileExistsError(f"{out_root}: folder exists and is not empty (use force=True / --force to replace it)")


def move_into_place(built: Path, out_root: Path) -> None:
    """Rename the finished tree to out_root; an old tree is moved aside first and deleted afterwards."""
    old = None
    if out_root.is_dir() and any(out_root.iterdir()):
        old = Path(tempfile.mkdtemp(prefix=f".{out_root.name}.old-", dir=out_root.parent))
        os.replace(out_root, old / "tree")
    os.replace(built, out_root)  # replaces an empty folder too
    if old is not None:
        shutil.rmtree(old)


def generate_demo(out_root, *, seed=0, width=256, height=128, train_images=96, val_images=16, cities=None,
                  force=False) -> dict:
    """Write the demo dataset to out_root (Cityscapes layout) and return its manifest (also saved as demo_manifest.json)."""
    out_root = Path(out_root)
    if width < 64 or height < 32:
        raise ValueError(f"demo size {width}x{height} is too small: at least 64x32 so every class stays visible")
    if min(train_images, val_images) < MIN_FRAMES_PER_SPLIT:
        raise ValueError(f"need at least {MIN_FRAMES_PER_SPLIT} frames per split to show all 19 classes in each, "
                         f"got train={train_images}, val={val_images}")
    cities = check_cities(cities)
    prepare_destination(out_root, force)
    out_root.parent.mkdir(parents=True, exist_ok=True)
    # Not tempfile.mkdtemp: its 0700 mode would become the dataset's.
    build = out_root.parent / f".{out_root.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    build.mkdir()
    try:
        files = []
        counts = {"train": train_images, "val": val_images}
        for split_index, split in enumerate(("train", "val")):
            names = cities[split]
            for index, featured in enumerate(featured_schedule(counts[split])):
                city = names[index % len(names)]
                stem = f"{city}_{index // len(names):06d}_{19:06d}"
                frame = make_frame(seed, split_index, index, width, height, featured)
                files += write_frame(build, split, city, stem, frame)
            log.info("demo: %s: %d frames", split, counts[split])
        manifest = {
            "tool": "segformer.data.demo", "seed": seed, "width": width, "height": height, "counts": counts,
            "cities": {split: list(names) for split, names in cities.items()},
            "files": sorted(str(path.relative_to(build)) for path in files),
        }
        write_json(build / MANIFEST_NAME, manifest)
        move_into_place(build, out_root)
    finally:
        if build.exists():
            shutil.rmtree(build)
    log.info("demo: wrote %d files to %s", len(files), out_root)
    return manifest
