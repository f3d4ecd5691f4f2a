"""Street geometry: polygon helpers, unit outlines of persons and vehicles, the perspective frame of a
scene and its background. A scene is a list of Cityscapes objects {"label", "polygon", ("deleted")} in
drawing order."""

from __future__ import annotations

import math

import numpy as np


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
