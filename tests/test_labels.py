"""Label conversion: pixel-identical to the real csCreateTrainIdLabelImgs, and the stage's file handling.

The reference tool runs as a subprocess on a copy of tricky annotations (group labels, polegroup,
license plates, deleted objects, overlaps, polygons leaving the image, degenerate and float
polygons, random self-intersecting ones).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from cityscapesscripts.helpers.labels import labels as CS_LABELS

from segformer.convert.labels import AnnotationError, convert_dataset, json_to_train_ids
from segformer.data.cityscapes import read_split_list
from segformer.io import read_label, write_json, write_png

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "workflow_scripts" / "convert_dataset.py"
REFERENCE_TOOL = shutil.which("csCreateTrainIdLabelImgs") or str(Path(sys.executable).parent / "csCreateTrainIdLabelImgs")
W, H = 97, 61  # odd sizes catch width/height mix-ups


def poly(*points):
    return [list(p) for p in points]


def tricky_annotations() -> dict[str, dict]:
    """name -> annotation, each exercising one rule of the reference drawing."""
    rng = np.random.default_rng(7)
    anns = {
        "groups": [
            {"label": "road", "polygon": poly((-10, 30), (110, 30), (110, 70), (-10, 70))},
            {"label": "cargroup", "polygon": poly((5, 20), (40, 20), (40, 45), (5, 45))},
            {"label": "persongroup", "polygon": poly((45, 10), (60, 10), (60, 50))},
            {"label": "bicyclegroup", "polygon": poly((62, 40), (80, 40), (70, 55))},
            {"label": "ridergroup", "polygon": poly((82, 5), (95, 5), (95, 25))},
            {"label": "polegroup", "polygon": poly((20, 0), (24, 0), (24, 30), (20, 30))},
            {"label": "skygroup", "polygon": poly((0, 0), (15, 0), (0, 15))},
        ],
        "plate_deleted": [
            {"label": "car", "polygon": poly((10, 10), (80, 10), (80, 50), (10, 50))},
            {"label": "license plate", "polygon": poly((30, 35), (50, 35), (50, 45), (30, 45))},
            {"label": "person", "polygon": poly((0, 0), (96, 60), (0, 60)), "deleted": 1},
            {"label": "no such label", "polygon": poly((0, 0), (5, 5), (0, 5)), "deleted": True},
            {"label": "bus", "polygon": poly((60, 0), (96, 0), (96, 20)), "deleted": 0},
            {"label": "ego vehicle", "polygon": poly((-5, 55), (102, 52), (102, 70), (-5, 70))},
        ],
        "overlap_order": [
            {"label": "building", "polygon": poly((0, 0), (96, 0), (96, 60), (0, 60))},
            {"label": "car", "polygon": poly((10, 10), (60, 10), (60, 50), (10, 50))},
            {"label": "person", "polygon": poly((40, 5), (70, 5), (70, 55), (40, 55))},
            {"label": "road", "polygon": poly((0, 45), (96, 45), (96, 60), (0, 60))},
            {"label": "static", "polygon": poly((50, 20), (90, 20), (90, 40))},
        ],
        "outside": [
            {"label": "sky", "polygon": poly((-500, -300), (600, -300), (600, 20), (-500, 20))},
            {"label": "vegetation", "polygon": poly((-20, -20), (40, 30), (-20, 80))},
            {"label": "truck", "polygon": poly((200, 200), (300, 200), (300, 300))},  # fully outside
            {"label": "terrain", "polygon": poly((90, 50), (150, 50), (150, 100), (90, 100))},
            {"label": "train", "polygon": poly((-3, -3), (-1, -3), (-1, -1))},  # off the top-left corner
            {"label": "wall", "polygon": poly((96, 0), (97, 0), (97, 60), (96, 60))},  # last column and beyond
        ],
        "degenerate": [
            {"label": "road", "polygon": poly((3, 3), (90, 55))},  # two points: a line
            {"label": "fence", "polygon": poly((5, 50), (30, 40), (55, 30))},  # collinear
            {"label": "pole", "polygon": poly((70, 10), (70, 10))},  # two equal points
            {"label": "traffic sign", "polygon": poly((60, 5), (80, 5), (70, 5))},  # horizontal collinear
            {"label": "traffic light", "polygon": poly((88, 2), (88, 40), (88, 20))},  # vertical collinear
            {"label": "sidewalk", "polygon": [[10, 20, 99], [30, 20, 99], [20, 35, 99]]},  # 3-element points
        ],
        "floats": [
            {"label": "rider", "polygon": poly((10.5, 3.49), (60.51, 3.5), (40.2, 40.7), (7.5000001, 30.4999))},
            {"label": "motorcycle", "polygon": poly((50.5, 50.5), (90.49, 20.5), (95.9, 59.99))},
            {"label": "bicycle", "polygon": poly((-0.5, -0.5), (20.5, 0.49), (0.5, 20.51))},
            {"label": "bus", "polygon": poly((70.25, 30.75), (75.75, 30.25), (73.5, 35.5))},
        ],
    }
    names = [label.name for label in CS_LABELS] + ["cargroup", "persongroup", "polegroup"]
    for k in range(3):  # random self-intersecting polygons of every label, floats and ints mixed
        objects = []
        for _ in range(40):
            n = int(rng.integers(2, 9))
            pts = rng.uniform(-20, [W + 20, H + 20], (n, 2))
            pts = pts.round(int(rng.integers(0, 3))) if rng.uniform() < 0.5 else pts.round().astype(int)
            objects.append({"label": str(rng.choice(names)), "polygon": pts.tolist()})
        anns[f"random{k}"] = objects
    return {name: {"imgHeight": H, "imgWidth": W, "objects": objects} for name, objects in anns.items()}


def make_tree(root: Path, annotations: dict[str, dict], split: str = "val", city: str = "lindau") -> list[Path]:
    """Write each annotation as a Cityscapes frame (json + a stand-in image) and return the json paths."""
    paths = []
    for index, (name, annotation) in enumerate(sorted(annotations.items())):
        stem = f"{city}_{index:06d}_000019"
        path = root / "gtFine" / split / city / f"{stem}_gtFine_polygons.json"
        write_json(path, annotation)
        write_png(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", np.zeros((H, W, 3), np.uint8))
        paths.append(path)
    return paths


def run_reference(root: Path, workdir: Path) -> subprocess.CompletedProcess:
    """csCreateTrainIdLabelImgs on a copy of root (it writes beside the json); labels land in workdir/ref."""
    copy = workdir / "ref"
    shutil.copytree(root, copy)
    env = dict(os.environ, CITYSCAPES_DATASET=str(copy))
    return subprocess.run([REFERENCE_TOOL], env=env, capture_output=True, text=True, timeout=120)


def run_cli(*args) -> subprocess.CompletedProcess:
    command = [sys.executable, str(SCRIPT), *map(str, args), "--quiet"]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def snapshot(root: Path) -> dict:
    """Every file and folder under root with its mtime and content hash."""
    return {
        str(p.relative_to(root)): (p.stat().st_mtime_ns, p.is_file() and hashlib.sha256(p.read_bytes()).hexdigest())
        for p in sorted(root.rglob("*"))
    }


@pytest.fixture(scope="module")
def tricky(tmp_path_factory):
    """(source root, reference labels root, our labels root, our lists folder) after running both tools once."""
    work = tmp_path_factory.mktemp("tricky")
    source = work / "source"
    make_tree(source, tricky_annotations())
    before = snapshot(source)
    reference = run_reference(source, work)
    assert reference.returncode == 0, reference.stdout + reference.stderr
    ours = run_cli(source, "--nproc", 2, "--out_dir", work / "ours", "--lists_dir", work / "lists",
                   "--manifest", work / "lists" / "manifest.json")
    assert ours.returncode == 0, ours.stderr
    assert snapshot(source) == before, "--out_dir must leave the source tree untouched"
    return source, work / "ref", work / "ours", work / "lists"


def test_every_pixel_matches_csCreateTrainIdLabelImgs(tricky):
    source, ref, ours, _ = tricky
    ref_labels = sorted(ref.glob("gtFine/*/*/*_gtFine_labelTrainIds.png"))
    assert len(ref_labels) == len(tricky_annotations())
    for ref_label in ref_labels:
        relative = ref_label.relative_to(ref)
        expected = read_label(ref_label)
        assert expected.shape == (H, W)
        np.testing.assert_array_equal(read_label(ours / relative), expected, err_msg=str(relative))
        json_path = source / str(relative).replace("_labelTrainIds.png", "_polygons.json")
        np.testing.assert_array_equal(json_to_train_ids(json_path), expected, err_msg=str(relative))


def test_tricky_cases_really_exercise_the_rules(tricky):
    """Guards the fixture: the reference's labels show the rules each case is meant to exercise."""
    _, ref, _, _ = tricky
    order = sorted(tricky_annotations())

    def label(name):
        return read_label(ref / f"gtFine/val/lindau/lindau_{order.index(name):06d}_000019_gtFine_labelTrainIds.png")

    groups, plate, overlap = label("groups"), label("plate_deleted"), label("overlap_order")
    assert {13, 11, 18, 12, 10, 255} <= set(np.unique(groups).tolist())  # cargroup -> car, ..., skygroup -> sky
    assert groups[25, 10] == 13 and groups[25, 22] == 255  # polegroup: its own label (255), drawn over the car group
    assert plate[40, 40] == 13  # the license plate (id -1) is not drawn: the car stays
    assert plate[30, 5] == 255  # the deleted person is not drawn
    assert plate[2, 90] == 15  # "deleted": 0 is drawn
    assert overlap[50, 45] == 0 and overlap[30, 45] == 11 and overlap[30, 20] == 13  # later over earlier
    assert overlap[25, 80] == 255  # 'static' (void) drawn over the building


