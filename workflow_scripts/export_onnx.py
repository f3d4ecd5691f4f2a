"""Export a Hugging Face SegFormer folder to ONNX and check the file with onnxruntime.

    python workflow_scripts/export_onnx.py --hf_dir hf_b0 --out segformer_b0.onnx --height 512 --width 1024

The folder is what `convert_model.py --to hf` writes (config.json + model.safetensors), loaded offline by
transformers' SegformerForSemanticSegmentation. The graph has one input "image" (1 x 3 x H x W, float32,
normalised like the training images) and one output "logits" (1 x classes x H/4 x W/4, before the
upsampling to H x W). Before the file is put in place, onnxruntime runs it on a seeded random image and its
logits must match the PyTorch model's within --atol; otherwise the exit status is 1 and no file is
written (a file already at --out is left as it was). A summary is printed to stdout as JSON; progress
goes to stderr.

This runs in the separate ONNX environment (envs/onnx.yaml): onnx and onnxruntime need numpy 2, which
MindSpore cannot load, so nothing here imports the `segformer` package.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import sys
import tempfile
import time
from pathlib import Path


def _load_extras():
    """segformer/extras.py by its path (standard library only): the package itself is not installed here."""
    path = Path(__file__).resolve().parents[1] / "segformer" / "extras.py"
    spec = importlib.util.spec_from_file_location("segformer_extras", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_extras = _load_extras()


def require(module: str):
    """A module of the ONNX environment, or ExportError: one line naming the pip install that adds it."""
    try:
        return _extras.require(module, "onnx")
    except _extras.MissingExtra as e:
        raise ExportError(str(e)) from None

OUTPUT_STRIDE = 4  # SegFormer's logits are at 1/4 of the input size


class ExportError(Exception):
    """Bad input or a failed check: the message names the file and what is wrong."""


def log(message: str) -> None:
    print(f"[export_onnx] {message}", file=sys.stderr, flush=True)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hf_dir", required=True, help="Hugging Face folder: config.json + model weights")
    parser.add_argument("--out", required=True, help="the .onnx file to write")
    parser.add_argument("--height", type=int, required=True, help="input height (a multiple of 4)")
    parser.add_argument("--width", type=int, required=True, help="input width (a multiple of 4)")
    parser.add_argument("--opset", type=int, default=18, help="ONNX opset (default 18; GELU is exported as Erf)")
    parser.add_argument("--exporter", choices=("dynamo", "torchscript"), default="dynamo",
                        help="dynamo: torch.export-based, torch's default (default); torchscript: the legacy tracer")
    parser.add_argument("--atol", type=float, default=1e-4,
                        help="largest max-abs difference allowed between onnxruntime and PyTorch (default 1e-4)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random check image (default 0)")
    return parser.parse_args(argv)


def check_args(args) -> None:
    for name in ("height", "width"):
        value = getattr(args, name)
        if value < OUTPUT_STRIDE or value % OUTPUT_STRIDE:
            raise ExportError(f"--{name} {value}: must be a positive multiple of {OUTPUT_STRIDE}")
    if args.atol < 0:
        raise ExportError(f"--atol {args.atol}: must be >= 0")
    if not str(args.out).endswith(".onnx"):
        raise ExportError(f"--out {args.out}: the file name must end in .onnx")


def read_config(hf_dir: Path) -> dict:
    """config.json of `hf_dir`, checked to describe a SegFormer before torch is asked to load anything."""
    if not hf_dir.is_dir():
        raise ExportError(f"{hf_dir}: not a folder (expected a Hugging Face folder with config.json)")
    path = hf_dir / "config.json"
    if not path.is_file():
        raise ExportError(f"{hf_dir}: no config.json (expected a Hugging Face SegFormer folder, "
                          f"as written by convert_model.py --to hf)")
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ExportError(f"{path}: not readable JSON ({e})") from e
    if not isinstance(config, dict) or config.get("model_type") != "segformer":
        found = config.get("model_type") if isinstance(config, dict) else type(config).__name__
        raise ExportError(f"{path}: model_type is {found!r}, expected 'segformer'")
    return config


def load_model(hf_dir: Path):
    """The logits-only PyTorch module of the folder's SegformerForSemanticSegmentation, in eval mode."""
    torch = require("torch")
    SegformerForSemanticSegmentation = require("transformers").SegformerForSemanticSegmentation

    try:
        model, info = SegformerForSemanticSegmentation.from_pretrained(
            str(hf_dir), local_files_only=True, output_loading_info=True)
    except (OSError, ValueError, RuntimeError) as e:
        raise ExportError(f"{hf_dir}: cannot load a SegformerForSemanticSegmentation: {e}") from e
    # A missing tensor would be silently random-initialised: refuse instead of exporting noise.
    problems = {k: v for k, v in info.items() if k in ("missing_keys", "mismatched_keys") and v}
    if problems:
        raise ExportError(f"{hf_dir}: weights do not fit the config: {problems}")

    class Logits(torch.nn.Module):
        """image -> logits; the plain tensor output the exporters and onnxruntime need."""

        def __init__(self, segformer):
            super().__init__()
            self.segformer = segformer

        def forward(self, image):
            return self.segformer(pixel_values=image).logits

    return Logits(model.eval()).eval(), model.config.num_labels


