"""Evaluation: predict a val split with a model and score it (confusion matrix -> IoU, accuracy).

`whole` inference as the official 512x1024 configs do it: the (optionally rescaled) image goes
through the network once, logits are resized bilinearly to the network input's size and then to the
label's full resolution (mmseg's encode_decode + rescale), and the argmax is scored against the
label at its original resolution — never against a downscaled label.
"""

from __future__ import annotations

import logging
import time

import mindspore as ms
import numpy as np
from mindspore import nn, ops

from segformer.data.dataset import build_eval_dataset
from segformer.metrics import ConfusionMatrix

log = logging.getLogger(__name__)


class WholeInference(nn.Cell):
    """image [1, 3, h, w] -> class logits at the label size [1, C, H, W] (eval mode, whole image)."""

    def __init__(self, net: nn.Cell):
        super().__init__(auto_prefix=False)  # keep the model's parameter names (a prefix would rename them)
        self.net = net

    def construct(self, image, label_height: int, label_width: int):
        logits = self.net(image)
        logits = ops.interpolate(logits, size=image.shape[2:], mode="bilinear", align_corners=False)
        if image.shape[2] != label_height or image.shape[3] != label_width:
            logits = ops.interpolate(logits, size=(label_height, label_width), mode="bilinear", align_corners=False)
        return logits


def evaluate_whole(net: nn.Cell, list_path, *, num_classes: int = 19, scale=None, jit: bool = True,
                   num_shards: int = 1, shard_id: int = 0) -> ConfusionMatrix:
    """Confusion matrix of `net` over the split list (this shard's part of it)."""
    was_training = net.training
    net.set_train(False)
    infer = WholeInference(net)
    forward = ms.jit(infer.construct) if jit else infer
    dataset = build_eval_dataset(list_path, scale=scale, num_shards=num_shards, shard_id=shard_id)
    matrix = ConfusionMatrix(num_classes)
    start = time.perf_counter()
    count = 0
    for image, label, _ in dataset.create_tuple_iterator(num_epochs=1):
        height, width = label.shape[1:]
        logits = forward(image, height, width)
        prediction = logits.argmax(axis=1).asnumpy()[0].astype(np.uint8)
        matrix.update(prediction, label.asnumpy()[0])
        count += 1
    log.info("evaluated %d images in %.1f s", count, time.perf_counter() - start)
    net.set_train(was_training)
    return matrix
