"""Segmentation loss against PyTorch (mmseg 0.x reduction) and metrics against brute-force counting."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import mindspore as ms
from mindspore import Tensor

from segformer.engine.loss import SegCrossEntropyLoss
from segformer.metrics import (
    ConfusionMatrix,
    cityscapes_class_names,
    confusion_matrix,
    format_metrics_table,
    metrics_from_confusion,
    miou_csv_header,
    miou_csv_text,
    miou_row,
)

ms.set_device("CPU")


# ---------------------------------------------------------------- loss
def _batch(rng, n=2, classes=19, low=(8, 12), high=(32, 48)):
    logits = (rng.standard_normal((n, classes, *low)) * 3).astype(np.float32)
    labels = rng.integers(0, classes, size=(n, *high)).astype(np.int32)
    labels[0, :10, :] = 255  # an ignored band, like crop padding
    labels[1, rng.random(high) < 0.3] = 255  # scattered ignored pixels
    return logits, labels


def _torch_loss(logits, labels, avg_non_ignore):
    x = torch.from_numpy(logits).requires_grad_(True)
    up = F.interpolate(x, size=labels.shape[-2:], mode="bilinear", align_corners=False)
    per_pixel = F.cross_entropy(up, torch.from_numpy(labels).long(), reduction="none", ignore_index=255)
    if avg_non_ignore:
        loss = per_pixel.sum() / ((torch.from_numpy(labels) != 255).sum() + torch.finfo(torch.float32).eps)
    else:
        loss = per_pixel.mean()  # mmseg 0.x: ignored pixels (loss 0) stay in the denominator
    loss.backward()
    return loss.item(), x.grad.numpy()


@pytest.mark.parametrize("avg_non_ignore, low", [(False, (8, 12)), (True, (8, 12)), (False, (7, 9))])
def test_loss_and_gradient_match_torch_in_graph_mode(avg_non_ignore, low):
    """(7, 9) -> (32, 48) is a non-integer scale: checks align_corners=False's half-pixel sampling."""
    rng = np.random.default_rng(0)
    logits, labels = _batch(rng, low=low)
    loss_fn = SegCrossEntropyLoss(ignore_index=255, avg_non_ignore=avg_non_ignore)
    value_and_grad = ms.jit(ms.value_and_grad(loss_fn, grad_position=0))
    loss, grad = value_and_grad(Tensor(logits), Tensor(labels))
    ref_loss, ref_grad = _torch_loss(logits, labels, avg_non_ignore)
    assert float(loss) == pytest.approx(ref_loss, rel=2e-6)
    np.testing.assert_allclose(grad.asnumpy(), ref_grad, rtol=1e-4, atol=1e-5 * np.abs(ref_grad).max())


def test_loss_reductions_differ_by_the_ignored_share():
    rng = np.random.default_rng(1)
    logits, labels = _batch(rng, low=(16, 16), high=(16, 16))  # same size: no resize
    full = float(SegCrossEntropyLoss()(Tensor(logits), Tensor(labels)))
    labelled_only = float(SegCrossEntropyLoss(avg_non_ignore=True)(Tensor(logits), Tensor(labels)))
    share = (labels != 255).mean()
    assert 0.3 < share < 0.9
    assert full == pytest.approx(labelled_only * share, rel=1e-5)
    # brute force per pixel in float64
    x = logits.astype(np.float64)
    log_p = x - x.max(1, keepdims=True) - np.log(np.exp(x - x.max(1, keepdims=True)).sum(1, keepdims=True))
    n, h, w = np.nonzero(labels != 255)
    assert labelled_only == pytest.approx(-log_p[n, labels[n, h, w], h, w].mean(), rel=1e-5)


def test_loss_is_stable_and_zero_when_all_ignored():
    logits = np.zeros((1, 3, 4, 4), np.float32)
    logits[:, 0] = 1e4  # huge logits: a naive softmax overflows
    labels = np.zeros((1, 8, 8), np.int32)
    labels[0, 0, 0] = 1
    loss = float(SegCrossEntropyLoss()(Tensor(logits), Tensor(labels)))
    assert loss == pytest.approx(1e4 / 64, rel=1e-5)  # one pixel with -log p = 1e4, over 64 pixels
    ignored = np.full((1, 8, 8), 255, np.int32)
    for avg in (False, True):
        assert float(SegCrossEntropyLoss(avg_non_ignore=avg)(Tensor(logits), Tensor(ignored))) == 0.0


