"""Throughput of the training data pipeline (decode + official augmentations) through MindSpore.

Not a test. Makes 16 photo-like 2048 x 1024 PNG frames (~2.3 MB each, like Cityscapes' leftImg8bit:
smooth multi-scale texture plus sensor noise, not flat colours) with street-like train-id labels once
into a folder, then:
  1. per-step cost of one sample (median over the frames), single-threaded OpenCV;
  2. samples/s through build_train_dataset with 1 worker and with 2 workers, processes vs threads;
     median of --runs runs each. Besides wall-clock rates it reports samples per CPU-second (CPU time of
     this process and its worker processes): the per-core rate, and robust to other load on the machine.
Target: >= 10 samples/s per core at crop 1024 x 1024.

    python benchmarks/bench_pipeline.py [--data_dir DIR] [--samples 48] [--runs 3] [--one_core]

--one_core pins the whole process (MindSpore's own pipeline threads included) to one CPU and measures
only the 1-worker configuration: the strict per-core figure.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from segformer.data import transforms as T
from segformer.data.cityscapes import write_split_list
from segformer.data.dataset import build_train_dataset, sample_rng
from segformer.io import read_image_rgb, read_label, write_png

WIDTH, HEIGHT = 2048, 1024


def photo_like(rng: np.random.Generator) -> np.ndarray:
    """RGB uint8 with texture at several scales plus noise: PNG compresses it about as well as a real photo."""
    image = np.full((HEIGHT, WIDTH, 3), 128.0, np.float32)
    for cells, amplitude in ((8, 60.0), (32, 40.0), (128, 20.0), (512, 4.0)):
        grid = rng.uniform(-1, 1, (max(HEIGHT * cells // WIDTH, 2), cells, 3)).astype(np.float32)
        image += amplitude * cv2.resize(grid, (WIDTH, HEIGHT), interpolation=cv2.INTER_CUBIC)
    image += rng.normal(0, 0.7, image.shape).astype(np.float32)
    return np.clip(image, 0, 255).astype(np.uint8)


def street_like_label(rng: np.random.Generator) -> np.ndarray:
    """Train ids: sky / building / road bands, then random polygons of other classes, some ignore."""
    label = np.full((HEIGHT, WIDTH), 2, np.uint8)  # building
    label[: rng.integers(150, 350)] = 10  # sky
    label[rng.integers(600, 750) :] = 0  # road
    for _ in range(40):
        center = rng.uniform((0, 0), (WIDTH, HEIGHT))
        points = (center + rng.normal(0, rng.uniform(10, 120), (6, 2))).astype(np.int32)
        value = 255 if rng.random() < 0.1 else int(rng.integers(0, 19))
        cv2.fillPoly(label, [points], value)
    return label


def make_frames(data_dir: Path, count: int = 16) -> Path:
    list_path = data_dir / "train.txt"
    if list_path.exists():
        return list_path
    rng = np.random.default_rng(0)
    pairs = []
    for i in range(count):
        image_path = data_dir / f"bench_{i:06d}_000019_leftImg8bit.png"
        label_path = data_dir / f"bench_{i:06d}_000019_gtFine_labelTrainIds.png"
        write_png(image_path, cv2.cvtColor(photo_like(rng), cv2.COLOR_RGB2BGR))
        write_png(label_path, street_like_label(rng))
        pairs.append((image_path, label_path))
    write_split_list(list_path, pairs)
    return list_path


def profile_steps(list_path: Path) -> dict[str, float]:
    """Median ms per step over the frames, replaying the train transform step by step.

    Timed in CPU time of this thread (OpenCV limited to 1 thread runs in the caller), which other load
    on the machine inflates far less than wall time.
    """
    from segformer.data.cityscapes import read_split_list

    cv2.setNumThreads(1)
    transform = T.build_train_transform()
    resize, crop, flip, photometric, normalize = transform.transforms
    times: dict[str, list[float]] = {}

    def timed(name, fn, *args):
        start = time.thread_time()
        out = fn(*args)
        times.setdefault(name, []).append((time.thread_time() - start) * 1000)
        return out

    for index, (image_path, label_path) in enumerate(read_split_list(list_path)):
        rng = sample_rng(0, 0, index)
        image = timed("decode image PNG", read_image_rgb, image_path)
        label = timed("decode label PNG", read_label, label_path)
        image, label = timed("ratio resize", resize, image, label, rng)
        image, label = timed("random crop (cat_max_ratio)", crop, image, label, rng)
        image, label = timed("flip", flip, image, label, rng)
        image, label = timed("photometric (random draw)", photometric, image, label, rng)
        timed("photometric (all four steps)", photometric.apply, image,
              dict(brightness=10.0, contrast_first=False, contrast=1.2, saturation=0.8, hue=5))
        timed("normalize + pad + CHW", normalize, image, label, rng)
    return {name: statistics.median(values) for name, values in times.items()}


def cpu_seconds() -> float:
    """CPU time (user + system) of this process and all its live descendants (worker processes)."""
    import psutil  # installed with MindSpore

    total = 0.0
    me = psutil.Process()
    for process in [me] + me.children(recursive=True):
        try:
            times = process.cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return total


def throughput(list_path: Path, samples: int, num_workers: int, processes: bool, batch_size: int = 2):
    """(samples per wall second, samples per CPU second) in steady state."""
    dataset = build_train_dataset(
        list_path, batch_size=batch_size, num_iterations=samples // batch_size, seed=0,
        num_workers=num_workers, python_multiprocessing=processes,
    )
    iterator = dataset.create_tuple_iterator(num_epochs=1, output_numpy=True)
    first = next(iterator)  # start-up (worker spawn) is not part of the steady-state rate
    assert first[0].shape == (batch_size, 3, 1024, 1024) and first[1].dtype == np.int32
    start, start_cpu = time.perf_counter(), cpu_seconds()
    count = sum(1 for _ in iterator) * batch_size
    wall, cpu = time.perf_counter() - start, cpu_seconds() - start_cpu
    return count / wall, count / cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", type=Path, default=Path(tempfile.gettempdir()) / "segformer_bench_pipeline")
    parser.add_argument("--samples", type=int, default=48)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--one_core", action="store_true", help="pin to one CPU, measure 1 worker only")
    args = parser.parse_args()
    if args.one_core:
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    print(f"CPUs usable: {len(os.sched_getaffinity(0))}, load average before: {os.getloadavg()[0]:.2f}")

    list_path = make_frames(args.data_dir)
    sizes = [p.stat().st_size / 1e6 for p in args.data_dir.glob("*_leftImg8bit.png")]
    print(f"{len(sizes)} frames {WIDTH}x{HEIGHT}, PNG {statistics.mean(sizes):.2f} MB on average, in {args.data_dir}")

    steps = profile_steps(list_path)
    print("\nPer-step cost of one sample (median CPU ms, 1 OpenCV thread):")
    for name, ms in steps.items():
        print(f"  {name:32s} {ms:7.2f}")
    pipeline_ms = sum(ms for name, ms in steps.items() if name != "photometric (all four steps)")
    print(f"  {'total (one train sample)':32s} {pipeline_ms:7.2f}  -> {1000 / pipeline_ms:.1f} samples/s/core bare")

    print(f"\nThrough build_train_dataset (batch 2, crop 1024x1024, {args.samples} samples, median of {args.runs}):")
    configs = [(1, False, "1 worker (per core)")]
    if not args.one_core:
        configs += [(2, True, "2 worker processes"), (2, False, "2 worker threads")]
    for workers, processes, label in configs:
        rates = [throughput(list_path, args.samples, workers, processes) for _ in range(args.runs)]
        wall = statistics.median(r[0] for r in rates)
        cpu = statistics.median(r[1] for r in rates)
        print(f"  {label:22s} {wall:6.2f} samples/s wall ({wall / workers:5.2f} per worker), "
              f"{cpu:6.2f} samples per CPU-second   (wall runs: {', '.join(f'{r[0]:.2f}' for r in rates)})")
    print(f"load average after: {os.getloadavg()[0]:.2f} (other work on the machine skews these figures)")


if __name__ == "__main__":
    main()
