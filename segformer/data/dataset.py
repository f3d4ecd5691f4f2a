"""The MindSpore training dataset over a split list (IMAGE<TAB>LABEL lines).

Training data order is ours, not MindSpore's: the sample stream is a function of (seed, iteration),
so a run resumed at iteration k sees exactly the batches an uninterrupted run would have seen from k
on, without reading the skipped samples, and the result does not depend on the number of workers.

Stream layout. Global position p = (iteration * num_shards + shard_id) * batch_size + slot walks
through epochs back to back: epoch = p // N, and the sample is permutation_epoch[p % N], one fresh
permutation of the N samples per epoch (from seed and epoch). Within an epoch the shards therefore
take disjoint samples and together cover all of them; a batch may straddle two epochs (as with
mmseg's RepeatDataset, the data simply flows on). Each sample is augmented with its own generator
seeded from (seed, epoch, index), so the same sample at the same epoch is augmented identically
whatever the shard count, worker count or resume point.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Callable

import cv2
import numpy as np

from segformer.data.cityscapes import read_split_list
from segformer.data.transforms import build_train_transform
from segformer.io import read_image_rgb, read_train_ids

# Distinct first words keep the shuffle and augmentation streams independent for the same seed.
_SHUFFLE_STREAM = 0
_AUGMENT_STREAM = 1


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The augmentation generator of one sample at one epoch."""
    return np.random.default_rng([seed, _AUGMENT_STREAM, epoch, index])


@functools.lru_cache(maxsize=4)
def epoch_permutation(num_samples: int, seed: int, epoch: int, shuffle: bool = True) -> np.ndarray:
    if not shuffle:
        return np.arange(num_samples)
    return np.random.default_rng([seed, _SHUFFLE_STREAM, epoch]).permutation(num_samples)


@dataclass(frozen=True)
class TrainOrder:
    """Which (epoch, sample index) fills slot `slot` of this shard's batch at `iteration`."""

    num_samples: int
    batch_size: int
    seed: int = 0
    num_shards: int = 1
    shard_id: int = 0
    shuffle: bool = True

    def __post_init__(self):
        if self.num_samples < 1:
            raise ValueError("TrainOrder: the split list holds no samples")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not 0 <= self.shard_id < self.num_shards:
            raise ValueError(f"shard_id must be in [0, num_shards={self.num_shards}), got {self.shard_id}")

    def position(self, iteration: int, slot: int) -> int:
        return (iteration * self.num_shards + self.shard_id) * self.batch_size + slot

    def sample(self, iteration: int, slot: int) -> tuple[int, int]:
        epoch, offset = divmod(self.position(iteration, slot), self.num_samples)
        return epoch, int(epoch_permutation(self.num_samples, self.seed, epoch, self.shuffle)[offset])

    def samples(self, start_iteration: int, stop_iteration: int) -> list[tuple[int, int]]:
        """(epoch, index) for every slot of iterations [start, stop), in stream order."""
        return [self.sample(t, b) for t in range(start_iteration, stop_iteration) for b in range(self.batch_size)]


