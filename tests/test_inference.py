"""Test-time inference against mmseg 0.x restated literally in PyTorch (EncoderDecoder.whole_inference /
slide_inference / aug_test with MultiScaleFlipAug + keep-ratio Resize + RandomFlip + Normalize).

The network is the same black box on both sides (a small b0 with seeded weights), so what is compared is
the test-time algorithm: resizing, windows, averaging, flipping, softmax, rescaling to the original size.
"""

import cv2
import mindspore as ms
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from mindspore.nn.utils import no_init_parameters

from segformer.engine.inference import Segmenter, softmax_channels
from segformer.engine.inference_settings import InferenceSettings, window_boxes
from segformer.models import build_model

MEAN = np.array([123.675, 116.28, 103.53], np.float32)
STD = np.array([58.395, 57.12, 57.375], np.float32)


@pytest.fixture(scope="module")
def net():
    with no_init_parameters():
        model = build_model("b0")
    rng = np.random.default_rng(0)
    for _, p in model.parameters_and_names():
        value = np.ones(p.shape) if p.name.endswith(("gamma", "moving_variance")) else 0.05 * rng.standard_normal(p.shape)
        p.set_data(ms.Tensor(value.astype(np.float32)))
    model.set_train(False)
    return model


@pytest.fixture(scope="module")
def image():
    """A smooth random scene (so that predictions are not all one class), 72 x 120 RGB uint8."""
    rng = np.random.default_rng(1)
    small = rng.integers(0, 256, (9, 15, 3), dtype=np.uint8)
    return cv2.resize(small, (120, 72), interpolation=cv2.INTER_CUBIC)


def torch_network(net):
    return lambda x: torch.from_numpy(net(ms.Tensor(x.numpy())).asnumpy())


def mmseg_encode_decode(network, img):
    return F.interpolate(network(img), size=img.shape[2:], mode="bilinear", align_corners=False)


def mmseg_slide(network, img, crop, stride):
    h_stride, w_stride = stride
    h_crop, w_crop = crop
    _, _, h_img, w_img = img.shape
    h_grids = max(h_img - h_crop + h_stride - 1, 0) // h_stride + 1
    w_grids = max(w_img - w_crop + w_stride - 1, 0) // w_stride + 1
    preds = None
    count_mat = torch.zeros((1, 1, h_img, w_img))
    for h_idx in range(h_grids):
        for w_idx in range(w_grids):
            y1 = h_idx * h_stride
            x1 = w_idx * w_stride
            y2 = min(y1 + h_crop, h_img)
            x2 = min(x1 + w_crop, w_img)
            y1 = max(y2 - h_crop, 0)
            x1 = max(x2 - w_crop, 0)
            crop_seg_logit = mmseg_encode_decode(network, img[:, :, y1:y2, x1:x2])
            padded = F.pad(crop_seg_logit, (int(x1), int(w_img - x2), int(y1), int(h_img - y2)))
            preds = padded if preds is None else preds + padded
            count_mat[:, :, y1:y2, x1:x2] += 1
    assert (count_mat == 0).sum() == 0
    return preds / count_mat


def mmseg_predict(network, image, settings: InferenceSettings):
    """mmseg's aug_test (or simple_test for one scale without flip): softmax of each view, flipped back,
    averaged; argmax at the original size."""
    height, width = image.shape[:2]
    base_w, base_h = settings.scale or (width, height)
    outputs = []
    for ratio in settings.ratios:
        scale = (int(base_w * ratio), int(base_h * ratio))
        factor = min(max(scale) / max(height, width), min(scale) / min(height, width))  # mmcv.rescale_size
        size = (int(width * factor + 0.5), int(height * factor + 0.5))
        resized = cv2.resize(image, size, interpolation=cv2.INTER_LINEAR) if size != (width, height) else image
        for flip in ([False, True] if settings.flip else [False]):
            view = np.flip(resized, axis=1) if flip else resized
            normalized = (view.astype(np.float32) - MEAN) / STD
            img = torch.from_numpy(np.ascontiguousarray(normalized.transpose(2, 0, 1)[None]))
            if settings.mode == "slide":
                seg_logit = mmseg_slide(network, img, settings.crop_size, settings.stride)
            else:
                seg_logit = mmseg_encode_decode(network, img)
            seg_logit = F.interpolate(seg_logit, size=(height, width), mode="bilinear", align_corners=False)
            output = F.softmax(seg_logit, dim=1)
            outputs.append(output.flip(dims=(3,)) if flip else output)
    return (sum(outputs) / len(outputs))[0].numpy()


