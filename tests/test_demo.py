"""Demo dataset generator: Cityscapes layout and naming, determinism, every train class in each split,
labelIds/instanceIds as cityscapesscripts draws them, and the all-or-nothing write."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from cityscapesscripts.helpers.annotation import Annotation
from cityscapesscripts.helpers.labels import name2label
from cityscapesscripts.preparation.json2instanceImg import createInstanceImage
from cityscapesscripts.preparation.json2labelImg import createLabelImage

from segformer.convert.labels import json_to_train_ids
from segformer.demo import DEFAULT_CITIES, MANIFEST_NAME, base_label, generate_demo, writer
from segformer.io import read_image_rgb, read_label

REPO = Path(__file__).resolve().parents[1]
FILE_RE = re.compile(
    r"^(?P<kind>leftImg8bit|gtFine)/(?P<split>train|val)/(?P<city>[a-z]+)/"
    r"(?P=city)_\d{6}_\d{6}_(?P<suffix>leftImg8bit\.png|gtFine_polygons\.json|gtFine_labelIds\.png|gtFine_instanceIds\.png)$"
)


def dataset_files(root: Path) -> dict[str, bytes]:
    """The bytes of every file a demo's manifest lists, and of the manifest."""
    names = json.loads((root / MANIFEST_NAME).read_text())["files"] + [MANIFEST_NAME]
    return {name: (root / name).read_bytes() for name in names}


@pytest.fixture(scope="module")
def demo_root(tiny_dataset):
    """The session's tiny demo (tests/conftest.py) and the manifest generate_demo saved with it."""
    root = tiny_dataset["root"]
    return root, json.loads((root / MANIFEST_NAME).read_text())


def same_options(manifest, **changes) -> dict:
    """generate_demo keyword arguments that rebuild the dataset of `manifest` (with `changes`)."""
    options = dict(seed=manifest["seed"], width=manifest["width"], height=manifest["height"],
                   train_images=manifest["counts"]["train"], val_images=manifest["counts"]["val"])
    return {**options, **changes}


def frames(root: Path):
    return sorted(root.glob("gtFine/*/*/*_gtFine_polygons.json"))


def test_layout_and_naming(demo_root):
    root, manifest = demo_root
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    assert MANIFEST_NAME in files
    files.remove(MANIFEST_NAME)
    assert files == manifest["files"]
    counts = manifest["counts"]
    by_frame: dict[str, set] = {}
    for name in files:
        match = FILE_RE.match(name)
        assert match, f"not Cityscapes naming: {name}"
        frame = Path(name).name.rsplit("_", 2 if "gtFine" in Path(name).name else 1)[0]
        by_frame.setdefault((match["split"], frame), set()).add(match["suffix"])
    assert all(len(suffixes) == 4 for suffixes in by_frame.values())
    assert [sum(split == s for split, _ in by_frame) for s in ("train", "val")] == [counts["train"], counts["val"]]
    assert {p.name for p in (root / "leftImg8bit" / "val").iterdir()} == set(DEFAULT_CITIES["val"])


def test_sizes_are_consistent(demo_root):
    root, manifest = demo_root
    size = (manifest["height"], manifest["width"])
    for json_path in frames(root):
        annotation = json.loads(json_path.read_text())
        assert (annotation["imgHeight"], annotation["imgWidth"]) == size
        stem = str(json_path)[: -len("_polygons.json")]
        image = read_image_rgb(str(json_path.parent).replace("gtFine", "leftImg8bit") + "/"
                               + json_path.name.replace("_gtFine_polygons.json", "_leftImg8bit.png"))
        assert image.shape == (*size, 3)
        assert read_label(stem + "_labelIds.png").shape == size
        assert read_label(stem + "_instanceIds.png").shape == size


def test_labels_are_cityscapesscripts_drawings_of_the_json(demo_root):
    root, _ = demo_root
    for json_path in frames(root):
        annotation = Annotation()
        annotation.fromJsonFile(str(json_path))
        stem = str(json_path)[: -len("_polygons.json")]
        label_ids = read_label(stem + "_labelIds.png")
        assert label_ids.dtype == np.uint8
        np.testing.assert_array_equal(label_ids, np.asarray(createLabelImage(annotation, "ids")))
        instance_ids = read_label(stem + "_instanceIds.png")
        assert instance_ids.dtype == np.uint16  # 16-bit like the Cityscapes files
        np.testing.assert_array_equal(instance_ids, np.asarray(createInstanceImage(annotation, "ids")))


