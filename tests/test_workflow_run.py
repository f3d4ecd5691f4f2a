"""The workflow run for real on a tiny demo (in a copy of the repository): every stage, for two variants
(b0 trained here; b1 imported from a trained checkpoint in Hugging Face layout, so evaluated without
training), then the everyday behaviour users rely on: nothing to redo after a run, also after a
`git pull` touches every source file; one variant's settings change reruns that variant's chain and the
summary only; a starting point added or changed after the run replans that variant's conversion and training;
one target builds only its chain; a failed job leaves no output; the report renders; the ONNX route
(rules export_hf and export_onnx) on request.

The checkout and every path the config names sit in folders whose names hold a space and a single quote
(ODD), as users' paths do: every rule must quote what it hands to the shell."""

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import copy_working_tree
from test_onnx_export import ONNX_VS_MINDSPORE, ONNX_VS_TORCH, PROBE, onnx_python  # noqa: F401 (a fixture)

TINY = {
    "variants": ["b0", "b1"],
    "demo": {"width": 128, "height": 64, "train_images": 8, "val_images": 4},
    "train": {"iterations": 3, "batch_size": 2, "crop_size": [64, 64], "base_scale": [128, 64],
              "log_interval": 1, "checkpoint_interval": 0, "num_workers": 1, "schedule": {"warmup_iters": 1}},
    "export": {"input_size": [64, 128]},
}
PER_VARIANT = ["miou.csv", "infer", "infer_preview.png", "segformer_{v}.mindir"]
ODD = "my work's dir"  # a space and a single quote: a folder name the rules' shell commands must survive


def snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    # targets first: --configfile and --config take every following word
    command = [sys.executable, "-m", "snakemake", *args, "--cores", "2", "--configfile", "tiny.yaml"]
    return subprocess.run(command, cwd=workdir, capture_output=True, text=True, timeout=900)


def planned_jobs(result: subprocess.CompletedProcess) -> dict[str, int]:
    """Rule -> job count from a dry run's job table ('Nothing to be done' gives {})."""
    jobs, in_table = {}, False
    for line in result.stdout.splitlines():
        fields = line.split()
        if fields[:2] == ["job", "count"]:
            in_table = True
            continue
        if in_table and len(fields) == 2 and fields[1].isdigit():
            if fields[0] != "total":
                jobs[fields[0]] = int(fields[1])
        elif in_table and fields and not set(fields[0]) <= {"-"}:
            in_table = False
    return jobs


def trained_b1_in_hugging_face_layout(folder: Path) -> Path:
    """Stands in for the authors' trained b1 (a Hugging Face folder with a decode head)."""
    from segformer.convert.weights import ms_to_hf, write_hf
    from segformer.models import build_model

    params = {name: p.asnumpy() for name, p in build_model("b1").parameters_and_names()}
    write_hf(folder, *ms_to_hf(params, "b1"))
    return folder


def imagenet_backbone_b0(path: Path) -> Path:
    """Stands in for the authors' mit_b0.pth: a random b0 backbone, saved by torch in their key layout."""
    import torch
    from segformer.models import build_model

    renames = {".gamma": ".weight", ".beta": ".bias"}  # our LayerNorm names -> PyTorch's
    state = {}
    for name, param in build_model("b0").parameters_and_names():
        if name.startswith("backbone."):
            key = name.removeprefix("backbone.")
            for ours, theirs in renames.items():
                if key.endswith(ours):
                    key = key.removesuffix(ours) + theirs
            state[key] = torch.from_numpy(param.asnumpy().copy())
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path


def planned_outputs(result: subprocess.CompletedProcess) -> list[str]:
    """Every output file of the jobs a dry run lists."""
    outputs = []
    for line in result.stdout.splitlines():
        if line.strip().startswith("output:"):
            outputs += [name.strip() for name in line.split(":", 1)[1].split(",")]
    return outputs


@pytest.fixture(scope="module")
def finished_workflow(tmp_path_factory):
    workdir = copy_working_tree(tmp_path_factory.mktemp("workflow") / ODD / "segformer")
    authors = tmp_path_factory.mktemp("authors") / "the authors' files" / ODD
    authors.mkdir(parents=True)
    b1 = trained_b1_in_hugging_face_layout(authors / "segformer-b1-city")
    (workdir / "tiny.yaml").write_text(yaml.safe_dump({**TINY, "weights": {"b1": str(b1)}}))
    result = snakemake(workdir)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return workdir


