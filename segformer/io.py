"""Atomic file output: a killed job never leaves a file that looks finished.

Every writer here writes to a temporary name in the destination folder and renames it into place
(os.replace is atomic on one filesystem), so readers see either the old file or the complete new one.
"""

from __future__ import annotations

import contextlib
import errno
import glob
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


# Errors of a destination that cannot take the output (full disk, file size limit, read-only, no access).
_WRITE_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO}


class OutputError(OSError):
    """An output that could not be written; the message names it. Nothing is left that looks finished."""


@contextlib.contextmanager
def _naming_the_output(path: Path) -> Iterator[None]:
    try:
        yield
    except OutputError:
        raise
    except OSError as error:
        if error.errno not in _WRITE_ERRNOS:
            raise
        raise OutputError(error.errno, f"{path}: cannot be written ({os.strerror(error.errno)}); "
                                       f"nothing was written there") from error


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it to `path` if the block succeeds.

    The temporary name keeps the destination's suffix (or `suffix`) so that tools choosing a
    format by extension (cv2.imwrite, mindspore.save_checkpoint) behave as for the real name.
    """
    path = Path(path)
    suffix = path.suffix if suffix is None else suffix
    with _naming_the_output(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_leftovers(path)
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


def _remove_leftovers(path: Path) -> None:
    """Temporaries of `path` that a hard-killed earlier writer could not remove (one writer per target)."""
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp*"):
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; rename it to `path` if the block succeeds.

    `path` must not exist, or be an empty folder (which the rename replaces): nothing already there
    is overwritten. On failure the temporary folder and everything in it is removed.
    """
    path = Path(path)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise FileExistsError(f"{path}: exists and is not an empty folder")
    with _naming_the_output(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_leftovers(path)
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


class ImageReadError(ValueError):
    """An image file that exists but cannot be decoded (not an image, truncated, unreadable)."""


def read_image_rgb(path: str | os.PathLike) -> np.ndarray:
    """Read a PNG or JPEG file as H x W x 3 uint8 RGB; an error naming the file if it cannot be.

    Decoding is mmseg's LoadImageFromFile (mmcv.imfrombytes with flag 'color', cv2 backend), i.e.
    cv2.imdecode(IMREAD_COLOR), so the network sees what the authors' pipeline feeds it:
    - grayscale, gray + alpha, palette and 1-bit PNGs become 3 equal / looked-up channels;
    - alpha is dropped (the stored colours are kept, not composited over a background);
    - 16-bit PNGs keep their high byte (v >> 8, i.e. floor(v / 256): 65535 -> 255, never
      more than 1 level from round(v * 255 / 65535)); data that does not use the 16-bit range
      (12-bit sensors) therefore comes out dark, as in mmseg;
    - JPEG EXIF orientation is applied: the image is read as it is displayed, and every output of
      the rendering has that (displayed) size.
    libjpeg decodes a truncated JPEG without error (grey below the cut, a warning on stderr), so a
    JPEG whose markers do not reach its end-of-image marker is refused here; libpng already refuses a
    truncated PNG.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: image not found") from None
    except OSError as error:  # a folder, no permission, an I/O error
        raise ImageReadError(f"{path}: cannot read image file ({error.strerror or error})") from None
    if not data:
        raise ImageReadError(f"{path}: empty file, not an image")
    if data[:2] == _JPEG_SOI and not jpeg_reaches_its_end(data):
        raise ImageReadError(f"{path}: truncated or corrupt JPEG (its data stops before the end-of-image marker)")
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise ImageReadError(f"{path}: cannot decode image (not a PNG/JPEG image, or truncated or corrupt)")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


_JPEG_SOI = b"\xff\xd8"


def jpeg_reaches_its_end(data: bytes) -> bool:
    """Whether a JPEG stream's marker segments lead to its EOI marker (False: truncated or corrupt).

    Segments are skipped by their length (so an EXIF thumbnail's own EOI is never mistaken for the
    image's); after each SOS the entropy-coded data runs to the next marker that is neither a stuffed
    0xFF00 nor a restart marker. Bytes after the EOI (camera trailers) are allowed.
    """
    size = len(data)
    position = 2
    while True:
        if position >= size or data[position] != 0xFF:
            return False
        while position < size and data[position] == 0xFF:  # fill bytes before a marker
            position += 1
        if position >= size:
            return False
        marker = data[position]
        position += 1
        if marker == 0xD9:  # EOI
            return True
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:  # RSTn, TEM: no length
            continue
        if position + 2 > size:
            return False
        position += int.from_bytes(data[position:position + 2], "big")
        if marker == 0xDA:  # SOS: skip the entropy-coded data
            while True:
                position = data.find(b"\xff", position)
                if position < 0 or position + 1 >= size:
                    return False
                following = data[position + 1]
                if following == 0x00 or 0xD0 <= following <= 0xD7:
                    position += 2
                else:
                    break


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
