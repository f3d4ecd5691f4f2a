"""precision "mixed" of the training stage: float16 compute with dynamic loss scaling.

MindSpore's CPU backend runs the whole b0 training step in float16 (amp O2), so the pipeline test uses
the real mixed-precision network. Forced overflows: the scale starts far too large, so the first steps
overflow and are skipped (weights untouched), the scale is divided by `factor` each time, and steps are
applied once it is small enough. The model so trained is evaluated by the evaluation stage.

And a start that float16 cannot run at all: every step overflows, the scale falls to its minimum and
training stops. That run also shows the state folder after several checkpoints (a finished run removes
it), so the checkpoints kept (`keep_checkpoints`) are checked there.
"""

import subprocess
import sys

import mindspore as ms
import numpy as np
import pandas as pd
import pytest

from conftest import ROOT, run_train
from segformer.models import build_model
from test_stages import assert_valid_row, read_row

# Far too large at first: the early steps overflow and are skipped until the scale fits (7 of 12 when measured),
# and the steps after that train the model that the evaluation test scores.
OVERFLOWING_SCALE = {"init": 2.0 ** 22, "factor": 4, "window": 2}
MIXED_ITERATIONS = 12


@pytest.fixture(scope="module")
def mixed_b0(tiny_dataset, tmp_path_factory):
    """A tiny b0 trained in mixed precision from a scale that overflows at first: (output folder, result)."""
    out = tmp_path_factory.mktemp("mixed_b0")
    settings = {"iterations": MIXED_ITERATIONS, "loss_scale": OVERFLOWING_SCALE}
    return out, run_train(out, tiny_dataset["train"], settings=settings, extra=["--precision", "mixed"])


def test_mixed_precision_training_skips_overflowed_steps_and_adapts_the_scale(mixed_b0):
    out, result = mixed_b0
    assert result.returncode == 0, result.stdout + result.stderr[-4000:]
    log = pd.read_csv(out / "train_log.csv", comment="#")
    assert list(log["iteration"]) == list(range(1, MIXED_ITERATIONS + 1)), "skipped steps still count as iterations"
    assert "mixed" in (out / "train_log.csv").read_text().splitlines()[0]
    assert log["loss"].map(np.isfinite).all()
    assert log["overflow"].iloc[0] == 1, "a scale of 2**22 must overflow float16 gradients"
    assert (log["overflow"] == 0).any(), "no step was ever applied"
    assert log["loss_scale"].iloc[0] == OVERFLOWING_SCALE["init"]
    good = 0
    for (_, now), (_, after) in zip(log.iloc[:-1].iterrows(), log.iloc[1:].iterrows()):
        if now["overflow"]:
            expected, good = max(now["loss_scale"] / 4, 1.0), 0
        else:
            good += 1
            expected = now["loss_scale"] * 4 if good == 2 else now["loss_scale"]
            good %= 2
        assert after["loss_scale"] == expected, log.to_string()
    saved = ms.load_checkpoint(str(out / "model.ckpt"))
    assert {param.dtype for param in saved.values()} == {ms.float32}, "weights are kept in float32"
    assert all(np.isfinite(param.asnumpy()).all() for param in saved.values())


def test_a_model_trained_in_mixed_precision_evaluates(mixed_b0, tiny_dataset, tmp_path):
    """Its float32 checkpoint goes through the evaluation stage like any other and scores something."""
    out, _ = mixed_b0
    scores = tmp_path / "miou.csv"
    result = subprocess.run([sys.executable, str(ROOT / "workflow_scripts/evaluate.py"), "--variant", "b0",
                             "--ckpt", str(out / "model.ckpt"), "--data_path", str(tiny_dataset["val"]),
                             "--out", str(scores)], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr[-4000:]
    row = read_row(scores)
    assert row["variant"] == "b0"
    assert_valid_row(row)
    assert float(row["aAcc"]) > 0.2, row  # measured 0.40; 0.11 with a single applied step


# Every step overflows float16: a classifier bias that float32 holds and float16 cannot (max 65504).
UNRUNNABLE_BIAS = 1e5
# From a scale of 8 the steps overflow at 8, 4 and 2 (checkpoints after each), then at the minimum 1: stop.
MINIMUM_SCALE_RUN = {"iterations": 6, "checkpoint_interval": 1, "loss_scale": {"init": 8}}
CHECKPOINTS_WRITTEN = [1, 2, 3]


def unrunnable_in_float16(path):
    """A b0 checkpoint whose classifier bias is finite in float32 and infinite in float16."""
    net = build_model("b0")
    bias = net.decode_head.linear_pred.bias
    bias.set_data(ms.Tensor(np.full(bias.shape, UNRUNNABLE_BIAS, np.float32)))
    ms.save_checkpoint(net, str(path))
    return path


@pytest.fixture(scope="module")
def stopped_at_minimum_scale(tiny_dataset, tmp_path_factory):
    """A mixed-precision run that overflows at every step, with the default keep_checkpoints (another
    value: test_train.py): {'out', 'result', 'keep'}."""
    base = tmp_path_factory.mktemp("minimum_scale")
    start = unrunnable_in_float16(base / "unrunnable.ckpt")
    out = base / "out"
    result = run_train(out, tiny_dataset["train"], settings=MINIMUM_SCALE_RUN,
                       extra=["--precision", "mixed", "--pretrained", str(start)])
    return {"out": out, "result": result, "keep": 2}  # README: "the last two kept"


def test_overflow_at_the_minimum_loss_scale_stops_training_without_a_model(stopped_at_minimum_scale):
    out, result = stopped_at_minimum_scale["out"], stopped_at_minimum_scale["result"]
    assert result.returncode == 1, result.stdout + result.stderr[-4000:]
    assert "gradients overflow at iteration 3 with the loss scale already at its minimum 1" in result.stderr
    assert "training stopped, no model written" in result.stderr and "Traceback" not in result.stderr
    finished = [name for name in ("model.ckpt", "best_model.ckpt", "train_log.csv", "train_curve.png")
                if (out / name).exists()]
    assert not finished, finished
    log = pd.read_csv(out / "train_state" / "train_log.csv", comment="#")  # the resumable log, in the state folder
    assert list(log["loss_scale"]) == [8, 4, 2] and list(log["overflow"]) == [1, 1, 1], log.to_string()


def test_only_the_newest_keep_checkpoints_remain(stopped_at_minimum_scale):
    """README: the last two resumable checkpoints are kept (keep_checkpoints, default 2)."""
    keep = stopped_at_minimum_scale["keep"]
    state = stopped_at_minimum_scale["out"] / "train_state"
    kept = sorted(path.name for path in state.glob("state_*.ckpt"))
    assert kept == [f"state_{i:08d}.ckpt" for i in CHECKPOINTS_WRITTEN[-keep:]], kept
    assert not [path.name for path in state.iterdir() if ".tmp" in path.name]
    newest = ms.load_checkpoint(str(state / kept[-1]))
    assert int(newest["iteration"].asnumpy()) == CHECKPOINTS_WRITTEN[-1]
