"""The evaluation, rendering and export stages as a user runs them: workflow_scripts/evaluate.py, infer.py
and export.py in subprocesses (sys.executable, cwd = the repository), on the tiny demo dataset and the one
tiny b0 trained by conftest.

Each script start imports MindSpore and compiles a graph, so the expensive runs (one rendering of the val
list, one model evaluation, one export, ...) are module-scoped fixtures shared by many assertions, and the
cheap failing runs are started side by side.

Reference points that do not come from our own code: cityscapesscripts' csEvalPixelLevelSemanticLabeling
(the official evaluator, on the rendered labelIds) and its label table (colours and label ids).
"""

import csv
import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from segformer.data.cityscapes import image_stem, read_split_list
from segformer.metrics import cityscapes_class_names

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "workflow_scripts"
OFFICIAL_EVALUATOR = Path(sys.executable).parent / "csEvalPixelLevelSemanticLabeling"
TOL = 1e-6
EXPORT_HEIGHT, EXPORT_WIDTH = 64, 128
SLIDE_SETTINGS = '{"mode":"slide","crop_size":[48,48],"stride":[32,32]}'
MULTI_SCALE_SETTINGS = '{"ratios":[0.75,1.0],"flip":true}'


# ---------------------------------------------------------------------------------------------------------
# Helpers.

def script_command(script: str, *args) -> list[str]:
    return [sys.executable, str(SCRIPTS / script), *map(str, args)]