def test_split_lists_and_manifest(tricky):
    source, _, ours, lists = tricky
    pairs = read_split_list(lists / "val.txt")
    assert not (lists / "train.txt").exists()  # only splits present
    frames = sorted(p.name[: -len("_gtFine_polygons.json")] for p in source.glob("gtFine/val/*/*.json"))
    images = [(source / "leftImg8bit/val/lindau" / f"{f}_leftImg8bit.png").resolve() for f in frames]
    labels = [(ours / "gtFine/val/lindau" / f"{f}_gtFine_labelTrainIds.png").resolve() for f in frames]
    assert [img.resolve() for img, _ in pairs] == images
    assert [lbl.resolve() for _, lbl in pairs] == labels
    manifest = json.loads((lists / "manifest.json").read_text())
    assert manifest["counts"] == {"val": len(frames)}
    assert manifest["source_root"] == str(source.resolve())
    assert manifest["options"]["nproc"] == 2
    assert len(manifest["files"]) == len(frames) and all((ours / f).is_file() for f in manifest["files"])


def test_beside_mode_writes_next_to_the_json_like_the_reference(tmp_path):
    paths = make_tree(tmp_path, {k: v for k, v in tricky_annotations().items() if k in ("groups", "floats")})
    assert run_cli(tmp_path, "--nproc", 1).returncode == 0
    for path in paths:
        label = Path(str(path).replace("_polygons.json", "_labelTrainIds.png"))
        np.testing.assert_array_equal(read_label(label), json_to_train_ids(path))


