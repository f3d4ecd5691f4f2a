"""Evaluation: predict a split with a model, or score predictions already on disk, into a confusion
matrix (-> IoU, accuracy as mmseg computes them, see segformer.metrics).

Predictions are always compared with the label at its full resolution, never with a downscaled label.
Predictions on disk are train-id PNGs named `STEM_gray.png` (STEM = the image's file name without
`.png`), the names the rendering stage writes.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Sequence


from segformer.data.cityscapes import image_stem
from segformer.engine.inference import Progress, Segmenter
from segformer.io import read_image_rgb, read_train_ids
from segformer.metrics import ConfusionMatrix

log = logging.getLogger(__name__)

Pairs = Sequence[tuple[Path, Path]]


def evaluate_model(segmenter: Segmenter, pairs: Pairs, num_classes: int = 19) -> ConfusionMatrix:
    """Confusion matrix of the segmenter's predictions over (image, train-id label) pairs."""
    was_training = segmenter.net.training
    segmenter.net.set_train(False)
    matrix = ConfusionMatrix(num_classes)
    progress = Progress(len(pairs), "evaluated")
    for image_path, label_path in pairs:
        image, label = read_image_rgb(image_path), read_train_ids(label_path)
        if label.shape != image.shape[:2]:
            raise ValueError(f"{label_path}: label size {label.shape[::-1]} differs from its image "
                             f"{image_path} ({image.shape[1::-1]})")
        matrix.update(segmenter.predict(image), label)
        progress.step()
    segmenter.net.set_train(was_training)
    return matrix


def prediction_path(pred_dir: str | os.PathLike, image_path: str | os.PathLike) -> Path:
    return Path(pred_dir) / f"{image_stem(image_path)}_gray.png"


def score_predictions(pred_dir: str | os.PathLike, pairs: Pairs, num_classes: int = 19) -> ConfusionMatrix:
    """Confusion matrix of the `STEM_gray.png` files in pred_dir against the pairs' labels.

    Every frame needs its prediction, at its label's size: anything else is an error naming the file
    (a skipped frame would silently change the score).
    """
    predictions = [prediction_path(pred_dir, image) for image, _ in pairs]
    missing = [path for path in predictions if not path.is_file()]
    if missing:
        shown = ", ".join(str(p) for p in missing[:5])
        raise FileNotFoundError(f"{len(missing)} of {len(pairs)} predictions missing: {shown}"
                                + (" ..." if len(missing) > 5 else ""))
    matrix = ConfusionMatrix(num_classes)
    progress = Progress(len(pairs), "scored", every=100, compiles=False)
    for path, (_, label_path) in zip(predictions, pairs):
        prediction, label = read_train_ids(path), read_train_ids(label_path)
        if prediction.shape != label.shape:
            raise ValueError(f"{path}: prediction size {prediction.shape[::-1]} differs from its label "
                             f"{label_path} ({label.shape[::-1]})")
        try:
            matrix.update(prediction, label)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None
        progress.step()
    return matrix
