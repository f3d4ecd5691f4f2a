"""Inference rendering: predictions drawn the way Cityscapes users look at them and submit them.

For each image STEM (its file name without the extension, e.g. `munich_000005_000019_leftImg8bit`):
- `STEM_gray.png`: train ids 0..18 (what evaluate.py --pred_dir scores);
- `STEM_color.png`: the Cityscapes palette (colours from cityscapesscripts.helpers.labels);
- `STEM_overlap.png`: the colours over the original image at its own resolution, alpha 0.5;
- `labelIds/STEM_labelIds.png`: label ids, the format of the Cityscapes test server and of
  csEvalPixelLevelSemanticLabeling, alone in their folder (that tool takes every png whose name
  starts with the frame id as a prediction and refuses two for one frame).
Every output has its image's size as read (segformer.io.read_image_rgb: any PNG colour type or bit
depth and JPEG, EXIF orientation applied, so the displayed size).
The output folder is built under a temporary name and renamed into place when every image is done.
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from segformer.data.cityscapes import image_stem, read_split_list, train_classes
from segformer.engine.inference import Progress, Segmenter
from segformer.io import atomic_folder, read_image_rgb, write_png

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
LABEL_IDS_FOLDER = "labelIds"


@functools.lru_cache(maxsize=1)
def train_id_tables() -> tuple[np.ndarray, np.ndarray]:
    """(colour RGB [256, 3] uint8, label id [256] uint8) indexed by train id; 255 and unused ids map to
    black / 0 ('unlabeled'). From cityscapesscripts' label table, never retyped."""
    colours = np.zeros((256, 3), np.uint8)
    label_ids = np.zeros(256, np.uint8)
    for label in train_classes():
        colours[label.trainId] = label.color
        label_ids[label.trainId] = label.id
    return colours, label_ids


def render(image: np.ndarray, train_ids: np.ndarray) -> dict[str, np.ndarray]:
    """{'gray', 'color', 'overlap', 'labelIds'} arrays ready for write_png (colour ones in BGR)."""
    colours, label_ids = train_id_tables()
    color_rgb = colours[train_ids]
    over_image = color_rgb
    if over_image.shape[:2] != image.shape[:2]:
        over_image = cv2.resize(color_rgb, image.shape[1::-1], interpolation=cv2.INTER_NEAREST)
    overlap_rgb = cv2.addWeighted(image, 0.5, over_image, 0.5, 0.0)
    return {
        "gray": train_ids,
        "color": cv2.cvtColor(color_rgb, cv2.COLOR_RGB2BGR),
        "overlap": cv2.cvtColor(overlap_rgb, cv2.COLOR_RGB2BGR),
        "labelIds": label_ids[train_ids],
    }


def output_paths(out_dir: str | os.PathLike, stem: str) -> dict[str, Path]:
    out_dir = Path(out_dir)
    paths = {kind: out_dir / f"{stem}_{kind}.png" for kind in ("gray", "color", "overlap")}
    paths["labelIds"] = out_dir / LABEL_IDS_FOLDER / f"{stem}_labelIds.png"
    return paths


def is_image_file(path: str | os.PathLike) -> bool:
    """A png/jpg/jpeg name, in any case (photo.JPG, scan.Png)."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def images_to_render(source: str | os.PathLike, limit: int = 0) -> list[Path]:
    """The images to render, sorted; the first `limit` if it is positive. `source` is one image file
    (png/jpg/jpeg by its name, any case), a split list (IMAGE<TAB>LABEL) or a folder (png/jpg/jpeg in
    any case, recursive, hidden files and folders skipped). Two images with one stem are an error."""
    source = Path(source)
    if source.is_file() and is_image_file(source):
        images = [source]
    elif source.is_file():
        try:
            images = [image for image, _ in read_split_list(source)]
        except UnicodeDecodeError:
            raise ValueError(f"{source}: neither a png/jpg image (by its name) nor a split list "
                             f"(IMAGE<TAB>LABEL text)") from None
    elif source.is_dir():
        images = sorted(p for p in source.rglob("*") if is_image_file(p) and p.is_file()
                        and not any(part.startswith(".") for part in p.relative_to(source).parts))
    else:
        raise FileNotFoundError(f"{source}: neither an image, an image folder nor a split list")
    if not images:
        raise FileNotFoundError(f"{source}: no images (png/jpg/jpeg) found")
    images = sorted(images)[: limit or None]
    seen: dict[str, Path] = {}
    for image in images:
        stem = image_stem(image)
        if stem in seen:
            raise ValueError(f"{image} and {seen[stem]} share the name {stem!r}: their outputs would collide")
        seen[stem] = image
    return images


def check_images(images: Sequence[Path]) -> None:
    """Decode every image once before the model is loaded, so that a folder with a truncated or
    foreign file fails in seconds naming all of them, not hours later at the first one."""
    problems = []
    for image_path in images:
        try:
            read_image_rgb(image_path)
        except (OSError, ValueError) as error:
            problems.append(str(error))
    if problems:
        raise ValueError(f"{len(problems)} of {len(images)} images cannot be read (nothing rendered):\n  "
                         + "\n  ".join(problems))


def render_images(segmenter: Segmenter, images: Sequence[Path], out_dir: str | os.PathLike) -> None:
    """Predict and draw every image into out_dir, which appears only when all are done (it must not
    exist yet, or be empty: nothing of the user's is overwritten)."""
    with atomic_folder(out_dir) as staging:
        progress = Progress(len(images), "rendered")
        for image_path in images:
            image = read_image_rgb(image_path)
            drawn = render(image, segmenter.predict(image))
            for kind, path in output_paths(staging, image_stem(image_path)).items():
                write_png(path, drawn[kind])
            progress.step()


def write_preview(out_dir: str | os.PathLike, images: Sequence[Path], out_png: str | os.PathLike,
                  count: int = 4, width: int = 512) -> None:
    """A one-file glance for the report: the first `count` overlays stacked, each `width` wide, above a
    legend of the class colours."""
    colours, _ = train_id_tables()
    tiles = []
    for image_path in images[:count]:
        overlap = cv2.imread(str(output_paths(out_dir, image_stem(image_path))["overlap"]), cv2.IMREAD_COLOR)
        height = max(1, round(overlap.shape[0] * width / overlap.shape[1]))
        tiles.append(cv2.resize(overlap, (width, height), interpolation=cv2.INTER_AREA))
    tiles.append(_legend(colours, width))
    write_png(out_png, np.concatenate(tiles, axis=0))


def _legend(colours: np.ndarray, width: int, row_height: int = 18, columns: int = 2) -> np.ndarray:
    """Class names beside their colours (BGR), in `columns` columns."""
    from segformer.metrics import cityscapes_class_names

    names = cityscapes_class_names()
    rows = -(-len(names) // columns)
    legend = np.full((rows * row_height + 4, width, 3), 255, np.uint8)
    column_width = width // columns
    for train_id, name in enumerate(names):
        x, y = (train_id // rows) * column_width + 4, (train_id % rows) * row_height + 2
        legend[y:y + row_height - 4, x:x + 24] = colours[train_id][::-1]
        cv2.putText(legend, name, (x + 30, y + row_height - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1,
                    cv2.LINE_AA)
    return legend
