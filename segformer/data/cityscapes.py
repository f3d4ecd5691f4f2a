"""Cityscapes file layout: which files belong together, and the split lists the workflow writes.

Layout (https://github.com/mcordts/cityscapesScripts):
    leftImg8bit/{split}/{city}/{city}_{seq:06d}_{frame:06d}_leftImg8bit.png
    gtFine/{split}/{city}/{city}_{seq:06d}_{frame:06d}_gtFine_polygons.json
and beside each json the derived *_gtFine_labelIds.png, *_gtFine_instanceIds.png and (after
label conversion) *_gtFine_labelTrainIds.png.

A split list (train.txt, val.txt) has one `IMAGE<TAB>LABEL` line per frame, sorted, with paths
relative to the list file's own folder, so that a results tree can be moved or mounted elsewhere.
"""

from __future__ import annotations

import os
from pathlib import Path

IMAGE_SUFFIX = "_leftImg8bit.png"
POLYGONS_SUFFIX = "_gtFine_polygons.json"
LABEL_IDS_SUFFIX = "_gtFine_labelIds.png"
INSTANCE_IDS_SUFFIX = "_gtFine_instanceIds.png"
TRAIN_IDS_SUFFIX = "_gtFine_labelTrainIds.png"
SPLITS = ("train", "val", "test")
# The train id of every pixel that is not one of the 19 training classes: labels, loss and scores skip it.
IGNORE_INDEX = 255


def train_classes() -> list:
    """cityscapesscripts' Label records of the 19 training classes, in train-id order (never retyped)."""
    from cityscapesscripts.helpers.labels import labels

    by_id = {label.trainId: label for label in labels if 0 <= label.trainId < IGNORE_INDEX}
    return [by_id[i] for i in range(len(by_id))]


def frame_id(path: str | os.PathLike) -> str:
    """`munich_000005_000019` for any file of that frame (image, polygons, labels)."""
    name = Path(path).name
    parts = name.split("_")
    if len(parts) < 4:
        raise ValueError(f"{path}: not a Cityscapes file name (CITY_SEQ_FRAME_...)")
    return "_".join(parts[:3])


def image_stem(image_path: str | os.PathLike) -> str:
    """The image's file name without `.png`, e.g. `munich_000005_000019_leftImg8bit` (inference names)."""
    return Path(image_path).stem


def find_images(dataset_root: str | os.PathLike, split: str) -> list[Path]:
    return sorted(Path(dataset_root, "leftImg8bit", split).glob(f"*/*{IMAGE_SUFFIX}"))


def find_polygons(dataset_root: str | os.PathLike, split: str | None = None) -> list[Path]:
    pattern = f"{split or '*'}/*/*{POLYGONS_SUFFIX}"
    return sorted(Path(dataset_root, "gtFine").glob(pattern))


def image_path_for(dataset_root: str | os.PathLike, split: str, frame: str) -> Path:
    city = frame.split("_")[0]
    return Path(dataset_root, "leftImg8bit", split, city, frame + IMAGE_SUFFIX)


def train_ids_path_for(label_root: str | os.PathLike, split: str, frame: str) -> Path:
    """Where the train-id label of a frame lives under a gtFine tree rooted at `label_root`."""
    city = frame.split("_")[0]
    return Path(label_root, "gtFine", split, city, frame + TRAIN_IDS_SUFFIX)


def write_split_list(list_path: str | os.PathLike, pairs: list[tuple[Path, Path]]) -> None:
    """Write sorted IMAGE<TAB>LABEL lines, paths relative to the list's folder, atomically."""
    from segformer.io import write_text

    list_dir = Path(list_path).resolve().parent
    lines = sorted(
        f"{os.path.relpath(Path(img).resolve(), list_dir)}\t{os.path.relpath(Path(lbl).resolve(), list_dir)}"
        for img, lbl in pairs
    )
    write_text(list_path, "".join(line + "\n" for line in lines))


def read_split_list(list_path: str | os.PathLike) -> list[tuple[Path, Path]]:
    """Read a split list; paths come back resolved against the list's folder."""
    list_path = Path(list_path)
    if not list_path.is_file():
        raise FileNotFoundError(f"{list_path}: split list not found")
    list_dir = list_path.resolve().parent
    pairs = []
    for number, line in enumerate(list_path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != 2:
            raise ValueError(f"{list_path}:{number}: expected IMAGE<TAB>LABEL, got {line!r}")
        pairs.append((list_dir / fields[0], list_dir / fields[1]))
    if not pairs:
        raise ValueError(f"{list_path}: split list is empty")
    return pairs


def split_pairs_of(data_path: str | os.PathLike, split: str = "val") -> list[tuple[Path, Path]]:
    """(image, train-id label) pairs of a split, from a split list file or a Cityscapes root.

    A root must hold `*_gtFine_labelTrainIds.png` beside its polygons (as `convert_dataset.py ROOT`
    writes them); each image of leftImg8bit/{split} needs its label, else the error names the first missing.
    """
    data_path = Path(data_path)
    if data_path.is_file():
        return read_split_list(data_path)
    if not data_path.is_dir():
        raise FileNotFoundError(f"{data_path}: neither a split list nor a Cityscapes root")
    images = find_images(data_path, split)
    if not images:
        raise FileNotFoundError(f"{data_path}: no leftImg8bit/{split}/*/*{IMAGE_SUFFIX} images")
    pairs = [(image, train_ids_path_for(data_path, split, frame_id(image))) for image in images]
    missing = [label for _, label in pairs if not label.is_file()]
    if missing:
        raise FileNotFoundError(
            f"{missing[0]}: missing ({len(missing)} of {len(pairs)} {split} labels); "
            f"create them with: python workflow_scripts/convert_dataset.py {data_path}"
        )
    return pairs