def export(module, image, path: Path, exporter: str, opset: int) -> None:
    """Write the ONNX graph of `module` at `image`'s (static) shape to `path`, as one self-contained file."""
    torch = require("torch")

    names = dict(input_names=["image"], output_names=["logits"], opset_version=opset)
    # The exporters report progress on stdout, which this script keeps for its JSON summary.
    with contextlib.redirect_stdout(sys.stderr), torch.no_grad():
        try:
            if exporter == "dynamo":
                program = torch.onnx.export(module, (image,), dynamo=True, verbose=False, **names)
                program.save(str(path), external_data=False)
            else:
                torch.onnx.export(module, (image,), str(path), dynamo=False, **names)
        except Exception as e:  # the exporters raise many kinds; all mean the same here
            raise ExportError(f"the {exporter} exporter failed (opset {opset}): {type(e).__name__}: {e}") from e


def onnxruntime_logits(path: Path, image):
    """Check the file's structure, then run it with onnxruntime on the CPU."""
    onnx = require("onnx")
    onnxruntime = require("onnxruntime")

    try:
        onnx.checker.check_model(str(path))
    except onnx.checker.ValidationError as e:
        raise ExportError(f"{path}: not a valid ONNX model: {e}") from e
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inputs = [i.name for i in session.get_inputs()]
    outputs = [o.name for o in session.get_outputs()]
    if inputs != ["image"] or outputs != ["logits"]:
        raise ExportError(f"{path}: inputs {inputs} / outputs {outputs}, expected ['image'] / ['logits']")
    return session.run(["logits"], {"image": image})[0]


def export_and_check(args) -> dict:
    """Export into a temporary file beside --out, check it, then move it into place."""
    hf_dir, out = Path(args.hf_dir), Path(args.out)
    read_config(hf_dir)  # before the slow imports: a wrong folder is refused at once

    np = require("numpy")
    torch = require("torch")
    require("transformers")
    require("onnx")
    require("onnxruntime")

    timings = {}
    start = time.perf_counter()
    module, num_labels = load_model(hf_dir)
    timings["load_s"] = time.perf_counter() - start
    log(f"loaded {hf_dir} ({num_labels} classes) in {timings['load_s']:.1f}s")

    shape = (1, 3, args.height, args.width)
    image = np.random.default_rng(args.seed).standard_normal(shape).astype(np.float32)
    expected_shape = (1, num_labels, args.height // OUTPUT_STRIDE, args.width // OUTPUT_STRIDE)

    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o666 & ~umask)  # mkstemp's 0600 would survive os.replace
    try:
        start = time.perf_counter()
        export(module, torch.from_numpy(image), tmp, args.exporter, args.opset)
        timings["export_s"] = time.perf_counter() - start
        log(f"exported with the {args.exporter} exporter (opset {args.opset}) in {timings['export_s']:.1f}s")

        start = time.perf_counter()
        with torch.no_grad():
            reference = module(torch.from_numpy(image)).numpy()
        ours = onnxruntime_logits(tmp, image)
        timings["check_s"] = time.perf_counter() - start
        if ours.shape != expected_shape or reference.shape != expected_shape:
            raise ExportError(f"{out}: logits shape {ours.shape} (PyTorch {reference.shape}), "
                              f"expected {expected_shape}")
        diff = float(np.abs(ours - reference).max())
        log(f"onnxruntime vs PyTorch on a {args.height}x{args.width} random image (seed {args.seed}): "
            f"max abs diff {diff:.3g} (logits std {float(reference.std()):.3g}), "
            f"checked in {timings['check_s']:.1f}s")
        if not diff <= args.atol:  # also refuses NaN
            raise ExportError(f"{out}: onnxruntime and PyTorch disagree: max abs diff {diff:.3g} > "
                              f"--atol {args.atol:g}; nothing written")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    log(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB)")
    return {"onnx": str(out), "hf_dir": str(hf_dir), "input": {"name": "image", "shape": list(shape)},
            "output": {"name": "logits", "shape": list(expected_shape)}, "exporter": args.exporter,
            "opset": args.opset, "seed": args.seed, "max_abs_diff": diff, "atol": args.atol,
            **{k: round(v, 3) for k, v in timings.items()}}


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        check_args(args)
        summary = export_and_check(args)
    except ExportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
