"""ONNX export route: our MindSpore checkpoint -> convert_model.py --to hf -> export_onnx.py, the last run
in its own environment (onnx/onnxruntime need numpy 2, which MindSpore cannot load).

That environment is a venv built from envs/onnx-requirements.txt on first use (about a minute, offline
wheels permitting) and reused while the requirements are unchanged. SEGFORMER_ONNX_PYTHON names a ready
interpreter instead; SEGFORMER_ONNX_VENV moves the venv (default ~/.cache/segformer-onnx-venv).

The b0 model is built by segformer.models.build_model with every parameter randomised so that the logits
are O(1): a wrong conversion or export shows up far above the tolerances (README.md's). The ONNX logits are
compared with the Hugging Face PyTorch model and with our MindSpore model on the test's own input.
"""

import hashlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import mindspore
import numpy as np
import pytest
import yaml
from packaging.requirements import Requirement

from segformer.models import build_model

ROOT = Path(__file__).resolve().parents[1]
CONVERT = ROOT / "workflow_scripts" / "convert_model.py"
EXPORT = ROOT / "workflow_scripts" / "export_onnx.py"
REQUIREMENTS = ROOT / "envs" / "onnx-requirements.txt"
# The bounds README.md states (max abs, logits of max |logit| ~2.6). Measured here: 2e-6 against PyTorch (float32
# kernel order); 1e-5 against MindSpore, mostly Hugging Face's LayerNorm eps 1e-5 where the official model has 1e-6.
ONNX_VS_TORCH = 1e-5
ONNX_VS_MINDSPORE = 3e-5
HEIGHT, WIDTH = 64, 128
LOGITS_SHAPE = (1, 19, HEIGHT // 4, WIDTH // 4)

# Runs in the ONNX environment: onnxruntime and the PyTorch model on the same input, both saved as .npy.
PROBE = """
import sys, numpy as np, onnxruntime, torch
from transformers import SegformerForSemanticSegmentation
onnx_file, hf_dir, x_file, out_dir = sys.argv[1:]
x = np.load(x_file)
session = onnxruntime.InferenceSession(onnx_file, providers=["CPUExecutionProvider"])
assert [i.name for i in session.get_inputs()] == ["image"], session.get_inputs()
np.save(out_dir + "/onnx.npy", session.run(["logits"], {"image": x})[0])
model = SegformerForSemanticSegmentation.from_pretrained(hf_dir, local_files_only=True).eval()
with torch.no_grad():
    np.save(out_dir + "/torch.npy", model(pixel_values=torch.from_numpy(x)).logits.numpy())
"""


# ---------------------------------------------------------------------------------------------------------
# The ONNX environment.

def requirements_digest() -> str:
    return hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()


def ensure_venv(venv: Path) -> Path:
    """The python of a venv at `venv` holding envs/onnx-requirements.txt; (re)built when missing or stale."""
    python, stamp = venv / "bin" / "python", venv / ".onnx-requirements.sha256"
    if python.exists() and stamp.exists() and stamp.read_text() == requirements_digest():
        return python
    if venv.exists() and any(venv.iterdir()) and not (venv / "pyvenv.cfg").exists():
        pytest.fail(f"{venv}: exists and is not a venv; refusing to overwrite it (set SEGFORMER_ONNX_VENV)")
    # --clear: a half-built venv (no stamp: the install was interrupted) starts over.
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True, timeout=300)
    result = subprocess.run([str(python), "-m", "pip", "install", "--quiet", "-r", str(REQUIREMENTS)],
                            capture_output=True, text=True, timeout=1500)
    assert result.returncode == 0, f"installing {REQUIREMENTS} into {venv} failed:\n{result.stderr[-4000:]}"
    stamp.write_text(requirements_digest())  # last: marks the venv complete
    return python


@pytest.fixture(scope="session")
def onnx_python() -> Path:
    explicit = os.environ.get("SEGFORMER_ONNX_PYTHON")
    if explicit:
        return Path(explicit)
    venv = os.environ.get("SEGFORMER_ONNX_VENV") or Path.home() / ".cache" / "segformer-onnx-venv"
    return ensure_venv(Path(venv))


def run_export(python, hf_dir, out, *extra):
    command = [str(python), str(EXPORT), "--hf_dir", str(hf_dir), "--out", str(out),
               "--height", str(HEIGHT), "--width", str(WIDTH), *extra]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)


# ---------------------------------------------------------------------------------------------------------
# Our model: a randomised b0, its checkpoint, its Hugging Face folder.

pytestmark = pytest.mark.usefixtures("pynative_cpu")


