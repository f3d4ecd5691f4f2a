"""Contracts of segformer.data.transforms, checked against literal re-statements of the mmseg/mmcv 0.x code."""

import cv2
import numpy as np
import pytest

from segformer.data import transforms as T


def rgb_image(rng, height, width):
    return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


def blocky_label(rng, height, width, values=(0, 3, 7, 13, 255), block=8):
    """Labels made of blocks so that crops see a mix of classes (and some ignore)."""
    small = rng.choice(np.array(values, np.uint8), size=(-(-height // block), -(-width // block)))
    return np.kron(small, np.ones((block, block), np.uint8))[:height, :width].copy()


# --- literal statements of the mmseg 0.x code (np.random replaced by an explicit Generator) -------------
def mmseg_crop_bbox(label, crop_size, cat_max_ratio, rng, ignore_index=255):
    def get_crop_bbox():
        margin_h = max(label.shape[0] - crop_size[0], 0)
        margin_w = max(label.shape[1] - crop_size[1], 0)
        offset_h = rng.integers(0, margin_h + 1)
        offset_w = rng.integers(0, margin_w + 1)
        return offset_h, offset_h + crop_size[0], offset_w, offset_w + crop_size[1]

    crop_bbox = get_crop_bbox()
    if cat_max_ratio < 1.0:
        for _ in range(10):
            seg_temp = label[crop_bbox[0] : crop_bbox[1], crop_bbox[2] : crop_bbox[3]]
            labels, cnt = np.unique(seg_temp, return_counts=True)
            cnt = cnt[labels != ignore_index]
            if len(cnt) > 1 and np.max(cnt) / np.sum(cnt) < cat_max_ratio:
                break
            crop_bbox = get_crop_bbox()
    return crop_bbox


def mmseg_photometric_bgr(img, params):
    """mmseg PhotoMetricDistortion.__call__ on a BGR uint8 image with the random draws given."""

    def convert(img, alpha=1, beta=0):
        img = img.astype(np.float32) * alpha + beta
        img = np.clip(img, 0, 255)
        return img.astype(np.uint8)

    if params["brightness"] is not None:
        img = convert(img, beta=params["brightness"])
    if params["contrast_first"] and params["contrast"] is not None:
        img = convert(img, alpha=params["contrast"])
    if params["saturation"] is not None:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)
        img[:, :, 1] = convert(img[:, :, 1], alpha=params["saturation"])
        img = cv2.cvtColor(img, cv2.COLOR_HSV2BGR)
    if params["hue"] is not None:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)
        img[:, :, 0] = (img[:, :, 0].astype(int) + params["hue"]) % 180
        img = cv2.cvtColor(img, cv2.COLOR_HSV2BGR)
    if not params["contrast_first"] and params["contrast"] is not None:
        img = convert(img, alpha=params["contrast"])
    return img


def mmcv_imnormalize_rgb(img_rgb, mean, std):
    img = img_rgb.copy().astype(np.float32)
    mean = np.float64(np.array(mean).reshape(1, -1))
    stdinv = 1 / np.float64(np.array(std).reshape(1, -1))
    cv2.subtract(img, mean, img)
    cv2.multiply(img, stdinv, img)
    return img


# --- resize -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "size, scale, expected",
    [
        ((2048, 1024), (2048, 1024), (2048, 1024)),
        ((2048, 1024), (1024, 512), (1024, 512)),
        ((1000, 500), (2048, 1024), (2048, 1024)),
        # portrait: the long edge is bounded by max(scale), the short by min(scale)
        ((100, 300), (2048, 1024), (683, 2048)),
        # aspect differs from the scale's: the tighter bound wins, +0.5 rounding
        ((2048, 1024), (2867, 1433), (2866, 1433)),
    ],
)
def test_rescale_size_follows_mmcv(size, scale, expected):
    assert T.rescale_size(*size, scale) == expected


def test_ratio_resize_size_comes_from_the_drawn_ratio():
    rng = np.random.default_rng(0)
    image, label = rgb_image(rng, 64, 128), blocky_label(rng, 64, 128)
    resize = T.RandomRatioResize(base_scale=(256, 128), ratio_range=(0.5, 2.0))
    for seed in range(20):
        ratio = np.random.default_rng(seed).random() * 1.5 + 0.5
        scale = (int(256 * ratio), int(128 * ratio))
        out_image, out_label = resize(image, label, np.random.default_rng(seed))
        assert (out_image.shape[1], out_image.shape[0]) == T.rescale_size(128, 64, scale)
        assert out_label.shape == out_image.shape[:2]
        assert out_image.dtype == np.uint8 and out_label.dtype == np.uint8
        assert 0.5 * 128 - 1 <= out_image.shape[1] / 2 <= 2.0 * 128