CASES = {
    "whole": InferenceSettings(),
    "whole, test scale": InferenceSettings(scale=(96, 48)),
    "slide": InferenceSettings(mode="slide", crop_size=(48, 64), stride=(32, 40)),
    "slide, crop larger than the image": InferenceSettings(mode="slide", crop_size=(96, 96), stride=(64, 64)),
    "multi-scale + flip, whole": InferenceSettings(ratios=(0.5, 1.0, 1.5), flip=True),
    "multi-scale + flip, slide": InferenceSettings(mode="slide", scale=(120, 72), crop_size=(48, 64),
                                                   stride=(40, 56), ratios=(0.75, 1.0), flip=True),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_same_predictions_as_mmseg(net, image, name):
    settings = CASES[name]
    expected = mmseg_predict(torch_network(net), image, settings)
    segmenter = Segmenter(net, settings, jit=False)
    scores = segmenter.scores(image)
    probabilities = scores if settings.averages_probabilities else softmax_channels(scores.copy())
    assert probabilities.shape == expected.shape == (19, *image.shape[:2])
    np.testing.assert_allclose(probabilities, expected, atol=1e-5)
    prediction = segmenter.predict(image)
    top_two = np.sort(expected, axis=0)[-2:]
    clear = top_two[1] - top_two[0] > 1e-4  # pixels whose winner is not a near-tie
    assert len(np.unique(prediction)) > 1
    np.testing.assert_array_equal(prediction[clear], expected.argmax(axis=0)[clear])


def test_jit_and_pynative_agree(net, image):
    settings = CASES["slide"]
    np.testing.assert_allclose(Segmenter(net, settings, jit=True).scores(image),
                               Segmenter(net, settings, jit=False).scores(image), atol=1e-5)


@pytest.mark.parametrize("height, width, crop, stride", [
    (1024, 2048, (1024, 1024), (768, 768)),  # a Cityscapes frame: 1 x 3 windows, the last pushed back
    (100, 100, (50, 50), (50, 50)),          # exact tiling
    (30, 200, (64, 64), (48, 48)),           # crop taller than the image
])
def test_windows_cover_the_image_and_stay_inside(height, width, crop, stride):
    boxes = window_boxes(height, width, crop, stride)
    count = np.zeros((height, width), int)
    for y1, y2, x1, x2 in boxes:
        assert 0 <= y1 < y2 <= height and 0 <= x1 < x2 <= width
        assert (y2 - y1, x2 - x1) == (min(crop[0], height), min(crop[1], width))
        count[y1:y2, x1:x2] += 1
    assert count.min() >= 1
    if (height, width) == (1024, 2048):
        assert boxes == [(0, 1024, 0, 1024), (0, 1024, 768, 1792), (0, 1024, 1024, 2048)]


def test_settings_are_checked_and_described():
    with pytest.raises(ValueError, match="mode"):
        InferenceSettings(mode="sliding")
    with pytest.raises(ValueError, match="unknown inference setting"):
        InferenceSettings.from_config({"crop": [1, 2]})
    with pytest.raises(ValueError, match="ratios"):
        InferenceSettings(ratios=())
    official = InferenceSettings.from_config({"mode": "slide", "scale": [2048, 1024]})
    assert official.describe() == "slide 1024x1024 stride 768x768 at 2048x1024, single scale"
    multi = InferenceSettings.from_config({"ratios": [0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0], "flip": True})
    assert multi.averages_probabilities
    assert multi.describe() == "whole image, scales x[0.5, 0.75, 1, 1.25, 1.5, 1.75, 2] with flip"
