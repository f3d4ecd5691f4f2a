"""Cityscapes polygon annotations -> train-id label images, pixel-identical to `csCreateTrainIdLabelImgs`.

The reference (cityscapesscripts 2.3.0, preparation/json2labelImg.py) starts a PIL "L" canvas at the
train id of 'unlabeled' (255) and fills each object's polygon in file order with PIL's
ImageDraw.polygon: later objects over earlier ones, deleted objects skipped, an unknown label
ending in 'group' loses that suffix (cargroup -> car; 'polegroup' is a label of its own), labels
with id < 0 (license plate) not drawn. We do exactly that with the same PIL rasterizer and the same
coordinates, but parse the json directly (their Annotation class is slow), keep every input problem
as a message naming the file instead of exiting, encode the PNG with OpenCV (several times faster
than PIL's encoder; the pixels, not the file bytes, are what must match) and spread files over
processes.

Where the reference cannot draw a file at all (a polygon with fewer than two points, a malformed
point, an unknown label, missing keys) it stops the whole run with a traceback; we report that file
as an error and convert the rest.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from cityscapesscripts.helpers.labels import name2label
from PIL import Image, ImageDraw

from segformer.data.cityscapes import (
    IMAGE_SUFFIX,
    POLYGONS_SUFFIX,
    SPLITS,
    find_images,
    find_polygons,
    frame_id,
    image_path_for,
    train_ids_path_for,
    write_split_list,
)
from segformer.io import write_png

BACKGROUND_TRAIN_ID = name2label["unlabeled"].trainId


class AnnotationError(ValueError):
    """An annotation file that cannot be converted; str() is `PATH: reason`."""

    def __init__(self, path: str | os.PathLike, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = Path(path)
        self.reason = reason


def resolve_label(name: str):
    """The cityscapesscripts Label for an object's label name, as json2labelImg resolves it, or None.

    An unknown name ending in 'group' is looked up without the suffix (cargroup -> car); a known
    name is taken as is, so 'polegroup' stays its own label.
    """
    if name not in name2label and name.endswith("group"):
        name = name[: -len("group")]
    return name2label.get(name)


def read_annotation(json_path: str | os.PathLike) -> dict:
    """Parse a polygons json and check the keys the drawing needs; AnnotationError names the problem."""
    try:
        with open(json_path, encoding="utf-8") as f:
            annotation = json.load(f)
    except (OSError, UnicodeDecodeError) as err:
        raise AnnotationError(json_path, f"cannot read file ({err})") from None
    except json.JSONDecodeError as err:
        raise AnnotationError(json_path, f"not valid JSON ({err})") from None
    if not isinstance(annotation, dict):
        raise AnnotationError(json_path, f"expected a JSON object at top level, found {type(annotation).__name__}")
    missing = [key for key in ("imgWidth", "imgHeight", "objects") if key not in annotation]
    if missing:
        raise AnnotationError(json_path, f"missing key(s) {', '.join(missing)}")
    if not isinstance(annotation["objects"], list):
        raise AnnotationError(json_path, "'objects' must be a list")
    if annotation.get("ignore"):
        # The reference loads these as CsIgnore2d objects without a polygon and crashes on them.
        raise AnnotationError(json_path, "has 'ignore' regions, which csCreateTrainIdLabelImgs cannot draw")
    return annotation


def image_size(annotation: dict, source: str | os.PathLike = "<annotation>") -> tuple[int, int]:
    """(width, height) as the reference reads them: int() of imgWidth and imgHeight."""
    try:
        width, height = int(annotation["imgWidth"]), int(annotation["imgHeight"])
    except (TypeError, ValueError):
        raise AnnotationError(
            source, f"imgWidth/imgHeight must be integers, found {annotation['imgWidth']!r}/{annotation['imgHeight']!r}"
        ) from None
    if width <= 0 or height <= 0:
        raise AnnotationError(source, f"image size must be positive, found {width}x{height}")
    return width, height


def drawable_objects(annotation: dict, source: str | os.PathLike = "<annotation>"):
    """Yield (label, polygon) for each object the reference draws, in drawing order.

    polygon is a list of (x, y) tuples with the json's own numbers (the reference keeps the first
    two entries of each point); label is a cityscapesscripts Label with id >= 0.
    """
    for index, obj in enumerate(annotation["objects"]):
        where = f"object {index}"
        if not isinstance(obj, dict):
            raise AnnotationError(source, f"{where}: expected a JSON object, found {type(obj).__name__}")
        if obj.get("deleted"):
            continue
        if "label" not in obj or "polygon" not in obj:
            raise AnnotationError(source, f"{where}: needs 'label' and 'polygon'")
        name = str(obj["label"])
        label = resolve_label(name)
        if label is None:
            raise AnnotationError(source, f"{where}: unknown label {name!r} (not in cityscapesscripts.helpers.labels)")
        if label.id < 0:
            continue
        yield label, polygon_points(obj["polygon"], source, f"{where} ({name!r})")


def polygon_points(polygon, source, where: str) -> list[tuple]:
    if not isinstance(polygon, list):
        raise AnnotationError(source, f"{where}: polygon must be a list of [x, y] points")
    try:
        points = [(point[0], point[1]) for point in polygon]
    except (TypeError, IndexError, KeyError):
        raise AnnotationError(source, f"{where}: polygon must be a list of [x, y] points") from None
    if len(points) < 2:
        # PIL refuses these ("coordinate list must contain at least 2 coordinates"), so does the reference.
        raise AnnotationError(source, f"{where}: polygon has {len(points)} point(s); at least 2 are needed to draw it")
    return points


def draw_train_ids(annotation: dict, source: str | os.PathLike = "<annotation>") -> np.ndarray:
    """H x W uint8 train ids of a parsed annotation, drawn exactly as json2labelImg(..., 'trainIds')."""
    width, height = image_size(annotation, source)
    canvas = Image.new("L", (width, height), BACKGROUND_TRAIN_ID)
    drawer = ImageDraw.Draw(canvas)
    for label, points in drawable_objects(annotation, source):
        try:
            drawer.polygon(points, fill=label.trainId)
        except (TypeError, ValueError, OverflowError) as err:
            raise AnnotationError(source, f"cannot draw a polygon of label {label.name!r} ({err})") from None
    return np.asarray(canvas)


def json_to_train_ids(json_path: str | os.PathLike) -> np.ndarray:
    """The train-id label image (H x W uint8) of one polygons json."""
    return draw_train_ids(read_annotation(json_path), json_path)


@dataclass
class ConversionReport:
    """What convert_dataset did: labels written, labels already up to date, files that failed."""

    converted: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    errors: list[tuple[Path, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def summary(self) -> str:
        return f"{len(self.converted)} converted, {len(self.skipped)} up to date, {len(self.errors)} failed"


def label_path_for(json_path: Path, label_root: Path) -> Path:
    """Where the train-id label of a gtFine/SPLIT/CITY/*_gtFine_polygons.json goes under label_root."""
    split = json_path.parent.parent.name
    return train_ids_path_for(label_root, split, frame_id(json_path))


def is_up_to_date(label_path: Path, json_path: Path) -> bool:
    try:
        return label_path.stat().st_mtime_ns >= json_path.stat().st_mtime_ns
    except FileNotFoundError:
        return False


def _convert_one(task: tuple[Path, Path]) -> tuple[Path, Path, str | None]:
    """Worker: draw and write one label; returns (json, label, error reason or None)."""
    json_path, label_path = task
    try:
        write_png(label_path, json_to_train_ids(json_path))
    except AnnotationError as err:
        return json_path, label_path, err.reason
    except OSError as err:
        return json_path, label_path, f"cannot write {label_path} ({err})"
    except Exception as err:  # e.g. MemoryError for an absurd image size: one file must not stop the rest
        return json_path, label_path, f"{type(err).__name__}: {err}"
    return json_path, label_path, None


def convert_dataset(
    data_root: str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    nproc: int = 1,
    force: bool = False,
    progress: bool | None = None,
) -> ConversionReport:
    """Write a *_gtFine_labelTrainIds.png for every gtFine/*/*/*_gtFine_polygons.json under data_root.

    Labels go beside the json (like csCreateTrainIdLabelImgs), or with out_dir into a mirror
    out_dir/gtFine/SPLIT/CITY/ and nothing is written under data_root. A label whose file is at
    least as new as its json is skipped unless force. Files are spread over nproc processes.
    progress: a tqdm bar on stderr; None (default) shows it only when stderr is a terminal, as
    tqdm's own default does, so logs stay readable.
    """
    data_root = Path(data_root)
    label_root = Path(out_dir) if out_dir is not None else data_root
    report = ConversionReport()
    tasks = []
    for json_path in find_polygons(data_root):
        try:
            label_path = label_path_for(json_path, label_root)
        except ValueError:
            report.errors.append((json_path, f"file name is not CITY_SEQ_FRAME{POLYGONS_SUFFIX}"))
            continue
        if not force and is_up_to_date(label_path, json_path):
            report.skipped.append(label_path)
        else:
            tasks.append((json_path, label_path))

    results = _run_tasks(tasks, nproc)
    if tasks and (progress if progress is not None else sys.stderr.isatty()):
        from tqdm import tqdm  # imported only when shown: it is a sizeable part of a small run's start-up

        results = tqdm(results, total=len(tasks), desc="labelTrainIds", unit="img")
    for json_path, label_path, reason in results:
        if reason is None:
            report.converted.append(label_path)
        else:
            report.errors.append((json_path, reason))
    report.converted.sort()
    report.errors.sort()
    return report


def _run_tasks(tasks: list, nproc: int):
    if nproc <= 1 or len(tasks) <= 1:
        yield from map(_convert_one, tasks)
        return
    import multiprocessing

    # One file per message: a file takes milliseconds against microseconds of messaging, and no worker
    # sits idle at the end while another finishes a batch.
    with multiprocessing.Pool(min(nproc, len(tasks))) as pool:
        yield from pool.imap_unordered(_convert_one, tasks)


def split_pairs(data_root: str | os.PathLike, label_root: str | os.PathLike) -> tuple[dict, list]:
    """Pair each annotated frame's image with its train-id label, per split found under gtFine.

    Returns ({split: [(image, label), ...]}, errors) where errors lists (path, reason) for an
    annotation without its image and an image without its annotation.
    """
    pairs: dict[str, list[tuple[Path, Path]]] = {}
    errors: list[tuple[Path, str]] = []
    jsons_by_split: dict[str, dict[str, Path]] = {}
    for json_path in find_polygons(data_root):
        try:
            frame = frame_id(json_path)
        except ValueError:
            continue  # reported by convert_dataset already
        jsons_by_split.setdefault(json_path.parent.parent.name, {})[frame] = json_path
    for split, jsons in sorted(jsons_by_split.items()):
        images = {}
        for image_path in find_images(data_root, split):
            try:
                images[frame_id(image_path)] = image_path
            except ValueError:
                errors.append((image_path, f"file name is not CITY_SEQ_FRAME{IMAGE_SUFFIX}"))
        for frame, json_path in sorted(jsons.items()):
            if frame not in images:
                expected = image_path_for(data_root, split, frame)
                errors.append((json_path, f"no image for this annotation (expected {expected})"))
        for frame, image_path in sorted(images.items()):
            if frame not in jsons:
                expected = Path(data_root, "gtFine", split, frame.split("_")[0], frame + POLYGONS_SUFFIX)
                errors.append((image_path, f"no annotation for this image (expected {expected})"))
        pairs[split] = [
            (images[frame], train_ids_path_for(label_root, split, frame)) for frame in sorted(jsons) if frame in images
        ]
    return pairs, errors


def write_split_lists(lists_dir: str | os.PathLike, pairs: dict) -> dict[str, Path]:
    """Write LISTS_DIR/{split}.txt for each Cityscapes split present; returns {split: path}."""
    written = {}
    for split in SPLITS:
        if pairs.get(split):
            list_path = Path(lists_dir, f"{split}.txt")
            write_split_list(list_path, pairs[split])
            written[split] = list_path
    return written
