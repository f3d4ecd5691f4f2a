"""Segmentation cross-entropy of the official recipe (mmseg 0.x ``CrossEntropyLoss`` in ``decode_head.losses``).

The head's logits (H/4 x W/4) are resized bilinearly (align_corners False) to the label's size, then
per-pixel cross-entropy with ignore index 255, no class weights. mmseg 0.x computes the per-pixel loss
with ``reduction='none'`` (ignored pixels give 0) and then takes the plain mean over ALL pixels, so
ignored pixels (including the 255 padding of crops) count in the denominator. ``avg_non_ignore=True``
(added in mmseg 0.23, off by default) divides by the number of labelled pixels instead, as mmseg does:
``sum / (n_labelled + float32 eps)``, which is 0 when nothing is labelled.
"""

from __future__ import annotations

import numpy as np

import mindspore as ms
from mindspore import nn, ops

from segformer.data.cityscapes import IGNORE_INDEX
from segformer.models.layers import after
from segformer.models.resize import BilinearResize

_FLOAT32_EPS = float(np.finfo(np.float32).eps)


class PixelCrossEntropy(nn.Cell):
    """-log softmax(logits)[label] per pixel: logits [N, C, H, W] float32, labels [N, H, W] int32 in [0, C).

    The backward is written out, softmax(logits) - one_hot(label) times each pixel's output gradient:
    MindSpore's CPU LogSoftmaxGrad over the class axis took 1.4 s of b0's 12 s training step at 1024 x 1024
    (about 70 ns per logit); this is the log-softmax again, exp, a one-hot and two same-shape elementwise
    kernels (the pixel's gradient broadcast explicitly: a broadcasting Mul keeps 16 bytes per element
    allocated on CPU).
    Primitives made here: functional wrappers can fail to compile inside a bprop (docs/platform_notes.md)."""

    def __init__(self):
        super().__init__()
        self.log_softmax = ops.LogSoftmax(axis=1)
        self.exp = ops.Exp()
        self.gather = ops.GatherD()
        self.one_hot = ops.OneHot(axis=1)
        self.zeros_like = ops.ZerosLike()
        self.on = ms.Tensor(1.0, ms.float32)
        self.off = ms.Tensor(0.0, ms.float32)

    def construct(self, logits, labels):
        batch, _, height, width = logits.shape
        picked = self.gather(self.log_softmax(logits), 1, labels.reshape(batch, 1, height, width))
        return -picked.reshape(batch, height, width)

    def bprop(self, logits, labels, out, dout):
        batch, classes, height, width = logits.shape
        probabilities = self.exp(self.log_softmax(after(logits, dout)))   # as PyTorch's; Softmax(axis=1) is 8x slower
        pixel_grad = ops.broadcast_to(dout.reshape(batch, 1, height, width), logits.shape)
        return (probabilities - self.one_hot(labels, classes, self.on, self.off)) * pixel_grad, self.zeros_like(labels)


class SegCrossEntropyLoss(nn.Cell):
    """``loss = SegCrossEntropyLoss()(logits, labels)`` with logits [N, C, h, w] and labels [N, H, W] (int).

    Returns a float32 scalar. Labels must be class indices in [0, C) or ``ignore_index``. Runs in graph
    and PyNative mode; computed in float32 whatever the logits' dtype (mmseg's ``force_fp32``). The resize
    follows the device's formulation (segformer.models.resize: matrix products on CPU).
    """

    def __init__(self, ignore_index: int = IGNORE_INDEX, avg_non_ignore: bool = False, loss_weight: float = 1.0,
                 align_corners: bool = False, formulation: str = "auto"):
        super().__init__()
        self.ignore_index = int(ignore_index)
        self.avg_non_ignore = bool(avg_non_ignore)
        self.loss_weight = float(loss_weight)
        self.align_corners = bool(align_corners)
        self.resize = BilinearResize(self.align_corners, formulation)
        self.pixel_cross_entropy = PixelCrossEntropy()

    def pixel_losses(self, logits, labels):
        """Per-pixel loss [N, H, W] (0 where the label is ignored) and the float mask of labelled pixels."""
        logits = ops.cast(logits, ms.float32)
        labels = ops.cast(labels, ms.int32)
        logits = self.resize(logits, labels.shape[-2:])
        valid = labels != self.ignore_index
        safe_labels = ops.select(valid, labels, ops.zeros_like(labels))
        mask = ops.cast(valid, ms.float32)
        return self.pixel_cross_entropy(logits, safe_labels) * mask, mask

    def construct(self, logits, labels):
        losses, mask = self.pixel_losses(logits, labels)
        if self.avg_non_ignore:
            loss = losses.sum() / (mask.sum() + _FLOAT32_EPS)
        else:
            loss = losses.mean()
        return loss * self.loss_weight