def test_the_demo_runs_every_stage_and_imports_a_trained_model(finished_workflow):
    results = finished_workflow / "results"
    for v in ("b0", "b1"):
        miou = pd.read_csv(results / v / "miou.csv")
        assert list(miou.columns[:4]) == ["variant", "mIoU", "aAcc", "mAcc"] and len(miou.columns) == 4 + 19
        assert miou.loc[0, "variant"] == v and 0.0 <= miou.loc[0, "aAcc"] <= 1.0
        for name in PER_VARIANT:
            assert (results / v / name.format(v=v)).exists(), (v, name)
        assert len(list((results / v / "infer/labelIds").glob("*_labelIds.png"))) == TINY["demo"]["val_images"]
        assert "per class results" in (results / f"logs/evaluate_{v}.log").read_text()
    for name in ["model.ckpt", "train_log.csv", "train_curve.png"]:
        assert (results / "b0" / name).stat().st_size > 0
    assert not (results / "b1/train_log.csv").exists()  # imported, not trained
    assert "wrote results/b1/model.ckpt" in (results / "logs/import_trained_b1.log").read_text()
    summary = pd.read_csv(results / "summary.csv")
    assert list(summary["variant"]) == ["b0", "b1"]
    page = (results / "summary.md").read_text()
    assert "synthetic demo" in page.lower() and "not trained here" in page and "76.2" in page
    assert (results / "miou.png").stat().st_size > 0


def test_nothing_to_do_after_a_run_even_after_sources_are_touched(finished_workflow):
    result = snakemake(finished_workflow, "-n")
    assert result.returncode == 0 and planned_jobs(result) == {}, result.stdout
    later = time.time() + 5
    for folder in ("workflow_scripts", "segformer", "rules"):
        for path in (finished_workflow / folder).rglob("*"):
            if path.is_file():
                os.utime(path, (later, later))
    result = snakemake(finished_workflow, "-n")
    assert result.returncode == 0 and planned_jobs(result) == {}, result.stdout


def test_changing_one_variants_setting_reruns_its_chain_only(finished_workflow):
    result = snakemake(finished_workflow, "-n", "--config", "overrides={b0: {train: {iterations: 4}}}")
    assert result.returncode == 0, result.stderr
    assert planned_jobs(result) == {"all": 1, "train": 1, "evaluate": 1, "infer": 1, "export": 1, "summary": 1}
    assert planned_outputs(result) and not [out for out in planned_outputs(result) if out.startswith("results/b1/")]


def test_changing_the_evaluation_reruns_evaluation_rendering_and_summary(finished_workflow):
    result = snakemake(finished_workflow, "-n", "--config", "evaluate={flip: true}")
    assert result.returncode == 0, result.stderr
    assert planned_jobs(result) == {"all": 1, "evaluate": 2, "infer": 2, "summary": 1}


def test_a_starting_point_added_or_changed_after_a_run_replans_conversion_and_training(finished_workflow, tmp_path):
    """b0 was trained from scratch: pretrained_dir (or another source) replans its conversion and training,
    for `all` too; b1 (imported) is untouched. A missing source is an error naming the file, also when
    the variant's model is on disk (Snakemake would otherwise keep it) and is not configured."""
    backbones = imagenet_backbone_b0(tmp_path / "the authors' backbones" / ODD / "mit_b0.pth").parent
    chain = {"all": 1, "train": 1, "evaluate": 1, "infer": 1, "export": 1, "summary": 1}

    added = snakemake(finished_workflow, "-n", "all", "--config", f"pretrained_dir={backbones}")
    assert added.returncode == 0, added.stderr[-3000:]
    assert planned_jobs(added) == {**chain, "convert_pretrained": 1}, added.stdout[-3000:]
    assert not [out for out in planned_outputs(added) if out.startswith("results/b1/")]

    # The conversion for real, from a path with a space and a quote; then only training and what follows.
    converted = snakemake(finished_workflow, "results/pretrained/mit_b0.ckpt", "--config", f"pretrained_dir={backbones}")
    assert converted.returncode == 0, converted.stderr[-3000:]
    log = (finished_workflow / "results/logs/convert_pretrained_b0.log").read_text()
    assert "wrote results/pretrained/mit_b0.ckpt" in log, log
    result = snakemake(finished_workflow, "-n", "all", "--config", f"pretrained_dir={backbones}")
    assert planned_jobs(result) == chain, result.stdout[-3000:]

    # Another source (an older copy: its path, not its date, makes the difference) replans the conversion.
    other = tmp_path / "other backbones"
    other.mkdir()
    shutil.copy2(backbones / "mit_b0.pth", other / "mit_b0.pth")
    for config in (f"pretrained_dir={other}", f"weights={{b0: {other / 'mit_b0.pth'}}}"):
        result = snakemake(finished_workflow, "-n", "all", "--config", config)
        assert planned_jobs(result) == {**chain, "convert_pretrained": 1}, (config, result.stdout[-3000:])

    empty = tmp_path / "no backbones here"
    empty.mkdir()
    for args in (["all", "--config", f"pretrained_dir={empty}"],
                 ["results/b0/miou.csv", "--config", f"pretrained_dir={empty}", "variants=[b1]"]):
        result = snakemake(finished_workflow, "-n", *args)
        assert result.returncode != 0 and f"{empty}/mit_b0.pth: no such file" in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr and "Nothing to be done" not in result.stdout + result.stderr