class CityscapesSource:
    """Random access to the (image, label) pairs of a split list, augmented per sample.

    `source[i]` is sample i at epoch 0; `source.sample(epoch, i)` at any epoch. The transform is called
    as transform(image_u8_rgb, label_u8, rng) with rng = sample_rng(seed, epoch, i).
    """

    def __init__(self, list_path_or_pairs, transform: Callable, *, seed: int = 0, cv2_threads: int | None = 1):
        if isinstance(list_path_or_pairs, (str, os.PathLike)):
            pairs = read_split_list(list_path_or_pairs)
        else:
            pairs = list(list_path_or_pairs)
        # Plain strings in numpy arrays: cheap to pickle to workers, no copy-on-write growth.
        self.images = np.array([str(image) for image, _ in pairs])
        self.labels = np.array([str(label) for _, label in pairs])
        self.transform = transform
        self.seed = int(seed)
        # Workers already run in parallel; OpenCV's own thread pool would only oversubscribe the cores.
        self.cv2_threads = cv2_threads

    def __len__(self) -> int:
        return len(self.images)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The raw pair: H x W x 3 uint8 RGB image and H x W uint8 label."""
        if self.cv2_threads is not None and cv2.getNumThreads() != self.cv2_threads:
            cv2.setNumThreads(self.cv2_threads)
        image_path, label_path = self.images[index], self.labels[index]
        image = read_image_rgb(image_path)
        label = read_train_ids(label_path)
        if label.shape != image.shape[:2]:
            raise ValueError(
                f"{label_path}: label size {label.shape[::-1]} differs from image {image_path} size {image.shape[1::-1]}"
            )
        return image, label

    def sample(self, epoch: int, index: int) -> tuple[np.ndarray, np.ndarray]:
        image, label = self.load(index)
        return self.transform(image, label, sample_rng(self.seed, epoch, index))

    def __getitem__(self, index: int):
        return self.sample(0, int(index))


class TrainStream:
    """GeneratorDataset source: item i is slot i % B of iteration start_iteration + i // B."""

    def __init__(self, source: CityscapesSource, order: TrainOrder, start_iteration: int, num_iterations: int):
        if not 0 <= start_iteration <= num_iterations:
            raise ValueError(f"start_iteration must be in [0, num_iterations={num_iterations}], got {start_iteration}")
        self.source, self.order = source, order
        self.start_iteration, self.num_iterations = start_iteration, num_iterations

    def __len__(self) -> int:
        return (self.num_iterations - self.start_iteration) * self.order.batch_size

    def __getitem__(self, item: int):
        iteration, slot = divmod(int(item), self.order.batch_size)
        epoch, index = self.order.sample(self.start_iteration + iteration, slot)
        return self.source.sample(epoch, index)


def _generator_dataset(stream, column_names, num_workers: int, python_multiprocessing: bool):
    import mindspore.dataset as ds

    return ds.GeneratorDataset(
        stream,
        column_names=column_names,
        shuffle=False,  # the order is the stream's own (see module docstring)
        num_parallel_workers=max(1, num_workers),
        python_multiprocessing=python_multiprocessing and num_workers > 1,
    )


def build_train_dataset(
    list_path: str | os.PathLike,
    *,
    batch_size: int,
    num_iterations: int,
    start_iteration: int = 0,
    seed: int = 0,
    num_shards: int = 1,
    shard_id: int = 0,
    num_workers: int = 2,
    python_multiprocessing: bool = False,
    shuffle: bool = True,
    **augmentation,
):
    """Batches ('image' B x 3 x h x w float32, 'label' B x h x w int32) for iterations
    [start_iteration, num_iterations) of this shard, (h, w) = crop_size. `augmentation`: the keyword
    arguments of segformer.data.transforms.build_train_transform (defaults: the official pipeline).

    Iterate once: `for image, label in ds.create_tuple_iterator(num_epochs=1)`; the dataset holds
    exactly num_iterations - start_iteration batches (the stream runs through as many passes over the
    split as needed, each with a fresh permutation; see the module docstring).

    Workers are threads by default: decoding and resizing run in OpenCV, which releases the GIL, and
    threads avoid copying each 12 MB float32 sample between processes (benchmarks/bench_pipeline.py:
    threads gave ~17.5 samples per CPU-second, processes ~13). python_multiprocessing=True uses
    processes instead. OpenCV is limited to 1 thread per worker (CityscapesSource.cv2_threads).
    """
    transform = build_train_transform(**augmentation)
    source = CityscapesSource(list_path, transform, seed=seed)
    order = TrainOrder(len(source), batch_size, seed, num_shards, shard_id, shuffle)
    stream = TrainStream(source, order, start_iteration, num_iterations)
    dataset = _generator_dataset(stream, ["image", "label"], num_workers, python_multiprocessing)
    return dataset.batch(batch_size, drop_remainder=True)
