"""Frames and files: the featured-class schedule, one frame's json, labels and photo, and the dataset
write. Everything follows from the seed (frame by frame, so more frames keep the first ones unchanged);
the dataset is built in a temporary sibling folder and renamed into place at the end.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import tempfile
from pathlib import Path

import cv2
import numpy as np
from cityscapesscripts.helpers.annotation import Annotation
from cityscapesscripts.preparation.json2instanceImg import createInstanceImage
from cityscapesscripts.preparation.json2labelImg import createLabelImage

from segformer.data.cityscapes import IMAGE_SUFFIX, INSTANCE_IDS_SUFFIX, LABEL_IDS_SUFFIX, POLYGONS_SUFFIX
from segformer.demo.classes import (
    ALWAYS_PRESENT,
    FEATURED_CLASSES,
    MAX_FEATURED_PER_FRAME,
    MIN_FRAMES_PER_SPLIT,
    visible_train_classes,
)
from segformer.demo.placers import scene_objects
from segformer.demo.render import render_image
from segformer.io import write_json, write_png

log = logging.getLogger(__name__)

MANIFEST_NAME = "demo_manifest.json"
DEFAULT_CITIES = {"train": ("aachen", "bremen", "zurich"), "val": ("frankfurt", "lindau", "munster")}
MAX_SCENE_ATTEMPTS = 50


def featured_schedule(n_images: int) -> list[tuple[str, ...]]:
    """Featured classes per frame: a rotation over FEATURED_CLASSES, MAX_FEATURED_PER_FRAME at a time, that covers
    all of them in MIN_FRAMES_PER_SPLIT frames (4 and 15 are coprime, so the rotation reaches every class)."""
    n, per_image = len(FEATURED_CLASSES), MAX_FEATURED_PER_FRAME
    return [tuple(FEATURED_CLASSES[(i * per_image + j) % n] for j in range(per_image)) for i in range(n_images)]


def annotation_of(polygons: dict) -> Annotation:
    annotation = Annotation()
    annotation.fromJsonText(json.dumps(polygons))
    return annotation



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
            "tool": "segformer.demo", "seed": seed, "width": width, "height": height, "counts": counts,
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
