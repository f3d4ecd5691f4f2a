"""Scene elements: each placer returns (foot row, objects in drawing order) for one instance of a kind;
the foot row sorts elements far to near. scene_objects assembles one street scene."""

from __future__ import annotations

import numpy as np

from segformer.demo.classes import TRAIN_CLASSES
from segformer.demo.geometry import (
    BICYCLE,
    BUS,
    CAR,
    MOTORCYCLE,
    PERSON,
    RIDER,
    TRAIN,
    TRUCK,
    Street,
    background,
    ellipse,
    ground_point,
    obj,
    rect,
    scaled,
    sidewalk_strip,
)


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