def run_script(script: str, *args, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run(script_command(script, *args), capture_output=True, text=True, cwd=ROOT, timeout=timeout)


def run_scripts_side_by_side(commands: dict, timeout=300) -> dict:
    """{key: CompletedProcess} for {key: (script, *args)}, the processes running at the same time (most of
    a failing run is MindSpore's import, which two cores can overlap)."""
    started = {key: subprocess.Popen(script_command(*command), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, cwd=ROOT) for key, command in commands.items()}
    finished = {}
    for key, process in started.items():
        stdout, stderr = process.communicate(timeout=timeout)
        finished[key] = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
    return finished


def output_of(result: subprocess.CompletedProcess) -> str:
    return f"exit {result.returncode}\nstdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-5000:]}"


def read_row(csv_path: Path) -> dict[str, str]:
    """The one row of a miou.csv, values as written."""
    with open(csv_path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 1, f"{csv_path}: {len(rows)} rows"
    return rows[0]


def row_values(row: dict[str, str]) -> dict[str, float]:
    return {key: float(value) for key, value in row.items() if key != "variant"}


def assert_valid_row(row: dict[str, str]) -> None:
    """19 class IoUs in [0, 1] or NaN, mIoU their NaN-mean, accuracies in [0, 1]."""
    names = cityscapes_class_names()
    assert list(row) == ["variant", "mIoU", "aAcc", "mAcc", *names]
    values = row_values(row)
    ious = np.array([values[name] for name in names])
    present = ious[~np.isnan(ious)]
    assert present.size > 0 and np.all((present >= 0) & (present <= 1)), ious
    assert math.isclose(values["mIoU"], float(present.mean()), abs_tol=1e-12)
    assert 0 <= values["aAcc"] <= 1 and 0 <= values["mAcc"] <= 1, values


def same_value(a: float, b: float, tol: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or abs(a - b) <= tol


def val_stems(val_list: Path) -> list[str]:
    return [image_stem(image) for image, _ in read_split_list(val_list)]


def rendered_names(stems) -> set[str]:
    """Every file the rendering stage writes for these stems, relative to its folder."""
    names = {f"{stem}_{kind}.png" for stem in stems for kind in ("gray", "color", "overlap")}
    return names | {f"labelIds/{stem}_labelIds.png" for stem in stems}


def files_under(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


def snapshot(folder: Path) -> dict[str, bytes]:
    return {name: (folder / name).read_bytes() for name in files_under(folder)}


def train_id_tables() -> tuple[np.ndarray, np.ndarray]:
    """(BGR colour [19, 3], label id [19]) by train id, straight from cityscapesscripts."""
    from cityscapesscripts.helpers.labels import trainId2label

    colours = np.array([trainId2label[t].color[::-1] for t in range(19)], np.uint8)
    label_ids = np.array([trainId2label[t].id for t in range(19)], np.uint8)
    return colours, label_ids


def read_unchanged(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert image is not None, f"{path}: unreadable"
    return image


# ---------------------------------------------------------------------------------------------------------
# Shared runs.

@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("stages")


@pytest.fixture(scope="module")
def checkpoint(trained_b0) -> Path:
    return trained_b0 / "model.ckpt"


@pytest.fixture(scope="module")
def rendered(tiny_dataset, checkpoint, work):
    """infer.py on the val list: {'out_dir', 'preview', 'result'}."""
    out_dir, preview = work / "infer", work / "preview.png"
    result = run_script("infer.py", "--variant", "b0", "--ckpt", checkpoint, "--images", tiny_dataset["val"],
                        "--out_dir", out_dir, "--preview", preview)
    assert result.returncode == 0, output_of(result)
    return {"out_dir": out_dir, "preview": preview, "result": result}


@pytest.fixture(scope="module")
def prediction_scores(tiny_dataset, rendered, work):
    """evaluate.py --pred_dir on the rendered predictions, with the val list: (csv row, result)."""
    out = work / "scores_predictions.csv"
    result = run_script("evaluate.py", "--pred_dir", rendered["out_dir"], "--data_path", tiny_dataset["val"],
                        "--out", out)
    assert result.returncode == 0, output_of(result)
    return read_row(out), result


@pytest.fixture(scope="module")
def model_scores(tiny_dataset, checkpoint, work):
    """evaluate.py with the model (whole image, the config's default): (csv row, result)."""
    out = work / "scores_model.csv"
    result = run_script("evaluate.py", "--variant", "b0", "--eval_ckpt_path", checkpoint,
                        "--data_path", tiny_dataset["val"], "--out", out)
    assert result.returncode == 0, output_of(result)
    return read_row(out), result


@pytest.fixture(scope="module")
def official_scores(tiny_dataset, rendered, work):
    """resultPixelLevelSemanticLabeling.json of the official evaluator on the rendered labelIds, and the
    dataset's files before and after its run."""
    export_dir = work / "official"
    export_dir.mkdir()
    before = files_under(tiny_dataset["root"])
    env = {**os.environ, "CITYSCAPES_DATASET": str(tiny_dataset["root"]),
           "CITYSCAPES_RESULTS": str(rendered["out_dir"] / "labelIds"), "CITYSCAPES_EXPORT_DIR": str(export_dir)}
    result = subprocess.run([str(OFFICIAL_EVALUATOR)], capture_output=True, text=True, cwd=ROOT, env=env,
                            timeout=300)
    assert result.returncode == 0, output_of(result)
    scores = json.loads((export_dir / "resultPixelLevelSemanticLabeling.json").read_text())
    return {"scores": scores, "before": before, "after": files_under(tiny_dataset["root"])}


# ---------------------------------------------------------------------------------------------------------
# 1-2. Scores: ours against the official evaluator, and scoring files against evaluating the model.

def test_scores_of_rendered_predictions_equal_the_official_evaluator(official_scores, prediction_scores):
    official = official_scores["scores"]
    row = row_values(prediction_scores[0])
    for name in cityscapes_class_names():
        assert same_value(row[name], float(official["classScores"][name]), TOL), \
            f"{name}: ours {row[name]}, official {official['classScores'][name]}"
    assert same_value(row["mIoU"], float(official["averageScoreClasses"]), TOL), \
        (row["mIoU"], official["averageScoreClasses"])


def test_official_evaluator_left_the_dataset_alone(official_scores, tiny_dataset):
    # CITYSCAPES_EXPORT_DIR sends its json elsewhere; without it the tool writes ROOT/evaluationResults.
    assert not (tiny_dataset["root"] / "evaluationResults").exists()
    assert official_scores["after"] == official_scores["before"]


def test_scoring_the_rendered_files_equals_evaluating_the_model(prediction_scores, model_scores):
    (from_files, files_result), (from_model, model_result) = prediction_scores, model_scores
    assert from_files["variant"] == "predictions" and from_model["variant"] == "b0"
    assert_valid_row(from_model)
    # Values as written (repr of the float): the same inference must give the same confusion matrix.
    assert {k: v for k, v in from_files.items() if k != "variant"} == \
        {k: v for k, v in from_model.items() if k != "variant"}
    assert "scored 4 predictions" in files_result.stderr, files_result.stderr
    assert "whole image, single scale; 4 images" in model_result.stderr, model_result.stderr
    assert "per class results" in model_result.stderr and "road" in model_result.stderr


# ---------------------------------------------------------------------------------------------------------
# 3. The rendered files.

def test_rendered_files_follow_the_cityscapes_tables(tiny_dataset, rendered):
    out_dir = rendered["out_dir"]
    colours, label_ids = train_id_tables()
    stems = val_stems(tiny_dataset["val"])
    assert files_under(out_dir) == rendered_names(stems)
    for image_path, _ in read_split_list(tiny_dataset["val"]):
        stem, image = image_stem(image_path), read_unchanged(image_path)
        gray = read_unchanged(out_dir / f"{stem}_gray.png")
        assert gray.dtype == np.uint8 and gray.shape == image.shape[:2], (stem, gray.dtype, gray.shape)
        assert gray.max() <= 18, (stem, np.unique(gray))
        color = read_unchanged(out_dir / f"{stem}_color.png")
        assert color.shape == image.shape and color.dtype == np.uint8, (stem, color.shape)
        np.testing.assert_array_equal(color, colours[gray], err_msg=f"{stem}_color.png")
        overlap = read_unchanged(out_dir / f"{stem}_overlap.png").astype(np.int32)
        expected = 0.5 * image.astype(np.float64) + 0.5 * colours[gray].astype(np.float64)
        assert overlap.shape == image.shape and np.abs(overlap - expected).max() <= 1, f"{stem}_overlap.png"
        np.testing.assert_array_equal(read_unchanged(out_dir / "labelIds" / f"{stem}_labelIds.png"),
                                      label_ids[gray], err_msg=f"{stem}_labelIds.png")
    assert len(list((out_dir / "labelIds").iterdir())) == len(stems)


def test_rendering_writes_a_readable_preview_and_logs_progress(rendered):
    preview = cv2.imread(str(rendered["preview"]), cv2.IMREAD_COLOR)
    assert preview is not None and preview.ndim == 3 and preview.shape[1] == 512, rendered["preview"]
    log = rendered["result"].stderr
    assert "rendered 4/4" in log and re.search(r"rendered 4 images in [\d.]+ s", log), log
    # Only the finished folder is left beside it: no temporary staging folder.
    assert sorted(p.name for p in rendered["out_dir"].parent.glob(".infer*")) == []


# ---------------------------------------------------------------------------------------------------------
# 4. --data_path as a Cityscapes root.

@pytest.fixture(scope="module")
def root_scores(tiny_dataset, rendered, work):
    """evaluate.py --pred_dir with a copy of the dataset root as --data_path: without its labelTrainIds,
    then with them copied beside the jsons. {'root', 'missing', 'with_ids', 'missing_csv', 'with_ids_csv'}."""
    copy = work / "cityscapes_copy"
    shutil.copytree(tiny_dataset["root"], copy)
    missing_csv, with_ids_csv = work / "root_missing.csv", work / "root_scores.csv"
    missing = run_script("evaluate.py", "--pred_dir", rendered["out_dir"], "--data_path", copy,
                         "--split", "val", "--out", missing_csv)
    data_gt = Path(tiny_dataset["data"]) / "gtFine"
    for label in data_gt.rglob("*_gtFine_labelTrainIds.png"):
        shutil.copy2(label, copy / "gtFine" / label.relative_to(data_gt))
    with_ids = run_script("evaluate.py", "--pred_dir", rendered["out_dir"], "--data_path", copy,
                          "--split", "val", "--out", with_ids_csv)
    return {"root": copy, "missing": missing, "with_ids": with_ids, "missing_csv": missing_csv,
            "with_ids_csv": with_ids_csv}


def test_cityscapes_root_as_data_path_scores_like_the_split_list(root_scores, prediction_scores):
    assert root_scores["with_ids"].returncode == 0, output_of(root_scores["with_ids"])
    assert read_row(root_scores["with_ids_csv"]) == prediction_scores[0]


def test_cityscapes_root_without_train_ids_is_refused(root_scores):
    result = root_scores["missing"]
    assert result.returncode == 1, output_of(result)
    first_missing = (root_scores["root"] / "gtFine" / "val" / "frankfurt"
                     / "frankfurt_000000_000019_gtFine_labelTrainIds.png")
    assert str(first_missing) in result.stderr, output_of(result)
    assert "convert_dataset.py" in result.stderr, output_of(result)
    assert not root_scores["missing_csv"].exists()


# ---------------------------------------------------------------------------------------------------------
# 5-6. Bad input: predictions, checkpoints, output folders. The failing runs start side by side.

@pytest.fixture(scope="module")
def bad_inputs(tiny_dataset, rendered, checkpoint, work):
    """The inputs of the failing runs; {'missing': the deleted prediction, 'wrong_size': the 10x10 one, ...}."""
    stems = val_stems(tiny_dataset["val"])
    missing_dir, small_dir = work / "pred_missing", work / "pred_small"
    shutil.copytree(rendered["out_dir"], missing_dir)
    shutil.copytree(rendered["out_dir"], small_dir)
    deleted = missing_dir / f"{stems[1]}_gray.png"
    deleted.unlink()
    small = small_dir / f"{stems[2]}_gray.png"
    assert cv2.imwrite(str(small), np.zeros((10, 10), np.uint8))

    backbone_only = work / "backbone_only.ckpt"
    import mindspore as ms

    params = ms.load_checkpoint(str(checkpoint))
    ms.save_checkpoint([{"name": n, "data": p} for n, p in params.items() if n.startswith("backbone.")],
                       str(backbone_only))

    occupied = work / "occupied"
    occupied.mkdir()
    (occupied / "keep.txt").write_text("a user's file\n")
    (occupied / "x_gray.png").write_bytes(b"not overwritten")
    return {"missing_dir": missing_dir, "missing": deleted, "small_dir": small_dir, "wrong_size": small,
            "backbone_only": backbone_only, "occupied": occupied, "occupied_before": snapshot(occupied)}


@pytest.fixture(scope="module")
def photo_folder(work) -> Path:
    """A plain folder of images with arbitrary names and sizes (one in a subfolder) and a hidden file."""
    folder = work / "photos"
    (folder / "trip").mkdir(parents=True)
    rng = np.random.default_rng(1)
    assert cv2.imwrite(str(folder / "wide shot.png"), rng.integers(0, 256, (64, 96, 3), dtype=np.uint8))
    assert cv2.imwrite(str(folder / "trip" / "tall.jpg"), rng.integers(0, 256, (80, 64, 3), dtype=np.uint8))
    assert cv2.imwrite(str(folder / ".x.png"), rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    return folder


@pytest.fixture(scope="module")
def failing_runs(tiny_dataset, checkpoint, bad_inputs, photo_folder, work):
    """Every failing run (and the photo-folder rendering), started side by side: {key: (result, csv)}."""
    val = tiny_dataset["val"]
    csvs = {key: work / f"{key}.csv" for key in ("missing", "wrong_size", "b1", "backbone_only")}
    commands = {
        "missing": ("evaluate.py", "--pred_dir", bad_inputs["missing_dir"], "--data_path", val,
                    "--out", csvs["missing"]),
        "wrong_size": ("evaluate.py", "--pred_dir", bad_inputs["small_dir"], "--data_path", val,
                       "--out", csvs["wrong_size"]),
        "b1": ("evaluate.py", "--variant", "b1", "--eval_ckpt_path", checkpoint, "--data_path", val,
               "--out", csvs["b1"]),
        "backbone_only": ("evaluate.py", "--variant", "b0", "--eval_ckpt_path", bad_inputs["backbone_only"],
                          "--data_path", val, "--out", csvs["backbone_only"]),
        "occupied": ("infer.py", "--variant", "b0", "--ckpt", checkpoint, "--images", val,
                     "--out_dir", bad_inputs["occupied"]),
        "photos": ("infer.py", "--variant", "b0", "--ckpt", checkpoint, "--images", photo_folder,
                   "--out_dir", work / "photos_infer"),
    }
    results = run_scripts_side_by_side(commands)
    return {key: (result, csvs.get(key)) for key, result in results.items()}


def test_missing_prediction_is_named_and_no_csv_written(failing_runs, bad_inputs):
    result, out = failing_runs["missing"]
    assert result.returncode == 1, output_of(result)
    assert str(bad_inputs["missing"]) in result.stderr, output_of(result)
    assert "1 of 4 predictions missing" in result.stderr, output_of(result)
    assert not out.exists()


def test_prediction_of_wrong_size_is_named_with_both_sizes(failing_runs, bad_inputs):
    result, out = failing_runs["wrong_size"]
    assert result.returncode == 1, output_of(result)
    message = result.stderr
    assert str(bad_inputs["wrong_size"]) in message, output_of(result)
    assert "(10, 10)" in message and "(128, 64)" in message, output_of(result)
    assert not out.exists()


def test_checkpoint_of_another_variant_is_refused(failing_runs, checkpoint):
    result, out = failing_runs["b1"]
    assert result.returncode == 1, output_of(result)
    assert f"{checkpoint}: does not fit the model" in result.stderr, output_of(result)
    assert "Traceback" not in result.stderr
    assert not out.exists()


def test_backbone_only_checkpoint_is_refused(failing_runs, bad_inputs):
    result, out = failing_runs["backbone_only"]
    assert result.returncode == 1, output_of(result)
    assert str(bad_inputs["backbone_only"]) in result.stderr and "decode head" in result.stderr, output_of(result)
    assert not out.exists()


def test_rendering_into_a_non_empty_folder_is_refused_and_touches_nothing(failing_runs, bad_inputs):
    result, _ = failing_runs["occupied"]
    occupied = bad_inputs["occupied"]
    assert result.returncode == 1, output_of(result)
    assert str(occupied) in result.stderr, output_of(result)
    assert snapshot(occupied) == bad_inputs["occupied_before"]
    assert sorted(p.name for p in occupied.parent.glob(".occupied*")) == []


def test_rendering_a_plain_image_folder_names_outputs_by_stem_at_each_size(failing_runs, work):
    result, _ = failing_runs["photos"]
    assert result.returncode == 0, output_of(result)
    out_dir = work / "photos_infer"
    assert files_under(out_dir) == rendered_names(["wide shot", "tall"])
    colours, _ = train_id_tables()
    for stem, (height, width) in {"wide shot": (64, 96), "tall": (80, 64)}.items():
        gray = read_unchanged(out_dir / f"{stem}_gray.png")
        assert gray.shape == (height, width) and gray.max() <= 18, (stem, gray.shape)
        np.testing.assert_array_equal(read_unchanged(out_dir / f"{stem}_color.png"), colours[gray])
        assert read_unchanged(out_dir / f"{stem}_overlap.png").shape == (height, width, 3)
    assert "2 images" in result.stderr, output_of(result)


# ---------------------------------------------------------------------------------------------------------
# 7. Export.

@pytest.fixture(scope="module")
def exported(checkpoint, work):
    """export.py to a MINDIR, and the three refused exports (into their own folder): {key: result, ...}."""
    out_dir, refused_dir = work / "export", work / "export_refused"
    out_dir.mkdir()
    refused_dir.mkdir()
    common = ("--variant", "b0", "--ckpt_file", checkpoint, "--height", EXPORT_HEIGHT, "--width", EXPORT_WIDTH)
    results = run_scripts_side_by_side({
        "mindir": ("export.py", *common, "--out", out_dir / "segformer_b0.mindir"),
        "air": ("export.py", *common, "--out", refused_dir / "segformer_b0.mindir",
                "--air", refused_dir / "segformer_b0.air"),
        "onnx": ("export.py", *common, "--out", refused_dir / "segformer_b0.onnx"),
        "ascend": ("export.py", *common, "--out", refused_dir / "segformer_b0.mindir", "--device", "Ascend"),
    })
    return {**results, "out_dir": out_dir, "refused_dir": refused_dir}


def test_export_writes_a_mindir_that_reproduces_the_checkpoint_model(exported, checkpoint):
    result = exported["mindir"]
    assert result.returncode == 0, output_of(result)
    match = re.search(r"max \|diff\| (\S+)", result.stderr)
    # On CPU the reloaded graph runs the same kernels: bit for bit, as README.md states (the check allows 1e-5).
    assert match and float(match.group(1)) == 0.0, output_of(result)
    assert "(allowed: 1e-05 + 0 x max |logit|)" in result.stderr, output_of(result)
    assert "device CPU; precision fp32; op precision: none set" in result.stderr, output_of(result)
    mindir = exported["out_dir"] / "segformer_b0.mindir"
    assert sorted(p.name for p in exported["out_dir"].iterdir()) == [mindir.name]  # no temporary left

    import mindspore as ms
    from mindspore import nn

    from segformer.models import build_model

    from segformer.models.depthwise import use_portable_kernels

    graph = nn.GraphCell(ms.load(str(mindir)))
    net = build_model("b0", 19)
    ms.load_param_into_net(net, ms.load_checkpoint(str(checkpoint)), strict_load=True)
    net.set_train(False)
    sample = ms.Tensor(np.random.default_rng(7).standard_normal((1, 3, EXPORT_HEIGHT, EXPORT_WIDTH))
                       .astype(np.float32))
    got, direct = graph(sample).asnumpy(), net(sample).asnumpy()
    # the file holds MindSpore's own depthwise kernels (no custom operator naming a local library): bit for bit
    # against the model on those, and float32 rounding away from the model on the compiled C++ loops
    expected = use_portable_kernels(net)(sample).asnumpy()
    assert got.shape == (1, 19, EXPORT_HEIGHT // 4, EXPORT_WIDTH // 4) == expected.shape
    assert np.abs(expected).max() > 1e-3  # a real output, not zeros
    np.testing.assert_array_equal(got, expected)  # bit for bit here too
    np.testing.assert_allclose(got, direct, rtol=0, atol=1e-5)
    assert b"Custom" not in mindir.read_bytes()


def test_air_without_ascend_is_a_usage_error(exported):
    result = exported["air"]
    assert result.returncode == 2, output_of(result)
    assert "--air needs --device Ascend" in result.stderr, output_of(result)


def test_export_on_a_device_this_machine_lacks_fails_first_naming_it(exported):
    import mindspore as ms

    if ms.device_context.ascend.is_available():
        pytest.skip("this machine has Ascend")
    result = exported["ascend"]
    assert result.returncode == 1, output_of(result)
    assert "device: Ascend was asked for" in result.stderr and "available here: CPU" in result.stderr, \
        output_of(result)


def test_wrong_export_suffix_is_refused_and_leaves_nothing(exported):
    result = exported["onnx"]
    assert result.returncode == 1, output_of(result)
    assert "segformer_b0.onnx" in result.stderr and ".mindir" in result.stderr, output_of(result)
    # No refused export left a file, nor a temporary '.segformer*' one.
    assert sorted(p.name for p in exported["refused_dir"].iterdir()) == []


# ---------------------------------------------------------------------------------------------------------
# 8. Sliding window and multi-scale + flip through the script.

@pytest.fixture(scope="module")
def test_time_augmented(tiny_dataset, checkpoint, work):
    """evaluate.py with slide and with multi-scale + flip settings: {key: (result, csv)}."""
    csvs = {"slide": work / "slide.csv", "multi_scale": work / "multi_scale.csv"}
    common = ("--variant", "b0", "--eval_ckpt_path", checkpoint, "--data_path", tiny_dataset["val"])
    results = run_scripts_side_by_side({
        "slide": ("evaluate.py", *common, "--settings", SLIDE_SETTINGS, "--out", csvs["slide"]),
        "multi_scale": ("evaluate.py", *common, "--settings", MULTI_SCALE_SETTINGS, "--out", csvs["multi_scale"]),
    })
    return {key: (results[key], csvs[key]) for key in csvs}


@pytest.mark.parametrize("key, description", [
    ("slide", "inference: slide 48x48 stride 32x32, single scale"),
    ("multi_scale", "inference: whole image, scales x[0.75, 1] with flip"),
])
def test_test_time_augmentation_runs_and_is_described(test_time_augmented, model_scores, key, description):
    result, out = test_time_augmented[key]
    assert result.returncode == 0, output_of(result)
    assert description in result.stderr, output_of(result)
    row = read_row(out)
    assert row["variant"] == "b0"
    assert_valid_row(row)
    # Windows of 48 px (or a 0.75 scale plus a flip) change what the network sees: if the settings were
    # ignored the scores would be the whole-image ones exactly.
    whole = row_values(model_scores[0])
    assert not all(same_value(value, whole[key], 0.0) for key, value in row_values(row).items())