def test_resize_is_bilinear_for_the_image_and_nearest_for_the_label():
    rng = np.random.default_rng(1)
    image, label = rgb_image(rng, 40, 80), blocky_label(rng, 40, 80, block=3)
    out_image, out_label = T.resize_pair(image, label, (113, 57))
    np.testing.assert_array_equal(out_image, cv2.resize(image, (113, 57), interpolation=cv2.INTER_LINEAR))
    np.testing.assert_array_equal(out_label, cv2.resize(label, (113, 57), interpolation=cv2.INTER_NEAREST))
    assert set(np.unique(out_label)) <= set(np.unique(label))


# --- crop -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "values, accepted",
    [
        ([0, 0, 1, 1], True),
        ([0, 0, 0, 1], False),  # 0.75 is not under 0.75
        ([0, 0, 0, 1, 255, 255], False),  # ignore pixels do not count
        ([0, 0, 1, 255, 255, 255], True),  # 2/3 of the non-ignored pixels
        ([5, 5, 5, 5], False),  # one class
        ([255, 255, 255, 255], False),  # nothing labelled
        ([0, 1, 2, 3], True),
    ],
)
def test_crop_acceptance_rule(values, accepted):
    crop = T.RandomCrop((2, 2), cat_max_ratio=0.75)
    assert crop.is_acceptable(np.array(values, np.uint8).reshape(2, -1)) is accepted


def test_crop_matches_mmseg_random_crop_draw_for_draw():
    """Same boxes as mmseg's loop for many labels and seeds: accepted, late-accepted and never-accepted."""
    crop = T.RandomCrop((24, 24), cat_max_ratio=0.75)
    outcomes = set()
    for seed in range(150):
        rng = np.random.default_rng(seed)
        # one-class labels with a few square islands: many draws are rejected before one is accepted
        label = np.full((64, 96), rng.integers(0, 19), np.uint8)
        for _ in range(rng.integers(0, 4)):
            y, x, side = rng.integers(0, 56), rng.integers(0, 88), rng.integers(10, 24)
            label[y : y + side, x : x + side] = rng.choice([1, 4, 255])
        ours = crop.choose_box(label, np.random.default_rng(seed + 1000))
        reference = mmseg_crop_bbox(label, (24, 24), 0.75, np.random.default_rng(seed + 1000))
        assert ours == tuple(int(v) for v in reference), seed
        replay = np.random.default_rng(seed + 1000)
        draws = [crop.draw_box(label.shape, replay) for _ in range(10)]
        accepted = [i for i, (y1, y2, x1, x2) in enumerate(draws) if crop.is_acceptable(label[y1:y2, x1:x2])]
        outcomes.add("first" if accepted[:1] == [0] else "later" if accepted else "never")
    assert outcomes == {"first", "later", "never"}  # all three paths of the loop were compared


def test_crop_takes_the_eleventh_draw_unchecked_after_ten_rejections():
    label = np.zeros((50, 60), np.uint8)  # one class: every box is rejected
    crop = T.RandomCrop((10, 10), cat_max_ratio=0.75)
    rng = np.random.default_rng(3)
    box = crop.choose_box(label, rng)
    replay = np.random.default_rng(3)
    draws = [crop.draw_box(label.shape, replay) for _ in range(11)]
    assert box == draws[10]
    # exactly 11 draws were consumed: both generators are now in the same state
    assert rng.integers(1 << 30) == replay.integers(1 << 30)


def test_crop_accepts_the_first_good_draw_and_stops_drawing():
    label = np.zeros((50, 60), np.uint8)
    label[:, 30:] = 1  # every 10x10 box straddling column 30 is acceptable
    crop = T.RandomCrop((10, 10), cat_max_ratio=0.75)
    for seed in range(30):
        replay = np.random.default_rng(seed)
        draws = [crop.draw_box(label.shape, replay) for _ in range(11)]
        good = [i for i, (y1, y2, x1, x2) in enumerate(draws[:10]) if crop.is_acceptable(label[y1:y2, x1:x2])]
        expected = draws[good[0]] if good else draws[10]
        assert crop.choose_box(label, np.random.default_rng(seed)) == expected


