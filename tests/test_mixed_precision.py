"""precision "mixed" of the training stage: float16 compute with dynamic loss scaling.

MindSpore's CPU backend runs the whole b0 training step in float16 (amp O2), so the pipeline test uses
the real mixed-precision network. Forced overflows: the scale starts far too large, so the first steps
overflow and are skipped (weights untouched), the scale is divided by `factor` each time, and steps are
applied once it is small enough.
"""

import mindspore as ms
import numpy as np
import pandas as pd
from mindspore import nn, ops

from conftest import run_train
from segformer.engine.optim import AdamW, build_param_groups
from segformer.engine.train import DynamicLossScale, LossScaledAccumulateStep, NetWithLoss

def test_mixed_precision_training_skips_overflowed_steps_and_adapts_the_scale(tiny_dataset, tmp_path):
    loss_scale = {"init": 2.0 ** 30, "factor": 4, "window": 2}
    result = run_train(tmp_path, tiny_dataset["train"], settings={"iterations": 8, "loss_scale": loss_scale},
                       extra=["--precision", "mixed"])
    assert result.returncode == 0, result.stdout + result.stderr[-4000:]
    log = pd.read_csv(tmp_path / "train_log.csv", comment="#")
    assert list(log["iteration"]) == list(range(1, 9)), "skipped steps still count as iterations"
    assert "mixed" in (tmp_path / "train_log.csv").read_text().splitlines()[0]
    assert log["loss"].map(np.isfinite).all()
    assert log["overflow"].iloc[0] == 1, "a scale of 2**30 must overflow float16 gradients"
    assert (log["overflow"] == 0).any(), "no step was ever applied"
    assert log["loss_scale"].iloc[0] == 2.0 ** 30
    good = 0
    for (_, now), (_, after) in zip(log.iloc[:-1].iterrows(), log.iloc[1:].iterrows()):
        if now["overflow"]:
            expected, good = max(now["loss_scale"] / 4, 1.0), 0
        else:
            good += 1
            expected = now["loss_scale"] * 4 if good == 2 else now["loss_scale"]
            good %= 2
        assert after["loss_scale"] == expected, log.to_string()
    saved = ms.load_checkpoint(str(tmp_path / "model.ckpt"))
    assert {param.dtype for param in saved.values()} == {ms.float32}, "weights are kept in float32"


def test_dynamic_loss_scale_rule():
    scaler = DynamicLossScale.from_config(None)
    assert (scaler.scale, scaler.factor, scaler.window) == (65536.0, 2.0, 1000)
    scaler = DynamicLossScale.from_config({"init": 4, "factor": 2, "window": 3})
    for finite, expected in [(False, 2), (False, 1), (False, 1), (True, 1), (True, 1), (True, 2), (False, 1)]:
        scaler.update(finite)
        assert scaler.scale == expected
    try:
        DynamicLossScale.from_config({"init": 4, "grow": 2})
    except ValueError as error:
        assert "grow" in str(error)
    else:
        raise AssertionError("an unknown loss_scale key was accepted")


class _SquaredError(nn.Cell):
    def construct(self, output, target):
        return ((ops.cast(output, ms.float32) - target) ** 2).mean()


def test_overflowed_step_leaves_weights_alone_then_a_small_scale_steps():
    ms.set_device("CPU")
    mode = ms.get_context("mode")
    ms.set_context(mode=ms.PYNATIVE_MODE)
    try:
        _check_skip_then_step()
    finally:
        ms.set_context(mode=mode)


def _check_skip_then_step():
    dense = ms.amp.auto_mixed_precision(nn.Dense(4, 3), "O2")   # float16 compute, float32 weights
    optimizer = AdamW(build_param_groups(dense, 1e-2, 0.0), 1e-2)
    step = LossScaledAccumulateStep(NetWithLoss(dense, _SquaredError()), optimizer, world_size=1, grad_accum=1)
    image = ms.Tensor(np.ones((2, 4), np.float32))
    target = ms.Tensor(np.full((2, 3), 100.0, np.float32))
    before = [p.asnumpy().copy() for p in optimizer.parameters]

    loss = step.accumulate(image, target, ms.Tensor(1e38, ms.float32))
    assert np.isfinite(loss.asnumpy()), "the reported loss is the unscaled one"
    assert not step.apply_if_finite(1e38)
    for old, param in zip(before, optimizer.parameters):
        np.testing.assert_array_equal(param.asnumpy(), old, err_msg=f"{param.name} changed by a skipped step")
    assert all(not s.asnumpy().any() for s in step.sums), "the skipped step's gradients were not cleared"

    step.accumulate(image, target, ms.Tensor(8.0, ms.float32))
    assert step.apply_if_finite(8.0)
    assert any(not np.array_equal(param.asnumpy(), old) for old, param in zip(before, optimizer.parameters))
