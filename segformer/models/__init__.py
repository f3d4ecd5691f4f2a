"""SegFormer models in MindSpore: the MiT-b0..b5 backbones, the all-MLP head and `build_model`."""

from segformer.models.layers import FORMULATIONS, resolve_formulation
from segformer.models.segformer import SegFormer, build_model, count_parameters
from segformer.models.variants import VARIANTS, MiTConfig, variant_config

__all__ = ["FORMULATIONS", "MiTConfig", "SegFormer", "VARIANTS", "build_model", "count_parameters",
           "resolve_formulation", "variant_config"]
