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

_FLOAT32_EPS = float(np.finfo(np.float32).eps)


class SegCrossEntropyLoss(nn.Cell):
    """``loss = SegCrossEntropyLoss()(logits, labels)`` with logits [N, C, h, w] and labels [N, H, W] (int).

    Returns a float32 scalar. Labels must be class indices in [0, C) or ``ignore_index``. Runs in graph
    and PyNative mode; computed in float32 whatever the logits' dtype (mmseg's ``force_fp32``).
    """

    def __init__(self, ignore_index: int = IGNORE_INDEX, avg_non_ignore: bool = False, loss_weight: float = 1.0,
                 align_corners: bool = False):
        super().__init__()
        self.ignore_index = int(ignore_index)
        self.avg_non_ignore = bool(avg_non_ignore)
        self.loss_weight = float(loss_weight)
        self.align_corners = bool(align_corners)

    def pixel_losses(self, logits, labels):
        """Per-pixel loss [N, H, W] (0 where the label is ignored) and the float mask of labelled pixels."""
        logits = ops.cast(logits, ms.float32)
        labels = ops.cast(labels, ms.int32)
        size = labels.shape[-2:]
        if logits.shape[-2:] != size:
            logits = ops.interpolate(logits, size=size, mode="bilinear", align_corners=self.align_corners)
        log_probs = ops.log_softmax(logits, axis=1)
        valid = labels != self.ignore_index
        safe_labels = ops.select(valid, labels, ops.zeros_like(labels))
        picked = ops.gather_elements(log_probs, 1, ops.expand_dims(safe_labels, 1)).squeeze(1)
        mask = ops.cast(valid, ms.float32)
        return -picked * mask, mask

    def construct(self, logits, labels):
        losses, mask = self.pixel_losses(logits, labels)
        if self.avg_non_ignore:
            loss = losses.sum() / (mask.sum() + _FLOAT32_EPS)
        else:
            loss = losses.mean()
        return loss * self.loss_weight