def test_one_target_builds_only_its_chain(finished_workflow):
    result = snakemake(finished_workflow, "-n", "results/b2/miou.csv")
    assert result.returncode == 0, result.stderr
    assert planned_jobs(result) == {"train": 1, "evaluate": 1}


def test_a_failed_job_leaves_no_output(finished_workflow, tmp_path):
    images = tmp_path / ODD / "photos"
    images.mkdir(parents=True)
    (images / "broken.png").write_bytes(b"not a png")
    result = snakemake(finished_workflow, "results/b0/infer", "--forcerun", "infer",
                       "--config", f"infer={{images: {images}}}")
    assert result.returncode != 0
    b0 = finished_workflow / "results/b0"
    assert not (b0 / "infer").exists() and not (b0 / "infer_preview.png").exists()
    assert not [p.name for p in b0.iterdir() if p.name.startswith(".")]  # no half-written staging folder
    assert "broken.png" in (finished_workflow / "results/logs/infer_b0.log").read_text()
    rebuilt = snakemake(finished_workflow, "results/b0/infer")  # back to the configured images
    assert rebuilt.returncode == 0, rebuilt.stderr[-3000:]


def test_the_report_renders(finished_workflow):
    result = snakemake(finished_workflow, "--report", "report.html")
    assert result.returncode == 0, result.stderr[-3000:]
    page = (finished_workflow / "report.html").read_text(errors="replace")
    for expected in ("summary.csv", "miou.png", "train_curve.png", "infer_preview.png"):
        assert expected in page, expected


def mindspore_logits(ckpt: Path, x: np.ndarray) -> np.ndarray:
    import mindspore as ms

    from segformer.models import build_model

    net = build_model("b0")
    ms.load_param_into_net(net, ms.load_checkpoint(str(ckpt)), strict_load=True)
    net.set_train(False)
    return net(ms.Tensor(x)).asnumpy()


def test_the_onnx_route_writes_a_hugging_face_folder_and_an_onnx_file_that_match_the_model(
        finished_workflow, onnx_python, tmp_path):
    """Rules export_hf and export_onnx for b0 (the README's `export={onnx: true, onnx_python: ...}`): the folder
    loads in transformers, onnxruntime runs the file, and both give our model's logits (README's bounds)."""
    result = snakemake(finished_workflow, "results/b0/segformer_b0.onnx",
                       "--config", f"export={{onnx: true, onnx_python: {onnx_python}}}")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    b0 = finished_workflow / "results/b0"
    marker = ".snakemake_timestamp"  # Snakemake's own file in a directory() output
    assert sorted(p.name for p in (b0 / "hf").iterdir() if p.name != marker) == ["config.json", "model.safetensors"]
    assert "onnxruntime vs PyTorch" in (finished_workflow / "results/logs/export_onnx_b0.log").read_text()

    height, width = TINY["export"]["input_size"]  # the ONNX graph's fixed input
    x = np.random.default_rng(3).standard_normal((1, 3, height, width)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    probe = subprocess.run([str(onnx_python), "-c", PROBE, str(b0 / "segformer_b0.onnx"), str(b0 / "hf"),
                            str(tmp_path / "x.npy"), str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert probe.returncode == 0, probe.stderr[-3000:]
    onnx_logits, torch_logits = np.load(tmp_path / "onnx.npy"), np.load(tmp_path / "torch.npy")
    ours = mindspore_logits(b0 / "model.ckpt", x)
    assert onnx_logits.shape == torch_logits.shape == ours.shape == (1, 19, height // 4, width // 4)
    assert float(np.abs(onnx_logits - torch_logits).max()) <= ONNX_VS_TORCH
    # Hugging Face (eps 1e-5 in its LayerNorms) and the ONNX file made from it, against our model.
    assert float(np.abs(torch_logits - ours).max()) <= ONNX_VS_MINDSPORE
    assert float(np.abs(onnx_logits - ours).max()) <= ONNX_VS_MINDSPORE