@pytest.mark.parametrize("split", ["train", "val"])
def test_every_train_class_in_each_split(demo_root, split):
    root, _ = demo_root
    present = set()
    for json_path in root.glob(f"gtFine/{split}/*/*_gtFine_polygons.json"):
        present |= set(np.unique(json_to_train_ids(json_path)).tolist())
    assert set(range(19)) <= present


def test_json_uses_groups_void_labels_plates_and_deletions(demo_root):
    root, _ = demo_root
    labels, deleted = set(), 0
    for json_path in frames(root):
        for obj in json.loads(json_path.read_text())["objects"]:
            labels.add(obj["label"])
            deleted += bool(obj.get("deleted"))
            assert len(obj["polygon"]) >= 3 and all(len(p) == 2 and isinstance(p[0], int) for p in obj["polygon"])
    assert labels & {"cargroup", "persongroup", "bicyclegroup"}
    assert {"ego vehicle", "license plate"} <= labels
    assert labels & {"static", "dynamic", "polegroup", "ground", "parking", "rail track", "guard rail"}
    assert deleted > 0
    assert all(base_label(name) in name2label for name in labels)


def test_images_are_textured_and_follow_the_labels(demo_root):
    """Not a colour lookup (classes vary inside), yet the classes differ: there is something to learn."""
    root, _ = demo_root
    pixels: dict[int, list] = {}
    for json_path in root.glob("gtFine/train/*/*_gtFine_polygons.json"):
        image_path = str(json_path).replace("gtFine", "leftImg8bit", 1).replace("_gtFine_polygons.json", "_leftImg8bit.png")
        image = read_image_rgb(image_path)
        train_ids = json_to_train_ids(json_path)
        for cls in (0, 2, 10):  # road, building, sky
            pixels.setdefault(cls, []).append(image[train_ids == cls].astype(np.float32))
    means = {cls: np.concatenate(v).mean(axis=0) for cls, v in pixels.items()}
    stds = {cls: np.concatenate(v).std(axis=0).mean() for cls, v in pixels.items()}
    assert all(s > 8 for s in stds.values()), stds
    assert np.abs(means[10] - means[0]).max() > 30 and np.abs(means[2] - means[10]).max() > 20, means


def test_deterministic_from_the_seed(demo_root, tmp_path):
    root, manifest = demo_root
    generate_demo(tmp_path / "same", **same_options(manifest))
    assert dataset_files(tmp_path / "same") == dataset_files(root)
    generate_demo(tmp_path / "other", **same_options(manifest, seed=manifest["seed"] + 1))
    other, ours = dataset_files(tmp_path / "other"), dataset_files(root)
    assert other.keys() == ours.keys()
    assert all(other[k] != v for k, v in ours.items() if k.endswith("_leftImg8bit.png"))


def test_refuses_a_non_empty_destination_unless_forced(tmp_path):
    small = dict(width=64, height=32, train_images=4, val_images=4)
    (tmp_path / "root").mkdir()  # an empty folder (as Snakemake makes for an output inside it) is fine
    generate_demo(tmp_path / "root", **small)
    with pytest.raises(FileExistsError, match="not empty"):
        generate_demo(tmp_path / "root", seed=3, **small)
    generate_demo(tmp_path / "root", seed=3, force=True, **small)
    assert json.loads((tmp_path / "root" / MANIFEST_NAME).read_text())["seed"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["root"]  # no temporary folders left


def test_a_failed_run_leaves_nothing(tmp_path, monkeypatch):
    calls = []
    real = writer.make_frame

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(writer, "make_frame", failing)
    with pytest.raises(RuntimeError, match="killed"):
        generate_demo(tmp_path / "root", width=64, height=32, train_images=4, val_images=4)
    assert list(tmp_path.iterdir()) == []


def test_too_few_frames_to_show_every_class(tmp_path):
    with pytest.raises(ValueError, match="at least 4 frames per split"):
        generate_demo(tmp_path / "root", train_images=8, val_images=3)
    assert not (tmp_path / "root").exists()


def test_cli(tmp_path):
    command = [sys.executable, str(REPO / "workflow_scripts" / "make_demo.py"), str(tmp_path / "d"),
               "--seed", "2", "--width", "64", "--height", "32", "--train", "4", "--val", "5"]
    first = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    manifest = json.loads((tmp_path / "d" / MANIFEST_NAME).read_text())
    assert manifest["counts"] == {"train": 4, "val": 5} and (manifest["width"], manifest["height"]) == (64, 32)
    again = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert again.returncode == 1 and "not empty" in again.stderr and "--force" in again.stderr
