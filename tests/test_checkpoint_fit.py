"""segformer.models.checkpoint: the one answer to "does this state fit this model"."""

import numpy as np
import pytest
from mindspore.nn.utils import no_init_parameters

from segformer.models import build_model
from segformer.models.checkpoint import (CheckpointMismatch, check_fits_model, has_head, model_shapes,
                                         without_optimizer_state)


@pytest.fixture(scope="module")
def b0_state():
    with no_init_parameters():
        net = build_model("b0")
    return net, {name: np.zeros(shape, np.float32) for name, shape in model_shapes(net).items()}


def test_whole_model_and_backbone_only(b0_state):
    net, state = b0_state
    check_fits_model(state, net, "full.ckpt", head_required=True)
    backbone = {k: v for k, v in state.items() if k.startswith("backbone.")}
    assert not has_head(backbone) and has_head(state)
    check_fits_model(backbone, net, "mit_b0.ckpt", head_required=False)
    with pytest.raises(CheckpointMismatch, match="mit_b0.ckpt: holds no decode head"):
        check_fits_model(backbone, net, "mit_b0.ckpt", head_required=True)


def test_every_offending_key_is_named(b0_state):
    net, state = b0_state
    broken = dict(state)
    del broken["backbone.block1.0.attn.kv.weight"]
    broken["decode_head.linear_pred.weight"] = np.zeros((150, 256, 1, 1), np.float32)
    broken["backbone.extra"] = np.zeros(1, np.float32)
    with pytest.raises(CheckpointMismatch) as error:
        check_fits_model(broken, net, "x.ckpt", head_required=False)
    message = str(error.value)
    for expected in ("x.ckpt: does not fit the model", "missing (1): backbone.block1.0.attn.kv.weight",
                     "unexpected (1): backbone.extra",
                     "decode_head.linear_pred.weight: checkpoint (150, 256, 1, 1), model (19, 256, 1, 1)"):
        assert expected in message


def test_optimizer_state_is_not_part_of_the_model(b0_state):
    net, state = b0_state
    with_optimizer = {**state, "adamw_m.backbone.norm1.gamma": np.zeros(32), "adamw_step": np.zeros(())}
    assert without_optimizer_state(with_optimizer).keys() == state.keys()
