"""Segmentation metrics as mmseg 0.x computes them: a confusion matrix summed over the dataset, then
per-class IoU and accuracy, aAcc, mAcc, mIoU; plus the results row of ``results/{v}/miou.csv`` and a
printable per-class table.

Pixels whose label is the ignore index (255) are left out entirely, predictions there included.
IoU_c = intersection / union summed over all images (not a mean of per-image IoUs); a class absent
from both ground truth and prediction has IoU NaN (0/0) and is skipped by the nan-mean, like mmseg;
a class absent from the ground truth but predicted has IoU 0. Acc_c = intersection / ground-truth
pixels of c (NaN when c never occurs in the ground truth); aAcc = correct / labelled pixels.
"""

from __future__ import annotations

import math
from typing import Dict, Iterable, List, Mapping, Optional, Sequence

import numpy as np

from segformer.data.cityscapes import IGNORE_INDEX, train_classes

def cityscapes_class_names() -> List[str]:
    """The 19 Cityscapes training classes in train-id order."""
    return [label.name for label in train_classes()]


def miou_csv_header(class_names: Optional[Sequence[str]] = None) -> List[str]:
    """Columns of ``results/{v}/miou.csv``: variant, mIoU, aAcc, mAcc, then one IoU column per class."""
    names = list(cityscapes_class_names() if class_names is None else class_names)
    return ["variant", "mIoU", "aAcc", "mAcc", *names]


def confusion_matrix(pred, label, num_classes: int = 19, ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """[num_classes, num_classes] int64 counts, rows = ground truth, columns = prediction.

    ``pred`` and ``label`` are integer arrays of the same shape (any number of images). Labels other
    than [0, num_classes) and ``ignore_index``, or predictions outside [0, num_classes) at labelled
    pixels, are errors (they would silently vanish from the counts otherwise).
    """
    pred = np.asarray(pred)
    label = np.asarray(label)
    if pred.shape != label.shape:
        raise ValueError(f"confusion_matrix: prediction shape {pred.shape} != label shape {label.shape}")
    if not (np.issubdtype(pred.dtype, np.integer) and np.issubdtype(label.dtype, np.integer)):
        raise TypeError(f"confusion_matrix: integer arrays expected, got {pred.dtype} and {label.dtype}")
    keep = label != ignore_index
    gt = label[keep].astype(np.int64)
    pr = pred[keep].astype(np.int64)
    if gt.size and (gt.min() < 0 or gt.max() >= num_classes):
        bad = np.unique(gt[(gt < 0) | (gt >= num_classes)])[:10].tolist()
        raise ValueError(f"confusion_matrix: label values {bad} are neither in [0, {num_classes}) nor {ignore_index}")
    if pr.size and (pr.min() < 0 or pr.max() >= num_classes):
        bad = np.unique(pr[(pr < 0) | (pr >= num_classes)])[:10].tolist()
        raise ValueError(f"confusion_matrix: prediction values {bad} outside [0, {num_classes})")
    counts = np.bincount(gt * num_classes + pr, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes).astype(np.int64)


class ConfusionMatrix:
    """Accumulates ``confusion_matrix`` over a dataset; ``+`` merges partial results (e.g. per process)."""

    def __init__(self, num_classes: int = 19, ignore_index: int = IGNORE_INDEX, matrix=None):
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        if matrix is None:
            matrix = np.zeros((self.num_classes, self.num_classes), np.int64)
        matrix = np.asarray(matrix, dtype=np.int64)
        if matrix.shape != (self.num_classes, self.num_classes):
            raise ValueError(f"ConfusionMatrix: matrix shape {matrix.shape} != ({num_classes}, {num_classes})")
        self.matrix = matrix.copy()

    def update(self, pred, label) -> "ConfusionMatrix":
        self.matrix += confusion_matrix(pred, label, self.num_classes, self.ignore_index)
        return self

    def __add__(self, other: "ConfusionMatrix") -> "ConfusionMatrix":
        if (other.num_classes, other.ignore_index) != (self.num_classes, self.ignore_index):
            raise ValueError("ConfusionMatrix: cannot add matrices of different classes / ignore index")
        return ConfusionMatrix(self.num_classes, self.ignore_index, self.matrix + other.matrix)

    def metrics(self) -> Dict[str, object]:
        return metrics_from_confusion(self.matrix)


def metrics_from_confusion(matrix) -> Dict[str, object]:
    """mmseg's numbers from a confusion matrix, as fractions.

    Returns ``aAcc``, ``mIoU``, ``mAcc`` (floats) and per class ``IoU``, ``Acc`` (float arrays, NaN
    where undefined), ``area_intersect``, ``area_union``, ``area_label``, ``area_pred`` (int arrays).
    """
    m = np.asarray(matrix, dtype=np.int64)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"metrics_from_confusion: square matrix expected, got shape {m.shape}")
    intersect = np.diag(m)
    area_label = m.sum(axis=1)
    area_pred = m.sum(axis=0)
    union = area_label + area_pred - intersect
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = intersect / union.astype(np.float64)
        acc = intersect / area_label.astype(np.float64)
    total = area_label.sum()
    a_acc = float(intersect.sum() / total) if total else float("nan")
    return {
        "aAcc": a_acc,
        "mIoU": _nanmean(iou),
        "mAcc": _nanmean(acc),
        "IoU": iou,
        "Acc": acc,
        "area_intersect": intersect,
        "area_union": union,
        "area_label": area_label,
        "area_pred": area_pred,
    }


