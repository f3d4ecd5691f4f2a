"""segformer.data.dataset: batches, determinism, sharding, resume, evaluation order, bad input."""

import cv2
import numpy as np
import pytest

from segformer.data.cityscapes import write_split_list
from segformer.data.dataset import (
    CityscapesSource,
    TrainOrder,
    build_train_dataset,
    epoch_permutation,
)
from segformer.io import write_png

NUM_FRAMES = 10
WIDTH, HEIGHT = 64, 32
SMALL = dict(crop_size=(24, 32), base_scale=(WIDTH, HEIGHT))


@pytest.fixture(scope="module")
def split_list(tmp_path_factory):
    """Ten 64x32 frames with labels of a few classes plus ignore, in Cityscapes-like names."""
    root = tmp_path_factory.mktemp("frames")
    rng = np.random.default_rng(0)
    pairs = []
    for i in range(NUM_FRAMES):
        image = rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
        label = np.kron(rng.choice(np.array([0, 1, 2, 11, 255], np.uint8), (4, 8)), np.ones((8, 8), np.uint8))
        label[0, 0] = i  # makes every label distinguishable
        image_path = root / "leftImg8bit" / f"city_{i:06d}_000019_leftImg8bit.png"
        label_path = root / "labels" / f"city_{i:06d}_000019_gtFine_labelTrainIds.png"
        write_png(image_path, image)
        write_png(label_path, label)
        pairs.append((image_path, label_path))
    list_path = root / "lists" / "train.txt"
    write_split_list(list_path, pairs)
    return list_path


def collect(dataset):
    return [tuple(column.copy() for column in batch) for batch in dataset.create_tuple_iterator(num_epochs=1, output_numpy=True)]


def assert_same_batches(first, second):
    assert len(first) == len(second)
    for a, b in zip(first, second):
        for column_a, column_b in zip(a, b):
            np.testing.assert_array_equal(column_a, column_b)


# --- sample order (no I/O) -------------------------------------------------------------------------------
def test_shards_are_disjoint_and_cover_each_epoch():
    num_samples, batch, shards = 12, 2, 3  # one epoch = 2 iterations of the global batch of 6
    for epoch in range(3):
        taken = []
        for shard in range(shards):
            order = TrainOrder(num_samples, batch, seed=5, num_shards=shards, shard_id=shard)
            samples = order.samples(2 * epoch, 2 * epoch + 2)
            assert {e for e, _ in samples} == {epoch}
            taken += [index for _, index in samples]
        assert sorted(taken) == list(range(num_samples))


def test_each_epoch_has_its_own_permutation_from_the_seed():
    first = epoch_permutation(50, 1, 0)
    assert sorted(first) == list(range(50))
    assert not np.array_equal(first, epoch_permutation(50, 1, 1))
    assert not np.array_equal(first, epoch_permutation(50, 2, 0))
    np.testing.assert_array_equal(epoch_permutation(50, 1, 0, shuffle=False), np.arange(50))


def test_stream_flows_across_epoch_boundaries():
    order = TrainOrder(5, batch_size=2, seed=0)
    samples = order.samples(0, 5)  # 10 positions: two full epochs
    assert [e for e, _ in samples] == [0] * 5 + [1] * 5
    assert sorted(i for e, i in samples if e == 0) == list(range(5))
    assert sorted(i for e, i in samples if e == 1) == list(range(5))


def test_order_rejects_bad_shard_settings():
    with pytest.raises(ValueError, match="shard_id"):
        TrainOrder(10, 2, num_shards=2, shard_id=2)


# --- train dataset ---------------------------------------------------------------------------------------
def test_train_batches_have_the_promised_shapes_and_values(split_list):
    batches = collect(build_train_dataset(split_list, batch_size=3, num_iterations=4, seed=0, num_workers=1, **SMALL))
    assert len(batches) == 4
    for image, label in batches:
        assert image.shape == (3, 3, 24, 32) and image.dtype == np.float32
        assert label.shape == (3, 24, 32) and label.dtype == np.int32
        assert set(np.unique(label).tolist()) <= {0, 1, 2, 11, 255} | set(range(NUM_FRAMES))