def test_crop_without_ratio_rule_draws_once():
    label = np.zeros((50, 60), np.uint8)
    crop = T.RandomCrop((10, 10), cat_max_ratio=1.0)
    rng, replay = np.random.default_rng(4), np.random.default_rng(4)
    assert crop.choose_box(label, rng) == crop.draw_box(label.shape, replay)
    assert rng.integers(1 << 30) == replay.integers(1 << 30)


def test_crop_larger_than_the_image_is_clipped_to_it():
    rng = np.random.default_rng(5)
    image, label = rgb_image(rng, 30, 50), blocky_label(rng, 30, 50)
    out_image, out_label = T.RandomCrop((64, 40))(image, label, rng)
    assert out_image.shape == (30, 40, 3) and out_label.shape == (30, 40)
    box_rows = T.RandomCrop((64, 64))(image, label, rng)[0]
    np.testing.assert_array_equal(box_rows, image)


def test_crop_keeps_image_and_label_aligned():
    rng = np.random.default_rng(6)
    label = blocky_label(rng, 64, 64, block=4)
    image = np.repeat(label[..., None], 3, axis=2)  # the image encodes the label
    out_image, out_label = T.RandomCrop((20, 30))(image, label, rng)
    np.testing.assert_array_equal(out_image[..., 0], out_label)


