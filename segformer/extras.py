"""Optional extras: import a module that only an optional install provides, or say in one line which
`pip install` adds it.

    torch = require("torch", "convert")     # MissingExtra: ... pip install -e '.[convert]'

Standard library only, and nothing else of the `segformer` package is imported: the ONNX export runs in
its own environment (numpy 2, no MindSpore) and loads this file by its path.
"""

from __future__ import annotations

import importlib
from types import ModuleType

# extra -> what needs it and the one line that installs it (pyproject.toml's extras; envs/onnx-requirements.txt).
EXTRAS = {
    "convert": "reading PyTorch / Hugging Face checkpoints needs the convert extra: pip install -e '.[convert]'",
    "cluster": "running on SLURM needs Snakemake's SLURM executor plugin: pip install -e '.[cluster]'",
    "onnx": ("the ONNX export runs in its own environment (onnx needs numpy 2, which MindSpore cannot load): "
             "python3 -m venv ~/onnx-venv && ~/onnx-venv/bin/pip install -r envs/onnx-requirements.txt, "
             "then --config 'export={onnx: true, onnx_python: ~/onnx-venv/bin/python}' (or --use-conda)"),
}


class MissingExtra(ImportError):
    """An optional dependency is not installed; str() is one line that ends with the install command."""


def install_hint(extra: str) -> str:
    return EXTRAS[extra]


def require(module: str, extra: str, what: str | None = None) -> ModuleType:
    """`importlib.import_module(module)`, or MissingExtra naming the module and the install command.

    `what` says what needed it (e.g. the file being read), for the start of the message.
    """
    if extra not in EXTRAS:
        raise KeyError(f"unknown extra {extra!r} (known: {', '.join(EXTRAS)})")
    try:
        return importlib.import_module(module)
    except ImportError as error:
        top = module.split(".")[0]
        cause = ("not installed" if isinstance(error, ModuleNotFoundError) and error.name in (top, module, None)
                 else f"not importable ({error})")
        prefix = f"{what}: " if what else ""
        raise MissingExtra(f"{prefix}{top} is {cause}; {install_hint(extra)}") from None
