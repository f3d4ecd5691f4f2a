#!/usr/bin/env python
"""Label conversion speed: workflow_scripts/convert_dataset.py vs cityscapesscripts' csCreateTrainIdLabelImgs.

    python benchmarks/bench_labels.py [--images 24] [--runs 5]

Builds IMAGES full-size (2048x1024) polygon annotations shaped like Cityscapes gtFine: demo street
scenes with extra foreground objects, every polygon edge subdivided every few pixels with a little
jitter (thousands of vertices per file, as in real annotations). Each run converts a fresh copy of
the tree, writing beside the json as both tools do, and times the whole command (interpreter start
included) so the figures are what a user waits for. Prints images/s per tool (median of RUNS, runs
interleaved so machine load hits all alike) and the ratio to the reference, by median and by fastest
run (the latter is less disturbed by other work on a shared machine).
Targets: >= 1.9x with --nproc 2, >= 1.0x with --nproc 1.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from segformer.data.cityscapes import IMAGE_SUFFIX, POLYGONS_SUFFIX
from segformer.demo import FEATURED_CLASSES, scene_objects
from segformer.io import write_json, write_png

REPO = Path(__file__).resolve().parents[1]
WIDTH, HEIGHT = 2048, 1024
BACKGROUND = {"sky", "road", "sidewalk", "building", "terrain", "ego vehicle"}


def densify(polygon, rng, step=30.0, jitter=1.0):
    """Subdivide every edge into pieces of about `step` px, moving the new points by up to `jitter` px."""
    points = np.asarray(polygon, np.float64)
    out = []
    for a, b in zip(points, np.roll(points, -1, axis=0)):
        n = max(1, int(np.linalg.norm(b - a) / step))
        for t in np.arange(n) / n:
            p = a + (b - a) * t + (rng.uniform(-jitter, jitter, 2) if t > 0 else 0)
            out.append([int(round(p[0])), int(round(p[1]))])
    return out


def realistic_annotation(rng) -> dict:
    objects = scene_objects(rng, WIDTH, HEIGHT, FEATURED_CLASSES)
    ego = objects.pop()  # the ego vehicle stays on top
    for _ in range(3):  # more foreground, as in a busy Cityscapes street
        objects += [o for o in scene_objects(rng, WIDTH, HEIGHT, ())[:-1] if o["label"] not in BACKGROUND]
    objects.append(ego)
    for entry in objects:
        entry["polygon"] = densify(entry["polygon"], rng)
    return {"imgHeight": HEIGHT, "imgWidth": WIDTH, "objects": objects}


def build_tree(root: Path, n_images: int, seed: int = 0) -> int:
    """Annotations under root/gtFine/val/CITY plus 1x1 stand-in images (only their names are checked)."""
    rng = np.random.default_rng(seed)
    vertices = 0
    for i in range(n_images):
        city = ("frankfurt", "lindau", "munster")[i % 3]
        stem = f"{city}_{i:06d}_000019"
        annotation = realistic_annotation(rng)
        vertices += sum(len(o["polygon"]) for o in annotation["objects"])
        write_json(root / "gtFine" / "val" / city / f"{stem}{POLYGONS_SUFFIX}", annotation)
        write_png(root / "leftImg8bit" / "val" / city / f"{stem}{IMAGE_SUFFIX}", np.zeros((1, 1, 3), np.uint8))
    return vertices


def timed(command, env=None) -> float:
    start = time.perf_counter()
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def run_reference(source: Path, work: Path) -> float:
    copy = work / "reference"
    shutil.copytree(source, copy)
    env = dict(os.environ, CITYSCAPES_DATASET=str(copy))
    try:
        return timed([shutil.which("csCreateTrainIdLabelImgs") or "csCreateTrainIdLabelImgs"], env)
    finally:
        shutil.rmtree(copy)


def run_ours(source: Path, work: Path, nproc: int) -> float:
    copy = work / f"ours{nproc}"
    shutil.copytree(source, copy)
    try:
        # With its progress bar, as a user runs it (the reference prints its progress too).
        script = REPO / "workflow_scripts" / "convert_dataset.py"
        return timed([sys.executable, str(script), str(copy), "--nproc", str(nproc)])
    finally:
        shutil.rmtree(copy)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench_labels.") as tmp:
        work = Path(tmp)
        source = work / "source"
        vertices = build_tree(source, args.images)
        size_kb = sum(p.stat().st_size for p in source.rglob("*.json")) / args.images / 1024
        print(f"{args.images} annotations, {WIDTH}x{HEIGHT}, {vertices / args.images:.0f} vertices and "
              f"{size_kb:.0f} KiB per json; {args.runs} runs each, {os.cpu_count()} CPUs")
        times = {"csCreateTrainIdLabelImgs": [], "convert_dataset --nproc 1": [], "convert_dataset --nproc 2": []}
        for _ in range(args.runs):
            times["csCreateTrainIdLabelImgs"].append(run_reference(source, work))
            times["convert_dataset --nproc 1"].append(run_ours(source, work, 1))
            times["convert_dataset --nproc 2"].append(run_ours(source, work, 2))
    reference = times["csCreateTrainIdLabelImgs"]
    for name, values in times.items():
        rate = args.images / statistics.median(values)
        print(f"{name:28s} {rate:6.1f} images/s  ratio {statistics.median(reference) / statistics.median(values):.2f}x "
              f"(fastest runs: {min(reference) / min(values):.2f}x)  runs {', '.join(f'{v:.2f}' for v in values)} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
