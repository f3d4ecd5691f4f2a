"""Atomic file output: a killed job never leaves a file that looks finished.

Every writer here writes to a temporary name in the destination folder and renames it into place
(os.replace is atomic on one filesystem), so readers see either the old file or the complete new one.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it to `path` if the block succeeds.

    The temporary name keeps the destination's suffix (or `suffix`) so that tools choosing a
    format by extension (cv2.imwrite, mindspore.save_checkpoint) behave as for the real name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix if suffix is None else suffix
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; the finished file gets the usual permissions
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_UMASK)  # again: MindSpore's savers make their files 0400
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; rename it to `path` if the block succeeds.

    `path` must not exist, or be an empty folder (which the rename replaces): nothing already there
    is overwritten. On failure the temporary folder and everything in it is removed.
    """
    path = Path(path)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise FileExistsError(f"{path}: exists and is not an empty folder")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_UMASK)  # mkdtemp makes 0700
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_png(path: str | os.PathLike, image: np.ndarray) -> None:
    """Write a uint8 image (H x W gray, or H x W x 3 in OpenCV's BGR order) as PNG, atomically."""
    ok, buf = cv2.imencode(".png", image)
    if not ok:
        raise OSError(f"{path}: PNG encoding failed for an array of shape {image.shape}, dtype {image.dtype}")
    write_bytes(path, buf.tobytes())


def read_image_rgb(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as H x W x 3 uint8 RGB; a clear error naming the file if it is unreadable."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise FileNotFoundError(f"{path}: cannot read image (missing or not an image)")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def read_train_ids(path: str | os.PathLike) -> np.ndarray:
    """A label or prediction PNG of train ids: single-channel and 8-bit, else an error naming the file."""
    label = read_label(path)
    if label.dtype != np.uint8:
        raise ValueError(f"{path}: train ids must be an 8-bit PNG, found dtype {label.dtype}")
    return label


def read_label(path: str | os.PathLike) -> np.ndarray:
    """Read a single-channel uint8 label PNG (train ids or label ids) exactly as stored."""
    label = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if label is None:
        raise FileNotFoundError(f"{path}: cannot read label image (missing or not an image)")
    if label.ndim != 2:
        raise ValueError(f"{path}: a label image must have one channel, found shape {label.shape}")
    return label