def randomise(net, seed=0):
    """Every parameter drawn so that activations and logits stay O(1) (the default init gives ~0.03)."""
    rng = np.random.default_rng(seed)
    for name, param in net.parameters_and_names():
        shape = tuple(param.shape)
        if len(shape) > 1:  # weights: unit-variance outputs
            value = rng.normal(0.0, 1.0 / math.sqrt(int(np.prod(shape[1:]))), shape)
        elif name.endswith("moving_variance"):
            value = rng.uniform(0.5, 2.0, shape)
        elif name.endswith("gamma"):
            value = rng.uniform(0.5, 1.5, shape)
        else:  # biases, betas, moving means
            value = rng.normal(0.0, 0.2, shape)
        param.set_data(mindspore.Tensor(value.astype(np.float32)))
    return net


@pytest.fixture(scope="module")
def b0(tmp_path_factory):
    """{'net': our randomised b0 in eval mode, 'hf_dir': its folder written by convert_model.py --to hf}."""
    base = tmp_path_factory.mktemp("onnx_b0")
    net = randomise(build_model("b0"))
    mindspore.save_checkpoint(net, str(base / "b0.ckpt"))
    result = subprocess.run([sys.executable, str(CONVERT), "--pt_model_path", str(base / "b0.ckpt"),
                             "--ms_model_path", str(base / "hf"), "--to", "hf"],
                            capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    net.set_train(False)
    return {"net": net, "hf_dir": base / "hf"}


# ---------------------------------------------------------------------------------------------------------

def test_exported_onnx_matches_pytorch_and_mindspore(onnx_python, b0, tmp_path):
    out = tmp_path / "export" / "b0.onnx"
    result = run_export(onnx_python, b0["hf_dir"], out)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["output"] == {"name": "logits", "shape": list(LOGITS_SHAPE)}
    assert summary["max_abs_diff"] <= ONNX_VS_TORCH, summary  # the script's own check, on its seeded image
    assert sorted(p.name for p in out.parent.iterdir()) == ["b0.onnx"], "a temporary file was left behind"

    x = np.random.default_rng(1).standard_normal((1, 3, HEIGHT, WIDTH)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    probe = subprocess.run([str(onnx_python), "-c", PROBE, str(out), str(b0["hf_dir"]), str(tmp_path / "x.npy"),
                            str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert probe.returncode == 0, probe.stderr
    onnx_logits, torch_logits = np.load(tmp_path / "onnx.npy"), np.load(tmp_path / "torch.npy")
    ms_logits = b0["net"](mindspore.Tensor(x)).asnumpy()

    assert onnx_logits.shape == torch_logits.shape == ms_logits.shape == LOGITS_SHAPE
    assert float(ms_logits.std()) > 0.1, "logits too flat for the comparison to mean anything"
    onnx_vs_torch = float(np.abs(onnx_logits - torch_logits).max())
    onnx_vs_mindspore = float(np.abs(onnx_logits - ms_logits).max())
    assert onnx_vs_torch <= ONNX_VS_TORCH, f"onnxruntime vs PyTorch: max abs diff {onnx_vs_torch}"
    assert onnx_vs_mindspore <= ONNX_VS_MINDSPORE, f"onnxruntime vs MindSpore: max abs diff {onnx_vs_mindspore}"


def test_folder_without_config_is_refused(onnx_python, b0, tmp_path):
    folder = tmp_path / "weights_only"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes((b0["hf_dir"] / "model.safetensors").read_bytes())
    out = tmp_path / "export" / "b0.onnx"
    result = run_export(onnx_python, folder, out)
    assert result.returncode != 0
    assert str(folder) in result.stderr and "config.json" in result.stderr, result.stderr
    assert not out.parent.exists() or not any(out.parent.iterdir())


def test_disagreement_beyond_atol_writes_nothing(onnx_python, b0, tmp_path):
    """--atol 0 demands bit-identical logits, which onnxruntime's kernels never give: the check must fail
    and leave neither the .onnx nor its temporary file."""
    out = tmp_path / "export" / "b0.onnx"
    result = run_export(onnx_python, b0["hf_dir"], out, "--atol", "0")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "onnxruntime and PyTorch disagree" in result.stderr, result.stderr
    assert list(out.parent.iterdir()) == []


def test_conda_env_pins_like_requirements_file():
    """envs/onnx.yaml and envs/onnx-requirements.txt describe one environment; torch exactly 2.13.0."""
    env = yaml.safe_load((ROOT / "envs" / "onnx.yaml").read_text())
    assert "python=3.11" in env["dependencies"]
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    lines = [line.strip() for line in REQUIREMENTS.read_text().splitlines()]
    from_file = {str(Requirement(line)) for line in lines if line and not line.startswith("#")}
    assert {str(Requirement(r)) for r in pip} == from_file
    assert "torch==2.13.0" in from_file
    assert not any(Requirement(r).name in ("mindspore", "numpy") for r in from_file)
