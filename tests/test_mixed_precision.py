"""precision "mixed" of the training stage: float16 compute with dynamic loss scaling.

MindSpore's CPU backend runs the whole b0 training step in float16 (amp O2), so the pipeline test uses
the real mixed-precision network. Forced overflows: the scale starts far too large, so the first steps
overflow and are skipped (weights untouched), the scale is divided by `factor` each time, and steps are
applied once it is small enough.
"""

import mindspore as ms
import numpy as np
import pandas as pd

from conftest import run_train


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