def test_train_data_is_deterministic_across_worker_counts_and_kinds(split_list):
    def run(**kwargs):
        return collect(build_train_dataset(split_list, batch_size=2, num_iterations=6, seed=3, **SMALL, **kwargs))

    reference = run(num_workers=1)
    assert_same_batches(reference, run(num_workers=1))
    assert_same_batches(reference, run(num_workers=2, python_multiprocessing=False))
    assert_same_batches(reference, run(num_workers=2, python_multiprocessing=True))
    other_seed = collect(build_train_dataset(split_list, batch_size=2, num_iterations=6, seed=4, num_workers=1, **SMALL))
    assert not np.array_equal(reference[0][0], other_seed[0][0])


def test_resume_at_an_iteration_equals_continuing(split_list):
    full = collect(build_train_dataset(split_list, batch_size=2, num_iterations=8, seed=1, num_workers=1, **SMALL))
    resumed = collect(
        build_train_dataset(split_list, batch_size=2, num_iterations=8, start_iteration=5, seed=1, num_workers=1, **SMALL)
    )
    assert len(resumed) == 3
    assert_same_batches(full[5:], resumed)


def test_shards_read_disjoint_frames_that_cover_an_epoch(split_list):
    """End to end: with an identity-like pipeline the label keeps its frame number at [0, 0]."""
    untouched = dict(crop_size=(HEIGHT, WIDTH), base_scale=(WIDTH, HEIGHT), ratio_range=(1.0, 1.0), flip_prob=0.0,
                     photometric=False)
    frames = []
    for shard in range(2):
        batches = collect(build_train_dataset(split_list, batch_size=1, num_iterations=5, seed=7, num_shards=2,
                                              shard_id=shard, num_workers=1, **untouched))
        frames.append([int(label[0, 0, 0]) for _, label in batches])
        expected = [index for _, index in TrainOrder(NUM_FRAMES, 1, 7, 2, shard).samples(0, 5)]
        assert frames[-1] == expected
    assert not set(frames[0]) & set(frames[1])
    assert sorted(frames[0] + frames[1]) == list(range(NUM_FRAMES))


def test_source_sample_uses_the_sample_generator(split_list):
    source = CityscapesSource(split_list, lambda image, label, rng: (image, label, rng.integers(1 << 30)), seed=9)
    assert source.sample(2, 3)[2] == source.sample(2, 3)[2]
    assert source.sample(2, 3)[2] != source.sample(3, 3)[2]
    assert source.sample(2, 3)[2] != source.sample(2, 4)[2]


# --- bad input -------------------------------------------------------------------------------------------
def keep_as_is(image, label, rng):
    return image, label


def test_mismatched_label_size_names_the_file(tmp_path):
    image_path, label_path = tmp_path / "a_000000_000000_leftImg8bit.png", tmp_path / "a_labelTrainIds.png"
    write_png(image_path, np.zeros((8, 8, 3), np.uint8))
    write_png(label_path, np.zeros((8, 9), np.uint8))
    source = CityscapesSource([(image_path, label_path)], keep_as_is)
    with pytest.raises(ValueError, match="a_labelTrainIds.png.*differs"):
        source[0]


def test_missing_image_names_the_file(tmp_path):
    label_path = tmp_path / "b_labelTrainIds.png"
    write_png(label_path, np.zeros((8, 8), np.uint8))
    source = CityscapesSource([(tmp_path / "missing.png", label_path)], keep_as_is)
    with pytest.raises(FileNotFoundError, match="missing.png"):
        source[0]


def test_sixteen_bit_label_is_refused(tmp_path):
    image_path, label_path = tmp_path / "c.png", tmp_path / "c_label.png"
    write_png(image_path, np.zeros((8, 8, 3), np.uint8))
    cv2.imwrite(str(label_path), np.zeros((8, 8), np.uint16))
    with pytest.raises(ValueError, match="c_label.png.*8-bit"):
        CityscapesSource([(image_path, label_path)], keep_as_is)[0]
