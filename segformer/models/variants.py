"""The six SegFormer variants (MiT-b0 ... b5) as data: one table, one place.

Numbers from NVlabs/SegFormer `mmseg/models/backbones/mix_transformer.py` (mit_b0 ... mit_b5) and the
`local_configs/segformer/B*` decoder widths. mlp_ratio is 4 in every stage as in the released code and
checkpoints (the paper's appendix says 8 for stages 1-2).
"""

from dataclasses import dataclass
from typing import Tuple


@dataclass(frozen=True)
class MiTConfig:
    """Shape of one SegFormer variant: the MiT backbone stages and the decoder width E."""

    embed_dims: Tuple[int, int, int, int]
    depths: Tuple[int, int, int, int]
    decoder_dim: int
    num_heads: Tuple[int, int, int, int] = (1, 2, 5, 8)
    mlp_ratios: Tuple[int, int, int, int] = (4, 4, 4, 4)
    sr_ratios: Tuple[int, int, int, int] = (8, 4, 2, 1)
    patch_sizes: Tuple[int, int, int, int] = (7, 3, 3, 3)
    strides: Tuple[int, int, int, int] = (4, 2, 2, 2)
    in_channels: int = 3
    drop_path_rate: float = 0.1


_NARROW = (32, 64, 160, 256)
_WIDE = (64, 128, 320, 512)

VARIANTS = {
    "b0": MiTConfig(embed_dims=_NARROW, depths=(2, 2, 2, 2), decoder_dim=256),
    "b1": MiTConfig(embed_dims=_WIDE, depths=(2, 2, 2, 2), decoder_dim=256),
    "b2": MiTConfig(embed_dims=_WIDE, depths=(3, 4, 6, 3), decoder_dim=768),
    "b3": MiTConfig(embed_dims=_WIDE, depths=(3, 4, 18, 3), decoder_dim=768),
    "b4": MiTConfig(embed_dims=_WIDE, depths=(3, 8, 27, 3), decoder_dim=768),
    "b5": MiTConfig(embed_dims=_WIDE, depths=(3, 6, 40, 3), decoder_dim=768),
}


def variant_config(variant: str) -> MiTConfig:
    """The MiTConfig of `variant` ('b0' ... 'b5', also accepted as 'mit_b0' or 'B0')."""
    key = str(variant).lower()
    if key.startswith("mit_"):
        key = key[len("mit_"):]
    if key not in VARIANTS:
        raise ValueError(f"unknown SegFormer variant {variant!r}; expected one of {sorted(VARIANTS)}")
    return VARIANTS[key]