# --- flip -------------------------------------------------------------------------------------------------
def test_flip_moves_image_and_label_together():
    rng = np.random.default_rng(7)
    label = blocky_label(rng, 16, 24, block=3)
    image = np.dstack([label, label // 2, np.full_like(label, 9)])
    flipped_image, flipped_label = T.RandomHorizontalFlip(1.0)(image, label, rng)
    np.testing.assert_array_equal(flipped_label, label[:, ::-1])
    np.testing.assert_array_equal(flipped_image, image[:, ::-1])
    same_image, same_label = T.RandomHorizontalFlip(0.0)(image, label, rng)
    np.testing.assert_array_equal(same_image, image)
    np.testing.assert_array_equal(same_label, label)


def test_flip_probability_is_about_one_half():
    flip = T.RandomHorizontalFlip(0.5)
    label = np.arange(4, dtype=np.uint8).reshape(1, 4)
    image = np.zeros((1, 4, 3), np.uint8)
    flips = sum(flip(image, label, np.random.default_rng(s))[1][0, 0] == 3 for s in range(400))
    assert 160 < flips < 240


# --- photometric distortion ---------------------------------------------------------------------------------
PARAM_CASES = [
    dict(brightness=None, contrast_first=False, contrast=None, saturation=None, hue=None),
    dict(brightness=25.7, contrast_first=False, contrast=None, saturation=None, hue=None),
    dict(brightness=-31.2, contrast_first=True, contrast=1.43, saturation=None, hue=None),
    dict(brightness=None, contrast_first=False, contrast=0.61, saturation=1.38, hue=None),
    dict(brightness=12.0, contrast_first=True, contrast=0.7, saturation=0.55, hue=-18),
    dict(brightness=-5.5, contrast_first=False, contrast=1.2, saturation=1.4, hue=17),
    dict(brightness=None, contrast_first=True, contrast=None, saturation=None, hue=7),
]


@pytest.mark.parametrize("params", PARAM_CASES)
def test_photometric_matches_mmseg_on_bgr(params):
    rng = np.random.default_rng(8)
    image = rgb_image(rng, 48, 64)
    ours = T.PhotoMetricDistortion.apply(image, params)
    reference = mmseg_photometric_bgr(np.ascontiguousarray(image[..., ::-1]), params)[..., ::-1]
    assert ours.dtype == np.uint8 and ours.shape == image.shape
    np.testing.assert_array_equal(ours, reference)


def test_photometric_draws_follow_mmseg_ranges_and_probabilities():
    distortion = T.PhotoMetricDistortion()
    draws = [distortion.draw(np.random.default_rng(s)) for s in range(600)]
    for key in ("brightness", "contrast", "saturation", "hue"):
        applied = [d[key] for d in draws if d[key] is not None]
        assert 240 < len(applied) < 360, key
    assert 240 < sum(d["contrast_first"] for d in draws) < 360
    assert all(-32 <= d["brightness"] <= 32 for d in draws if d["brightness"] is not None)
    assert all(0.5 <= d[k] <= 1.5 for d in draws for k in ("contrast", "saturation") if d[k] is not None)
    hues = {d["hue"] for d in draws if d["hue"] is not None}
    assert min(hues) == -18 and max(hues) == 17  # numpy randint(-18, 18) excludes 18


def test_photometric_leaves_the_label_alone_and_is_deterministic():
    rng = np.random.default_rng(9)
    image, label = rgb_image(rng, 32, 32), blocky_label(rng, 32, 32)
    distortion = T.PhotoMetricDistortion()
    out_a, label_a = distortion(image, label, np.random.default_rng(11))
    out_b, _ = distortion(image, label, np.random.default_rng(11))
    assert label_a is label
    np.testing.assert_array_equal(out_a, out_b)


# --- normalize + pad + CHW -------------------------------------------------------------------------------
def test_normalize_matches_mmcv_and_known_numbers():
    rng = np.random.default_rng(10)
    image = rgb_image(rng, 20, 30)
    image[0, 0] = (0, 0, 0)
    image[0, 1] = (255, 255, 255)
    out, _ = T.NormalizePadCHW()(image, None)
    assert out.dtype == np.float32 and out.shape == (3, 20, 30)
    np.testing.assert_array_equal(out, mmcv_imnormalize_rgb(image, T.MEAN, T.STD).transpose(2, 0, 1))
    np.testing.assert_allclose(out[:, 0, 0], [-123.675 / 58.395, -116.28 / 57.12, -103.53 / 57.375], rtol=1e-6)
    np.testing.assert_allclose(out[:, 0, 1], [131.325 / 58.395, 138.72 / 57.12, 151.47 / 57.375], rtol=1e-6)


def test_pad_fills_image_with_zero_and_label_with_255():
    rng = np.random.default_rng(12)
    image, label = rgb_image(rng, 10, 14), blocky_label(rng, 10, 14, values=(1, 2))
    out_image, out_label = T.NormalizePadCHW(pad_size=(16, 20))(image, label)
    assert out_image.shape == (3, 16, 20) and out_label.shape == (16, 20)
    assert out_label.dtype == np.int32
    assert np.all(out_image[:, 10:, :] == 0) and np.all(out_image[:, :, 14:] == 0)
    assert np.all(out_label[10:, :] == 255) and np.all(out_label[:, 14:] == 255)
    np.testing.assert_array_equal(out_label[:10, :14], label)
    np.testing.assert_array_equal(out_image[:, :10, :14], T.NormalizePadCHW()(image, None)[0])


def test_pad_smaller_than_the_image_is_an_error():
    image = np.zeros((10, 10, 3), np.uint8)
    with pytest.raises(ValueError, match="smaller than the image"):
        T.NormalizePadCHW(pad_size=(8, 10))(image, np.zeros((10, 10), np.uint8))


# --- composed pipelines ----------------------------------------------------------------------------------
def test_train_transform_contract():
    rng = np.random.default_rng(13)
    image, label = rgb_image(rng, 64, 128), blocky_label(rng, 64, 128, values=(0, 1, 2, 5, 18, 255))
    transform = T.build_train_transform(crop_size=(48, 40), base_scale=(128, 64))
    values_in = set(np.unique(label).tolist()) | {255}
    padded = 0
    for seed in range(25):
        out_image, out_label = transform(image, label, np.random.default_rng(seed))
        assert out_image.shape == (3, 48, 40) and out_image.dtype == np.float32
        assert out_label.shape == (48, 40) and out_label.dtype == np.int32
        assert set(np.unique(out_label).tolist()) <= values_in
        assert np.isfinite(out_image).all() and np.abs(out_image).max() < 2.7
        padded += bool((out_label[-1] == 255).all() and (out_image[:, -1] == 0).all())
    assert padded > 0  # small ratios make images smaller than the crop: padding was exercised


def test_train_transform_is_deterministic_for_a_seed():
    rng = np.random.default_rng(14)
    image, label = rgb_image(rng, 64, 128), blocky_label(rng, 64, 128)
    transform = T.build_train_transform(crop_size=(32, 32), base_scale=(128, 64))
    first = transform(image, label, np.random.default_rng(99))
    again = transform(image, label, np.random.default_rng(99))
    other = transform(image, label, np.random.default_rng(100))
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])
    assert not np.array_equal(first[0], other[0])


