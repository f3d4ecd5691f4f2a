"""The training stage: the loss falls, data parallel equals a bigger batch, resume is exact, a
diverged run leaves no model. Uses the shared tiny b0 and a few more short trainings."""

import json
import shutil
import signal
import subprocess
import sys
import time

import mindspore as ms
import numpy as np
import pandas as pd
import pytest

from conftest import DATA_PARALLEL, DETERMINISTIC, ROOT, TINY_TRAIN, run_train, shared_b0_arguments, train_command

def read_log(path):
    return pd.read_csv(path, comment="#")


def weights(ckpt):
    return {name: param.asnumpy() for name, param in ms.load_checkpoint(str(ckpt)).items()}


def assert_same_weights(a, b, atol=0.0, rtol=0.0):
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for name in wa:
        np.testing.assert_allclose(wa[name], wb[name], atol=atol, rtol=rtol, err_msg=name)


def test_training_writes_model_log_and_curve_and_loss_falls(trained_b0):
    log = read_log(trained_b0 / "train_log.csv")
    assert list(log["iteration"]) == list(range(1, TINY_TRAIN["iterations"] + 1))
    for column in ["lr", "loss", "step_time_s", "images_per_s", "loss_scale", "overflow"]:
        assert column in log.columns
    first, last = log["loss"][:3].mean(), log["loss"][-3:].mean()
    assert last < first, f"loss did not fall: first {first:.3f}, last {last:.3f}"
    header = [line for line in (trained_b0 / "train_log.csv").read_text().splitlines() if line.startswith("#")]
    assert any("FROM SCRATCH" in line for line in header)
    assert "# device CPU; precision fp32; op precision: none set (CPU computes as written)" in header
    assert (trained_b0 / "train_curve.png").stat().st_size > 1000
    assert not (trained_b0 / "train_state").exists(), "the state folder is removed once the model is written"
    names = set(weights(trained_b0 / "model.ckpt"))
    assert "decode_head.linear_fuse.bn.moving_mean" in names
    assert all(name.startswith(("backbone.", "decode_head.")) for name in names), "evaluation renamed parameters"
    assert set(weights(trained_b0 / "best_model.ckpt")) == names
    assert log["val_mIoU"].notna().sum() == 2, "evaluated at iterations 6 and 12"
    validation_lines = [line for line in (trained_b0 / "train.log").read_text().splitlines() if "val mIoU" in line]
    assert len(validation_lines) == 2 and all("slide 64x64 stride 48x48" in line for line in validation_lines)
    assert not any(name.startswith("adamw_") for name in names), "model.ckpt holds weights only"


def test_lr_in_log_follows_the_schedule(trained_b0):
    from segformer.engine.schedule import lr_at

    log = read_log(trained_b0 / "train_log.csv")
    expected = [lr_at(t, 3e-4, TINY_TRAIN["iterations"], warmup_iters=2) for t in range(TINY_TRAIN["iterations"])]
    np.testing.assert_allclose(log["lr"], expected, rtol=1e-9)


