"""SegFormer models in MindSpore: the MiT-b0..b5 backbones, the all-MLP head and `build_model`.

The variant table imports without MindSpore (the workflow reads it at start-up); the rest loads on use.
"""

import importlib

from segformer.models.variants import VARIANTS, MiTConfig, variant_config

_LAZY = {"FORMULATIONS": "layers", "resolve_formulation": "layers", "SegFormer": "segformer",
         "build_model": "segformer", "count_parameters": "segformer"}

__all__ = ["FORMULATIONS", "MiTConfig", "SegFormer", "VARIANTS", "build_model", "count_parameters",
           "resolve_formulation", "variant_config"]


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(f"segformer.models.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'segformer.models' has no attribute {name!r}")