def test_train_transform_without_photometric_or_flip_keeps_pixels():
    """With no photometric step and no flip, the output is exactly the normalised resized crop."""
    rng = np.random.default_rng(15)
    image, label = rgb_image(rng, 32, 64), blocky_label(rng, 32, 64)
    transform = T.build_train_transform(crop_size=(32, 64), base_scale=(64, 32), ratio_range=(1.0, 1.0),
                                        flip_prob=0.0, photometric=False)
    out_image, out_label = transform(image, label, np.random.default_rng(0))
    np.testing.assert_array_equal(out_label, label.astype(np.int32))
    np.testing.assert_array_equal(out_image, T.NormalizePadCHW()(image, None)[0])


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="uint8 RGB"):
        T.build_train_transform()(np.zeros((4, 4), np.uint8), np.zeros((4, 4), np.uint8), np.random.default_rng(0))
    with pytest.raises(ValueError, match="matching the image"):
        T.build_train_transform(crop_size=(2, 2))(np.zeros((4, 4, 3), np.uint8), np.zeros((4, 5), np.uint8),
                                                  np.random.default_rng(0))


def mmseg_train_pipeline(image_rgb, label, rng, crop_size, base_scale):
    """The mmseg 0.x train pipeline literally (BGR inside, as mmseg loads images), same draw order."""
    img = np.ascontiguousarray(image_rgb[..., ::-1])
    # Resize(img_scale=base_scale, ratio_range=(0.5, 2.0)), keep_ratio: mmcv.imrescale
    ratio = rng.random() * (2.0 - 0.5) + 0.5
    scale = int(base_scale[0] * ratio), int(base_scale[1] * ratio)
    h, w = img.shape[:2]
    factor = min(max(scale) / max(h, w), min(scale) / min(h, w))
    new_size = int(w * float(factor) + 0.5), int(h * float(factor) + 0.5)
    img = cv2.resize(img, new_size, interpolation=cv2.INTER_LINEAR)
    seg = cv2.resize(label, new_size, interpolation=cv2.INTER_NEAREST)
    # RandomCrop(crop_size, cat_max_ratio=0.75)
    y1, y2, x1, x2 = mmseg_crop_bbox(seg, crop_size, 0.75, rng)
    img, seg = img[y1:y2, x1:x2, ...], seg[y1:y2, x1:x2]
    # RandomFlip(prob=0.5)
    if rng.random() < 0.5:
        img, seg = np.flip(img, axis=1), np.flip(seg, axis=1).copy()
    # PhotoMetricDistortion (its draws, then its arithmetic)
    img = mmseg_photometric_bgr(np.ascontiguousarray(img), T.PhotoMetricDistortion().draw(rng))
    # Normalize(to_rgb=True) then Pad(size=crop_size, pad_val=0, seg_pad_val=255)
    img = mmcv_imnormalize_rgb(np.ascontiguousarray(img[..., ::-1]), T.MEAN, T.STD)
    pad = (0, 0, crop_size[1] - img.shape[1], crop_size[0] - img.shape[0])
    img = cv2.copyMakeBorder(img, pad[1], pad[3], pad[0], pad[2], cv2.BORDER_CONSTANT, value=0)
    seg = cv2.copyMakeBorder(seg, pad[1], pad[3], pad[0], pad[2], cv2.BORDER_CONSTANT, value=255)
    return img.transpose(2, 0, 1), seg.astype(np.int64)


def test_train_transform_equals_the_literal_mmseg_pipeline():
    rng = np.random.default_rng(17)
    image, label = rgb_image(rng, 48, 96), blocky_label(rng, 48, 96, values=(0, 1, 2, 8, 255), block=6)
    transform = T.build_train_transform(crop_size=(40, 56), base_scale=(96, 48))
    for seed in range(30):
        ours_image, ours_label = transform(image, label, np.random.default_rng(seed))
        ref_image, ref_label = mmseg_train_pipeline(image, label, np.random.default_rng(seed), (40, 56), (96, 48))
        np.testing.assert_array_equal(ours_image, ref_image)
        np.testing.assert_array_equal(ours_label, ref_label)