def test_resume_after_kill_equals_uninterrupted_run(tiny_dataset, trained_b0, tmp_path):
    """Bitwise, with drop path and dropout on as in the official recipe: the shared b0's run, killed once
    its checkpoint of iteration 6 is written and run again, ends with the shared b0's weights."""
    arguments = shared_b0_arguments(tiny_dataset, checkpoint_interval=3)
    resumed = tmp_path / "resumed"
    process = subprocess.Popen(train_command(resumed, **arguments), cwd=ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    state = resumed / "train_state"
    deadline = time.time() + 600
    while not list(state.glob("state_00000006.ckpt")) and time.time() < deadline and process.poll() is None:
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert list(state.glob("state_*.ckpt")), "no checkpoint was written before the kill"
    assert not (resumed / "model.ckpt").exists()

    result = run_train(resumed, **arguments)
    assert result.returncode == 0, result.stderr
    assert "resum" in result.stderr
    assert_same_weights(trained_b0 / "model.ckpt", resumed / "model.ckpt")
    log = read_log(resumed / "train_log.csv")
    assert list(log["iteration"]) == list(range(1, TINY_TRAIN["iterations"] + 1))


def test_changed_settings_start_over(tmp_path, caplog):
    """A state folder stamped with other settings is not resumed from: it is emptied and stamped anew."""
    from segformer.engine.state import StateDir, settings_hash

    state = StateDir(tmp_path / "train_state", {"iterations": 2})
    state.path.mkdir()
    state.stamp_file.write_text(json.dumps({"hash": "0000", "settings": {}}))
    (state.path / "state_00000002.ckpt").write_bytes(b"stale")
    with caplog.at_level("WARNING"):
        assert state.open() is None
    assert "settings changed" in caplog.text and "starting over" in caplog.text
    assert not state.checkpoints()
    assert state.stamped_hash() == settings_hash({"iterations": 2})


def test_only_the_newest_keep_checkpoints_remain(tmp_path):
    """keep_checkpoints (default 2, test_mixed_precision.py checks it in a real run) also at 1."""
    import mindspore as ms

    from segformer.engine.state import StateDir

    state = StateDir(tmp_path / "train_state", {"iterations": 3}, keep=1)
    assert state.open() is None
    for iteration in (1, 2, 3):
        state.save(iteration, [{"name": "iteration", "data": ms.Tensor(iteration, ms.int32)}])
    assert [iteration for iteration, _ in state.checkpoints()] == [3]
    assert not [path.name for path in state.path.iterdir() if ".tmp" in path.name]


def test_nan_loss_stops_with_iteration_and_no_model(tiny_dataset, trained_b0, tmp_path):
    """A checkpoint with a NaN in the classifier makes the loss NaN at the first iteration."""
    params = ms.load_checkpoint(str(trained_b0 / "model.ckpt"))
    bias = params["decode_head.linear_pred.bias"].asnumpy().copy()
    bias[3] = np.nan
    params["decode_head.linear_pred.bias"] = ms.Parameter(ms.Tensor(bias), name="decode_head.linear_pred.bias")
    poisoned = tmp_path / "poisoned.ckpt"
    ms.save_checkpoint([{"name": k, "data": v} for k, v in params.items()], str(poisoned))
    out = tmp_path / "out"
    result = run_train(out, tiny_dataset["train"], settings={"iterations": 3}, extra=["--pretrained", str(poisoned)])
    assert result.returncode != 0
    assert "at iteration 0" in result.stderr and "nan" in result.stderr.lower()
    assert not (out / "model.ckpt").exists()


def test_pretrained_with_missing_backbone_parameters_is_refused(tiny_dataset, trained_b0, tmp_path):
    params = ms.load_checkpoint(str(trained_b0 / "model.ckpt"))
    del params["backbone.block1.0.attn.kv.weight"]
    broken = tmp_path / "broken.ckpt"
    ms.save_checkpoint([{"name": k, "data": v} for k, v in params.items()], str(broken))
    result = run_train(tmp_path / "out", tiny_dataset["train"], settings={"iterations": 1},
                       extra=["--pretrained", str(broken)])
    assert result.returncode != 0
    assert "backbone.block1.0.attn.kv.weight" in result.stderr


def assert_same_updates(start, a, b, tolerance):
    """The updates (final - start) of two runs agree: ||da - db|| <= tolerance * ||da|| overall.

    Adam normalises every coordinate's step to about lr, so a parameter whose gradient is ~0 moves by
    +-lr on fp32 noise; comparing whole updates rather than single coordinates is the fair check.
    """
    relative = relative_update_difference(weights(start), weights(a), weights(b))
    assert relative <= tolerance, f"updates differ by {relative:.2e} (relative)"


def relative_update_difference(w0, wa, wb) -> float:
    trained = [n for n in w0 if "moving_" not in n]  # BN running statistics are not optimizer updates
    diff = sum(float(np.sum((wa[n] - wb[n]) ** 2)) for n in trained)
    norm = sum(float(np.sum((wa[n] - w0[n]) ** 2)) for n in trained)
    assert norm > 0, "the runs did not move the weights"
    return (diff / norm) ** 0.5


def test_data_parallel_two_workers_equal_one_process_with_double_batch(tiny_dataset, one_node_two_workers, tmp_path):
    start, parallel = one_node_two_workers["start"], one_node_two_workers["out"]
    settings = DATA_PARALLEL
    single = tmp_path / "single"
    result = run_train(single, tiny_dataset["train"], settings={**settings, "batch_size": 2},
                       extra=["--pretrained", str(start)])
    assert result.returncode == 0, result.stderr
    assert "global batch 2 = 2 devices x 1 per device" in one_node_two_workers["stdout"]
    assert_same_updates(start, single / "model.ckpt", parallel / "model.ckpt", tolerance=1e-2)
    # and the other way round: a run on different samples is far from both
    other = tmp_path / "other"
    result = run_train(other, tiny_dataset["train"], settings={**settings, "batch_size": 2, "seed": 1},
                       extra=["--pretrained", str(start)])
    assert result.returncode == 0, result.stderr
    with pytest.raises(AssertionError):
        assert_same_updates(start, single / "model.ckpt", other / "model.ckpt", tolerance=1e-2)


def test_other_ranks_wait_for_this_runs_settings_stamp(tmp_path):
    """After a settings change rank 0 rewrites settings.json; until then other ranks may read the previous
    run's stamp: they wait for the current hash (bounded) instead of failing on it."""
    import threading

    from segformer.engine.state import StateDir
    from segformer.engine.train import _wait_for_state

    state = StateDir(tmp_path / "train_state", {"iterations": 8})
    state.path.mkdir()
    state.stamp_file.write_text(json.dumps({"hash": "a previous run"}))
    rank0 = threading.Timer(0.6, lambda: state.open())   # rank 0 starts over and stamps the folder
    rank0.start()
    started = time.time()
    assert _wait_for_state(state, timeout_s=30) is None, "a fresh start has nothing to resume from"
    assert time.time() - started >= 0.5
    rank0.join()
    state.stamp_file.write_text(json.dumps({"hash": "a previous run"}))
    with pytest.raises(TimeoutError, match="did not stamp"):
        _wait_for_state(state, timeout_s=0.5)