def test_single_point_polygon_fails_in_both_tools(tmp_path):
    """The reference crashes on a one-point polygon (PIL needs two): we report that file and convert the rest."""
    bad = {"imgHeight": H, "imgWidth": W, "objects": [{"label": "car", "polygon": [[5, 5]]}]}
    anns = {"a_bad": bad, "b_good": tricky_annotations()["groups"]}
    make_tree(tmp_path / "src", anns)
    reference = run_reference(tmp_path / "src", tmp_path)
    assert reference.returncode != 0 and "Failed to convert" in reference.stdout
    result = run_cli(tmp_path / "src", "--out_dir", tmp_path / "out")
    assert result.returncode == 1
    assert "lindau_000000_000019_gtFine_polygons.json: object 0 ('car'): polygon has 1 point(s)" in result.stderr
    assert (tmp_path / "out/gtFine/val/lindau/lindau_000001_000019_gtFine_labelTrainIds.png").is_file()


def test_progress_bar_only_when_asked_or_on_a_terminal(tmp_path, capfd):
    make_tree(tmp_path / "src", {"a": tricky_annotations()["groups"]})
    convert_dataset(tmp_path / "src", tmp_path / "out", progress=True)
    assert "labelTrainIds: 100%" in capfd.readouterr().err
    convert_dataset(tmp_path / "src", tmp_path / "out", force=True)  # stderr is not a terminal here
    assert capfd.readouterr().err == ""