def _nanmean(values: np.ndarray) -> float:
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else float("nan")


def miou_row(variant: str, metrics: Mapping[str, object], class_names: Optional[Sequence[str]] = None) -> Dict[str, object]:
    """One ``miou.csv`` row as an ordered dict (keys = ``miou_csv_header``), values as fractions."""
    names = list(cityscapes_class_names() if class_names is None else class_names)
    iou = np.asarray(metrics["IoU"], dtype=np.float64)
    if iou.shape != (len(names),):
        raise ValueError(f"miou_row: {iou.size} class IoUs for {len(names)} class names")
    row: Dict[str, object] = {"variant": variant}
    for key in ("mIoU", "aAcc", "mAcc"):
        row[key] = float(metrics[key])
    for name, value in zip(names, iou):
        row[name] = float(value)
    return row


def _csv_field(value) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else repr(value)
    text = str(value)
    if any(c in text for c in ',"\n'):
        text = '"' + text.replace('"', '""') + '"'
    return text


def miou_csv_text(rows: Iterable[Mapping[str, object]], class_names: Optional[Sequence[str]] = None) -> str:
    """CSV text (header + rows) for ``miou.csv`` / ``summary.csv``; floats round-trip exactly, NaN as ``nan``."""
    header = miou_csv_header(class_names)
    lines = [",".join(header)]
    for row in rows:
        missing = [k for k in header if k not in row]
        if missing:
            raise ValueError(f"miou_csv_text: row {row.get('variant')!r} lacks columns {missing}")
        lines.append(",".join(_csv_field(row[k]) for k in header))
    return "\n".join(lines) + "\n"


def _percent(value: float) -> str:
    return "nan" if math.isnan(value) else f"{100.0 * value:.2f}"


def format_metrics_table(metrics: Mapping[str, object], class_names: Optional[Sequence[str]] = None) -> str:
    """mmseg-style text tables for a log: per-class IoU / Acc, then aAcc / mIoU / mAcc, in percent."""
    names = list(cityscapes_class_names() if class_names is None else class_names)
    iou = np.asarray(metrics["IoU"], dtype=np.float64)
    acc = np.asarray(metrics["Acc"], dtype=np.float64)
    per_class = [[name, _percent(i), _percent(a)] for name, i, a in zip(names, iou, acc)]
    summary = [[_percent(float(metrics["aAcc"])), _percent(float(metrics["mIoU"])), _percent(float(metrics["mAcc"]))]]
    return (
        "per class results:\n" + _table(["Class", "IoU", "Acc"], per_class)
        + "\nSummary:\n" + _table(["aAcc", "mIoU", "mAcc"], summary)
    )


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(x)) for x in column) for column in zip(header, *rows)]
    rule = "+" + "+".join("-" * (w + 2) for w in widths) + "+"

    def line(cells):
        return "|" + "|".join(f" {str(c):<{w}} " for c, w in zip(cells, widths)) + "|"

    return "\n".join([rule, line(header), rule, *(line(r) for r in rows), rule])
