"""Export: the trained model as a MindSpore graph file (MINDIR; AIR on request on Ascend), checked.

The graph takes one normalised RGB image [1, 3, h, w] of the configured size and returns logits
[1, num_classes, h/4, w/4] (resize and argmax are left to the deployment, as in the authors' code).
After writing, the file is loaded back (mindspore.load + nn.GraphCell) and run on a seeded random
input; its logits must match the checkpoint model's, else the export fails and nothing is left behind:
max |graph - model| <= atol + rtol * max |model| (`export_tolerance`). On CPU the reloaded graph runs the
same kernels and the difference is exactly 0, so the bound stays tight there (rtol 0, atol 1e-5); on
Ascend and GPU the graph compiler fuses and picks other kernels than the model run op by op, so the
bound is relative: rtol 1e-3 of the logits' largest magnitude, far above what float32 summation-order
differences give and far below what a wrong weight or a missing layer gives (O(1)). Not measured on a
device here (no NPU/GPU on the development machines): an estimate to revisit with a first Ascend run.
AIR is deprecated in MindSpore 2.10 (mindspore/train/serialization.py, export: "AIR format is deprecated,
and will be removed in a future version, please use other format or use MindSpore Lite to do offline
inference"), hence opt-in (`export.air`), and only Ascend tools can load it back, hence unchecked.
The graph holds the formulation of the device it was exported on (see segformer.models.layers); both
compute the same function. On CPU its depthwise convolutions use MindSpore's own kernels, not the compiled
C++ ones the model trains with (segformer.models.depthwise): a custom operator names a library on this
machine, which the file must not depend on.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

import mindspore as ms
import numpy as np
from mindspore import nn

from segformer.io import atomic_path
from segformer.models.depthwise import use_portable_kernels

log = logging.getLogger(__name__)

FORMAT_SUFFIX = {"MINDIR": ".mindir", "AIR": ".air"}


class ExportCheckFailed(RuntimeError):
    pass


def sample_input(height: int, width: int, seed: int = 0) -> ms.Tensor:
    return ms.Tensor(np.random.default_rng(seed).standard_normal((1, 3, height, width)).astype(np.float32))


# (rtol, atol) of the reload check per device target; see the module docstring.
EXPORT_TOLERANCE = {"CPU": (0.0, 1e-5), "GPU": (1e-3, 1e-5), "Ascend": (1e-3, 1e-5)}


def export_tolerance(device: str) -> tuple[float, float]:
    """(rtol, atol) of the reload check on `device` (CPU, GPU or Ascend)."""
    if device not in EXPORT_TOLERANCE:
        raise ValueError(f"device {device!r}: expected one of {sorted(EXPORT_TOLERANCE)}")
    return EXPORT_TOLERANCE[device]


def check_close(got: np.ndarray, expected: np.ndarray, rtol: float, atol: float, what: str = "graph") -> float:
    """max |got - expected|, or ExportCheckFailed unless it is <= atol + rtol * max |expected|."""
    if got.shape != expected.shape:
        raise ExportCheckFailed(f"{what}: reloaded graph gives shape {got.shape}, the model {expected.shape}")
    diff = float(np.max(np.abs(got - expected)))
    bound = atol + rtol * float(np.max(np.abs(expected)))
    if not diff <= bound:  # also catches NaN
        raise ExportCheckFailed(f"{what}: reloaded graph differs from the model by {diff:g} (> {bound:g} = "
                                f"{atol:g} + {rtol:g} x max |logit| {float(np.max(np.abs(expected))):g})")
    return diff


def reload_and_compare(path: Path, net: nn.Cell, sample: ms.Tensor, rtol: float, atol: float) -> float:
    """Max |difference| between the reloaded graph's and the model's logits on `sample` (checked)."""
    graph = nn.GraphCell(ms.load(str(path)))
    expected = net(sample).asnumpy()
    got = graph(sample).asnumpy()
    return check_close(got, expected, rtol, atol, str(path))


def export_model(net: nn.Cell, out_path: str | os.PathLike, input_size: tuple[int, int],
                 file_format: str = "MINDIR", rtol: float = 0.0, atol: float = 1e-5) -> float | None:
    """Write `net` (eval mode) as a graph for a [1, 3, h, w] input; returns the checked max |diff|
    (None for AIR, which only Ascend tools can load back). Atomic: a failed check leaves no file.
    The defaults are CPU's tolerance; pass export_tolerance(device) elsewhere."""
    if file_format not in FORMAT_SUFFIX:
        raise ValueError(f"unknown export format {file_format!r}; expected one of {sorted(FORMAT_SUFFIX)}")
    out_path = Path(out_path)
    if out_path.suffix != FORMAT_SUFFIX[file_format]:
        raise ValueError(f"{out_path}: a {file_format} file must end in {FORMAT_SUFFIX[file_format]}")
    net.set_train(False)
    use_portable_kernels(net)
    sample = sample_input(*input_size)
    # mindspore.export refuses file names outside [0-9a-zA-Z@_-.:/\\] (a space, a quote): it writes into a
    # folder of its own under the system's temporary directory, and the file is moved into place.
    with atomic_path(out_path) as tmp, tempfile.TemporaryDirectory(prefix="segformer_export_") as staging:
        staged = Path(staging) / f"graph{FORMAT_SUFFIX[file_format]}"
        ms.export(net, sample, file_name=str(staged), file_format=file_format)
        if staged.is_file():
            shutil.move(staged, tmp)
        if not tmp.is_file() or tmp.stat().st_size == 0:
            raise ExportCheckFailed(f"{out_path}: mindspore.export wrote nothing")
        if file_format != "MINDIR":
            return None
        return reload_and_compare(tmp, net, sample, rtol, atol)