# ---------------------------------------------------------------- metrics
def test_confusion_matrix_against_brute_force():
    rng = np.random.default_rng(2)
    label = rng.integers(0, 5, size=(3, 20, 30)).astype(np.uint8)
    label[rng.random(label.shape) < 0.2] = 255
    pred = rng.integers(0, 5, size=label.shape)
    cm = confusion_matrix(pred, label, num_classes=5)
    brute = np.zeros((5, 5), np.int64)
    for g, p in zip(label.ravel(), pred.ravel()):
        if g != 255:
            brute[g, p] += 1
    np.testing.assert_array_equal(cm, brute)
    acc = ConfusionMatrix(5)
    for i in range(3):
        acc.update(pred[i], label[i])
    np.testing.assert_array_equal(acc.matrix, brute)
    np.testing.assert_array_equal((ConfusionMatrix(5).update(pred[:1], label[:1]) + ConfusionMatrix(5).update(
        pred[1:], label[1:])).matrix, brute)

    m = metrics_from_confusion(cm)
    for c in range(5):  # mmseg's definitions, counted directly
        keep = label != 255
        inter = np.sum((pred == c) & (label == c))
        union = np.sum(((pred == c) & keep) | (label == c))
        assert m["IoU"][c] == pytest.approx(inter / union)
        assert m["Acc"][c] == pytest.approx(inter / np.sum(label == c))
    assert m["aAcc"] == pytest.approx(np.sum((pred == label) & (label != 255)) / np.sum(label != 255))
    assert m["mIoU"] == pytest.approx(np.mean(m["IoU"]))


def test_known_example_and_nan_rule():
    # classes 0..3: 3 never occurs anywhere (NaN, skipped), 2 is predicted but absent from the labels (IoU 0)
    label = np.array([[0, 0, 1, 1, 255, 255]])
    pred = np.array([[0, 1, 1, 2, 3, 0]])  # predictions on ignored pixels do not count
    m = metrics_from_confusion(confusion_matrix(pred, label, num_classes=4))
    np.testing.assert_allclose(m["IoU"][:3], [1 / 2, 1 / 3, 0.0])
    assert math.isnan(m["IoU"][3])
    np.testing.assert_allclose(m["Acc"][:2], [1 / 2, 1 / 2])
    assert math.isnan(m["Acc"][2]) and math.isnan(m["Acc"][3])
    assert m["mIoU"] == pytest.approx((1 / 2 + 1 / 3 + 0) / 3)
    assert m["mAcc"] == pytest.approx(1 / 2)
    assert m["aAcc"] == pytest.approx(2 / 4)


def test_bad_values_are_errors():
    with pytest.raises(ValueError, match="label values \\[7\\]"):
        confusion_matrix(np.zeros((2, 2), int), np.array([[0, 7], [1, 255]]), num_classes=5)
    with pytest.raises(ValueError, match="prediction values \\[5\\]"):
        confusion_matrix(np.array([[5, 0]]), np.array([[1, 0]]), num_classes=5)
    confusion_matrix(np.array([[9, 0]]), np.array([[255, 0]]), num_classes=5)  # ignored pixel: anything goes
    with pytest.raises(ValueError, match="shape"):
        confusion_matrix(np.zeros((2, 2), int), np.zeros((2, 3), int))


def test_cityscapes_row_header_and_tables():
    names = cityscapes_class_names()
    assert len(names) == 19 and names[0] == "road" and names[6] == "traffic light" and names[-1] == "bicycle"
    header = miou_csv_header()
    assert ",".join(header) == (
        "variant,mIoU,aAcc,mAcc,road,sidewalk,building,wall,fence,pole,traffic light,traffic sign,vegetation,"
        "terrain,sky,person,rider,car,truck,bus,train,motorcycle,bicycle"
    )
    rng = np.random.default_rng(3)
    label = rng.integers(0, 18, size=(64, 64))  # class 18 (bicycle) absent from labels ...
    pred = np.where(rng.random(label.shape) < 0.8, label, rng.integers(0, 18, size=label.shape))  # ... and predictions
    m = ConfusionMatrix(19).update(pred, label).metrics()
    row = miou_row("b0", m)
    assert list(row) == header and row["variant"] == "b0"
    assert row["mIoU"] == m["mIoU"] and math.isnan(row["bicycle"]) and 0.5 < row["road"] <= 1.0
    text = miou_csv_text([row])
    lines = text.splitlines()
    assert lines[0] == ",".join(header) and len(lines) == 2
    fields = lines[1].split(",")
    assert fields[0] == "b0" and fields[-1] == "nan" and float(fields[1]) == row["mIoU"]  # exact round trip
    table = format_metrics_table(m)
    assert "| traffic light |" in table and f"{100 * m['mIoU']:.2f}" in table and "nan" in table
