"""Export: the trained model as a MindSpore graph file (MINDIR everywhere, AIR on Ascend), checked.

The graph takes one normalised RGB image [1, 3, h, w] of the configured size and returns logits
[1, num_classes, h/4, w/4] (resize and argmax are left to the deployment, as in the authors' code).
After writing, the file is loaded back (mindspore.load + nn.GraphCell) and run on a seeded random
input; its logits must equal the checkpoint model's, else the export fails and nothing is left behind.
The graph holds the formulation of the device it was exported on (see segformer.models.layers); both
compute the same function.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import mindspore as ms
import numpy as np
from mindspore import nn

from segformer.io import atomic_path

log = logging.getLogger(__name__)

FORMAT_SUFFIX = {"MINDIR": ".mindir", "AIR": ".air"}


class ExportCheckFailed(RuntimeError):
    pass


def sample_input(height: int, width: int, seed: int = 0) -> ms.Tensor:
    return ms.Tensor(np.random.default_rng(seed).standard_normal((1, 3, height, width)).astype(np.float32))


def reload_and_compare(path: Path, net: nn.Cell, sample: ms.Tensor, tolerance: float) -> float:
    """Max |difference| between the reloaded graph's and the model's logits on `sample`."""
    graph = nn.GraphCell(ms.load(str(path)))
    expected = net(sample).asnumpy()
    got = graph(sample).asnumpy()
    if got.shape != expected.shape:
        raise ExportCheckFailed(f"{path}: reloaded graph gives shape {got.shape}, the model {expected.shape}")
    diff = float(np.max(np.abs(got - expected)))
    if not diff <= tolerance:  # also catches NaN
        raise ExportCheckFailed(f"{path}: reloaded graph differs from the model by {diff:g} (> {tolerance:g})")
    return diff


def export_model(net: nn.Cell, out_path: str | os.PathLike, input_size: tuple[int, int],
                 file_format: str = "MINDIR", tolerance: float = 1e-5) -> float | None:
    """Write `net` (eval mode) as a graph for a [1, 3, h, w] input; returns the checked max |diff|
    (None for AIR, which only Ascend tools can load back). Atomic: a failed check leaves no file."""
    if file_format not in FORMAT_SUFFIX:
        raise ValueError(f"unknown export format {file_format!r}; expected one of {sorted(FORMAT_SUFFIX)}")
    out_path = Path(out_path)
    if out_path.suffix != FORMAT_SUFFIX[file_format]:
        raise ValueError(f"{out_path}: a {file_format} file must end in {FORMAT_SUFFIX[file_format]}")
    net.set_train(False)
    sample = sample_input(*input_size)
    with atomic_path(out_path) as tmp:
        ms.export(net, sample, file_name=str(tmp), file_format=file_format)
        if not tmp.is_file() or tmp.stat().st_size == 0:
            raise ExportCheckFailed(f"{out_path}: mindspore.export wrote nothing")
        if file_format != "MINDIR":
            return None
        return reload_and_compare(tmp, net, sample, tolerance)