def test_incremental_and_force(tmp_path):
    paths = make_tree(tmp_path / "src", {k: tricky_annotations()[k] for k in ("groups", "floats", "outside")})
    out = tmp_path / "out"
    first = convert_dataset(tmp_path / "src", out, progress=False)
    assert len(first.converted) == 3 and not first.skipped and first.ok
    second = convert_dataset(tmp_path / "src", out, progress=False)
    assert not second.converted and len(second.skipped) == 3
    newer = first.converted[0].stat().st_mtime_ns + 10**9
    os.utime(paths[1], ns=(newer, newer))  # the json of frame 1 was edited after its label
    third = convert_dataset(tmp_path / "src", out, progress=False)
    assert [p.name for p in third.converted] == ["lindau_000001_000019_gtFine_labelTrainIds.png"]
    forced = convert_dataset(tmp_path / "src", out, nproc=2, force=True, progress=False)
    assert len(forced.converted) == 3 and not forced.skipped


def test_bad_input_is_reported_and_good_files_still_converted(tmp_path):
    src, out, lists = tmp_path / "src", tmp_path / "out", tmp_path / "lists"
    good = tricky_annotations()["groups"]
    paths = make_tree(src, {"a": good, "b": good, "c": good, "d": good, "e": good, "f": good})
    paths[1].write_text("{ not json")
    write_json(paths[2], {"imgHeight": H, "objects": []})
    saucer = {"label": "flying saucer", "polygon": [[0, 0], [5, 5], [0, 5]]}
    write_json(paths[3], {"imgHeight": H, "imgWidth": W, "objects": [saucer]})
    write_json(paths[4], {"imgHeight": H, "imgWidth": W, "objects": [{"label": "car", "polygon": "0,0 5,5"}]})
    lists.mkdir()
    (lists / "manifest.json").write_text("{}")  # stale, from an earlier run
    before = snapshot(src)
    result = run_cli(src, "--nproc", 2, "--out_dir", out, "--lists_dir", lists, "--manifest", lists / "manifest.json")
    assert result.returncode == 1
    for path, reason in [(paths[1], "not valid JSON"), (paths[2], "missing key(s) imgWidth"),
                         (paths[3], "unknown label 'flying saucer'"), (paths[4], "polygon must be a list")]:
        assert f"{path}: " in result.stderr and reason in result.stderr, (path, reason, result.stderr)
    assert "4 failed" in result.stderr
    converted = sorted(p.name for p in out.rglob("*.png"))
    assert converted == [p.name.replace("_polygons.json", "_labelTrainIds.png") for p in (paths[0], paths[5])]
    assert not (lists / "manifest.json").exists() and not (lists / "val.txt").exists()
    assert snapshot(src) == before
    with pytest.raises(AnnotationError, match="unknown label 'flying saucer'") as err:
        json_to_train_ids(paths[3])
    assert err.value.path == paths[3]


def test_missing_image_or_annotation_is_reported(tmp_path):
    good = tricky_annotations()["groups"]
    paths = make_tree(tmp_path, {"a": good, "b": good, "c": good})
    image_b = tmp_path / "leftImg8bit/val/lindau/lindau_000001_000019_leftImg8bit.png"
    image_b.unlink()
    orphan = tmp_path / "leftImg8bit/val/lindau/lindau_000009_000019_leftImg8bit.png"
    write_png(orphan, np.zeros((H, W, 3), np.uint8))
    odd = tmp_path / "leftImg8bit/val/lindau/snapshot_leftImg8bit.png"
    write_png(odd, np.zeros((H, W, 3), np.uint8))
    result = run_cli(tmp_path, "--lists_dir", tmp_path / "lists", "--manifest", tmp_path / "m.json")
    assert result.returncode == 1
    assert f"{odd}: file name is not CITY_SEQ_FRAME_leftImg8bit.png" in result.stderr
    assert f"{paths[1]}: no image for this annotation (expected {image_b})" in result.stderr
    assert f"{orphan}: no annotation for this image" in result.stderr
    assert not (tmp_path / "m.json").exists() and not (tmp_path / "lists").exists()
    assert len(list(tmp_path.rglob("*_labelTrainIds.png"))) == 3  # labels still converted


def test_empty_root_is_an_error(tmp_path):
    result = run_cli(tmp_path)
    assert result.returncode == 1 and "no gtFine/*/*/*_gtFine_polygons.json found" in result.stderr
