"""SegFormer = MiT backbone + all-MLP decode head, and `build_model`, the one way the project builds it."""

from typing import Optional

from mindspore import nn

from segformer.models.head import SegFormerHead
from segformer.models.layers import resolve_formulation
from segformer.models.mix_transformer import MixVisionTransformer
from segformer.models.stochastic import MaskLayout
from segformer.models.variants import MiTConfig, variant_config


class SegFormer(nn.Cell):
    """Image [B, 3, H, W] (normalised RGB) -> class logits [B, num_classes, ceil(H/4), ceil(W/4)]."""

    def __init__(self, config: MiTConfig, num_classes: int, drop_path_rate: float, head_dropout: float,
                 sync_bn: bool, formulation: str):
        super().__init__()
        self.config = config
        self.num_classes = num_classes
        self.formulation = formulation
        self.backbone = MixVisionTransformer(config, drop_path_rate, formulation)
        self.decode_head = SegFormerHead(config.embed_dims, config.decoder_dim, num_classes, head_dropout,
                                         sync_bn, formulation)

    def construct(self, image, path_keep=None, channel_keep=None):
        """In training with drop path or dropout on, the keep masks come from
        segformer.models.stochastic.draw_masks(net.mask_layout, ...); evaluation needs none."""
        return self.decode_head(self.backbone(image, path_keep), channel_keep)

    @property
    def mask_layout(self) -> MaskLayout:
        return MaskLayout(self.backbone.path_keep_probs, self.config.decoder_dim, self.decode_head.dropout.keep_prob)


def build_model(variant: str, num_classes: int = 19, *, drop_path_rate: Optional[float] = None,
                head_dropout: float = 0.1, sync_bn: bool = False, formulation: Optional[str] = "auto",
                device: Optional[str] = None) -> SegFormer:
    """Build SegFormer-`variant` ('b0' ... 'b5'). With the defaults it is the model the official checkpoints
    load into (drop path 0.1 spread over the blocks, head dropout 0.1, plain BatchNorm in the head).

    drop_path_rate: stochastic depth of the last block (None: the variant's 0.1), spread linearly from 0.
    head_dropout: Dropout2d rate before linear_pred (see segformer.models.stochastic).
    sync_bn: synchronise the head's BatchNorm over data-parallel devices (see segformer.models.sync_bn);
    build the model after mindspore.communication.init() so that it sees the world size.
    formulation: how convolutions and the head are computed, "conv" (the official code literally) or
    "matmul" (exact matrix-product forms, fast on CPU), see segformer.models.layers; "auto"/None picks
    by device: matmul on CPU, conv on Ascend/GPU. Parameters are identical either way.
    device: the MindSpore device target the formulation is chosen for (default: the context's).
    """
    config = variant_config(variant)
    if num_classes < 1:
        raise ValueError(f"num_classes must be at least 1, got {num_classes}")
    if drop_path_rate is None:
        drop_path_rate = config.drop_path_rate
    return SegFormer(config, num_classes, drop_path_rate, head_dropout, sync_bn,
                     resolve_formulation(formulation, device))


def count_parameters(net: nn.Cell, prefix: str = "") -> int:
    """Number of scalars in the parameters of `net` whose names start with `prefix` (moving BN statistics
    included, as in a checkpoint's state dict)."""
    return sum(int(param.size) for name, param in net.parameters_and_names() if name.startswith(prefix))
