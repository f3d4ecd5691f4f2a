"""The training loop: the official SegFormer recipe in MindSpore, standalone or data-parallel.

Read it top to bottom: `train()` sets up the model, optimizer, schedule and data, resumes from the
state folder if it can, then runs `iterations` optimizer steps, logging, checkpointing and
evaluating as configured, and finally writes the weights-only model.

Settings (one nested mapping, the `train` section of the workflow config after per-variant
overrides; official values in schemas/config.schema.yaml):
    iterations, batch_size (per device), grad_accum, seed, num_classes, crop_size [h, w],
    base_scale [W, H], ratio_range, cat_max_ratio, flip_prob, photometric, num_workers,
    log_interval, checkpoint_interval, keep_checkpoints, eval_interval,
    model: {drop_path_rate, head_dropout}, optimizer: {...}, schedule: {...}, loss: {...},
    loss_scale: {init, factor, window} (only read with precision "mixed")
Global batch = devices x batch_size x grad_accum (official: 8 x 1 x 1).

precision "fp32" is the official recipe. "mixed" (opt-in, a departure from it) computes in float16
(MindSpore amp O2) with LayerNorm/BatchNorm, the attention softmax and the loss in float32, and
dynamic loss scaling: overflowed steps are skipped (the iteration still counts, as with mmcv/apex)
and logged in the `overflow` column, next to the scale in `loss_scale`.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import mindspore as ms
import numpy as np
from mindspore import nn

from segformer.data.dataset import build_train_dataset
from segformer.data.transforms import augmentation_from_settings
from segformer.devices import describe_device, use_device
from segformer.engine.distributed import msrun_world
from segformer.engine.loss import SegCrossEntropyLoss
from segformer.engine.optim import AdamW, build_param_groups, describe_param_groups
from segformer.engine.schedule import PolySchedule
from segformer.engine.state import StateDir
from segformer.engine.step import DynamicLossScale, TrainStep, to_mixed_precision
from segformer.io import atomic_path, write_text
from segformer.models import build_model
from segformer.models.checkpoint import CheckpointMismatch, check_fits_model, has_head, without_optimizer_state
from segformer.models.stochastic import draw_masks

log = logging.getLogger(__name__)

LOG_COLUMNS = ["iteration", "lr", "loss", "step_time_s", "images_per_s", "loss_scale", "overflow", "val_mIoU"]


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite: training stops, and no model is written."""


@dataclass
class Distributed:
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed() -> Distributed:
    """Join the msrun job if msrun started this process (its own variables, see engine.distributed; a stale
    RANK_SIZE from rank-table scripts does not count), else a single process. Data parallel with
    gradients averaged over devices; on CPU init() picks the mccl backend."""
    if not msrun_world().is_msrun:
        return Distributed()
    from mindspore.communication import get_group_size, get_rank, init

    init()
    ms.set_auto_parallel_context(parallel_mode=ms.ParallelMode.DATA_PARALLEL, gradients_mean=True)
    return Distributed(rank=get_rank(), world_size=get_group_size())


def load_pretrained(net: nn.Cell, path: str | os.PathLike) -> str:
    """Load a converted checkpoint: the whole model, or every backbone parameter (the head then keeps its
    initialisation); anything else is refused, naming the keys. Returns a one-line description for the logs."""
    params = without_optimizer_state(ms.load_checkpoint(str(path)))
    try:
        check_fits_model(params, net, str(path), head_required=False)
    except CheckpointMismatch as error:
        raise ValueError(f"cannot start from this checkpoint: {error}") from None
    ms.load_param_into_net(net, params, strict_load=True)
    parts = "backbone and head" if has_head(params) else "backbone only, head initialised"
    return f"{path} ({len(params)} tensors; {parts})"


def build_optimizer(net: nn.Cell, settings: dict) -> tuple[AdamW, list]:
    opt = settings["optimizer"]
    groups = build_param_groups(net, opt["lr"], opt["weight_decay"], head_lr_mult=opt["head_lr_mult"],
                                norm_decay_mult=opt["norm_decay_mult"])
    return AdamW(groups, opt["lr"], betas=tuple(opt["betas"]), eps=opt["eps"]), groups


class TrainLog:
    """train_log.csv kept in the state folder while training (so a resume continues it), copied out
    atomically at the end. Header lines starting with '#' say what the run started from."""

    def __init__(self, path: Path, header_lines: list[str]):
        self.path = path
        self.header_lines = header_lines

    def open(self, start_iteration: int) -> None:
        """Start the file, or on resume drop the rows the resumed run will write again."""
        rows = self.rows() if (start_iteration > 0 and self.path.exists()) else []
        rows = [row for row in rows if int(row["iteration"]) <= start_iteration]  # rows count steps done
        self._write(rows)

    def rows(self) -> list[dict]:
        lines = [line for line in self.path.read_text().splitlines() if not line.startswith("#")]
        return list(csv.DictReader(lines))

    def append(self, row: dict) -> None:
        with self.path.open("a", newline="") as handle:
            csv.DictWriter(handle, LOG_COLUMNS).writerow(row)

    def _write(self, rows: list[dict]) -> None:
        buffer = io.StringIO()
        buffer.write("".join(f"# {line}\n" for line in self.header_lines))
        writer = csv.DictWriter(buffer, LOG_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
        write_text(self.path, buffer.getvalue())


def plot_curve(log_csv: Path, out_png: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    frame = pd.read_csv(log_csv, comment="#")
    fig, (ax_loss, ax_lr) = plt.subplots(2, 1, figsize=(7, 5), sharex=True)
    ax_loss.plot(frame["iteration"], frame["loss"], lw=1)
    ax_loss.set_ylabel("loss")
    ax_loss.set_title(title)
    evaluated = frame.dropna(subset=["val_mIoU"])
    if len(evaluated):
        ax_miou = ax_loss.twinx()
        ax_miou.plot(evaluated["iteration"], evaluated["val_mIoU"], "o-", color="tab:green")
        ax_miou.set_ylabel("val mIoU", color="tab:green")
    ax_lr.plot(frame["iteration"], frame["lr"], color="tab:orange", lw=1)
    ax_lr.set_ylabel("base lr")
    ax_lr.set_xlabel("iteration")
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)


def format_eta(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600:d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def train(settings: dict, *, variant: str, train_list: str, val_list: str | None, pretrained: str | None,
          out_ckpt: str, out_log: str, out_curve: str | None, state_dir: str, device: str = "CPU",
          precision: str = "fp32", validation: dict | None = None) -> dict:
    """Train SegFormer-`variant`; write out_ckpt (weights only), out_log (CSV) and out_curve (PNG).

    Every `eval_interval` iterations the val split is scored with the test-time settings `validation`
    (an `evaluate` section; default whole image), as the official configs validate every 4000.

    Returns a summary dict (iterations, wall time, last loss, best val mIoU if evaluated).
    """
    if precision not in ("fp32", "mixed"):
        raise ValueError(f"precision={precision!r}: expected 'fp32' (the official recipe) or 'mixed'")
    mixed = precision == "mixed"
    # first: the device, its id (DEVICE_ID under msrun, else a free slot) and the operator precision
    # that keeps fp32 float32 on Ascend; before any kernel and before communication.init()
    device_settings = use_device(device, precision=precision)
    ms.set_context(mode=ms.GRAPH_MODE)
    dist = init_distributed()
    seed = int(settings["seed"])
    ms.set_seed(seed)
    np.random.seed(seed)

    iterations = int(settings["iterations"])
    batch_size = int(settings["batch_size"])
    grad_accum = int(settings["grad_accum"])
    global_batch = dist.world_size * batch_size * grad_accum

    net = build_model(variant, settings["num_classes"], drop_path_rate=settings["model"]["drop_path_rate"],
                      head_dropout=settings["model"]["head_dropout"], sync_bn=dist.world_size > 1)
    if pretrained:
        start_note = f"pretrained: {load_pretrained(net, pretrained)}"
    else:
        start_note = "pretrained: none - TRAINING FROM SCRATCH (no pretrained backbone configured)"
        log.warning("no pretrained weights: training SegFormer-%s from scratch", variant)
    net.set_train(True)

    optimizer, groups = build_optimizer(net, settings)
    schedule = PolySchedule.from_config(settings["optimizer"]["lr"], iterations, settings["schedule"])
    loss_fn = SegCrossEntropyLoss(**settings["loss"], formulation=net.formulation)
    # Mixed: float16 everywhere except the normalisations (step.FP32_CELLS); the layers cast their directly
    # used weights to the activations' dtype, the attention softmax and the loss run in float32. The cells
    # are converted in place, so evaluation during training runs in mixed precision too.
    model = to_mixed_precision(net) if mixed else net
    scaler = DynamicLossScale.from_config(settings.get("loss_scale")) if mixed else None
    state = StateDir(state_dir, {"variant": variant, "settings": settings, "pretrained": pretrained,
                                 "world_size": dist.world_size, "device": device, "precision": precision},
                     keep=int(settings["keep_checkpoints"]))
    resume_file = state.open() if dist.is_main else _wait_for_state(state)
    start_iteration = 0
    if resume_file is not None:
        saved = ms.load_checkpoint(str(resume_file))
        start_iteration = int(saved["iteration"].asnumpy())
        ms.load_param_into_net(net, without_optimizer_state(saved))
        optimizer.load_state(saved)
        if scaler is not None and "loss_scale" in saved:
            scaler.scale = float(saved["loss_scale"].asnumpy())
            scaler.good_steps = int(saved["loss_scale_good_steps"].asnumpy())
    header = [f"SegFormer-{variant}, {precision}, device {device} x {dist.world_size}",
              describe_device(device_settings),
              start_note,
              f"global batch {global_batch} = {dist.world_size} devices x {batch_size} per device x {grad_accum} "
              f"accumulation (BatchNorm statistics see {batch_size} image(s) per device"
              f"{', synchronised across devices' if dist.world_size > 1 else ''})"]
    train_log = TrainLog(state.path / "train_log.csv", header)
    if dist.is_main:
        train_log.open(start_iteration)
    for line in header + describe_param_groups(groups).splitlines():
        log.info(line)
    if start_iteration:
        log.info("resumed at iteration %d of %d", start_iteration, iterations)

    data = build_train_dataset(
        train_list, batch_size=batch_size, num_iterations=iterations * grad_accum,
        start_iteration=start_iteration * grad_accum, seed=seed, num_shards=dist.world_size,
        shard_id=dist.rank, num_workers=int(settings["num_workers"]), **augmentation_from_settings(settings))
    batches = data.create_tuple_iterator(num_epochs=1)

    step = TrainStep(model, loss_fn, optimizer, world_size=dist.world_size, grad_accum=grad_accum,
                     check_overflow=mixed)
    mask_layout = net.mask_layout

    best = {"mIoU": -1.0, "iteration": None}
    validator = _validation(net, val_list, validation) if settings["eval_interval"] and val_list else None
    log_interval = max(1, int(settings["log_interval"]))
    started = time.perf_counter()
    window_start, window_steps = started, 0
    loss_value = float("nan")
    for iteration in range(start_iteration, iterations):
        optimizer.set_lr(schedule(iteration))
        step_start = time.perf_counter()
        loss_scale = scaler.scale if scaler else 1.0
        scale_tensor = ms.Tensor(loss_scale, ms.float32)
        losses = []
        for micro_step in range(grad_accum):
            image, label = next(batches)
            # training masks: a function of (seed, rank, iteration, micro-step), so resume and ranks are exact
            masks = draw_masks(mask_layout, image.shape[0], seed=seed, rank=dist.rank, iteration=iteration,
                               micro_step=micro_step)
            loss, stepped = step(scale_tensor, image, label, *(ms.Tensor(mask) for mask in masks))
            losses.append(float(loss.asnumpy()))
        if grad_accum > 1:
            stepped = step.apply_accumulated(scale_tensor)
        loss_value = float(np.mean(losses))
        overflow = 0 if bool(stepped) else 1
        if scaler:
            scaler.update(not overflow)
            if overflow:
                log.info("iter %d: gradient overflow at loss scale %g, step skipped", iteration + 1, loss_scale)
                if loss_scale <= scaler.min_scale:
                    raise TrainingDiverged(f"gradients overflow at iteration {iteration} with the loss scale already "
                                           f"at its minimum {scaler.min_scale:g} (loss {loss_value}): training "
                                           f"stopped, no model written (lower the learning rate, or use fp32)")
        step_time = time.perf_counter() - step_start
        if iteration == start_iteration:
            log.info("first step %.1f s (the train step's graph compile included)", step_time)
        # mixed: a non-finite loss from a float16 overflow comes with an overflowed, skipped step
        if not math.isfinite(loss_value) and not overflow:
            raise TrainingDiverged(f"loss is {loss_value} at iteration {iteration}: training stopped, no model written "
                                   f"(lower the learning rate, or check the data)")
        done = iteration + 1
        window_steps += 1
        val_miou = None
        if validator and done % int(settings["eval_interval"]) == 0:
            val_miou = _evaluate_and_keep_best(validator, settings, done, best, out_ckpt, dist)
        if done % log_interval == 0 or done == iterations or val_miou is not None:
            now = time.perf_counter()
            mean_step = (now - window_start) / window_steps
            window_start, window_steps = now, 0
            eta = mean_step * (iterations - done)
            log.info("iter %d/%d  loss %.4f  lr %.3e  %.2f s/it  %.2f img/s  eta %s", done, iterations, loss_value,
                     optimizer.get_lr(), mean_step, global_batch / mean_step, format_eta(eta))
        if dist.is_main:
            train_log.append({"iteration": done, "lr": schedule(iteration), "loss": loss_value,
                              "step_time_s": round(step_time, 4), "images_per_s": round(global_batch / step_time, 3),
                              "loss_scale": loss_scale, "overflow": overflow,
                              "val_mIoU": "" if val_miou is None else val_miou})
        if dist.is_main and settings["checkpoint_interval"] and done % int(settings["checkpoint_interval"]) == 0 \
                and done < iterations:
            resume_extras = {"iteration": done}
            if scaler is not None:
                resume_extras.update(loss_scale=scaler.scale, loss_scale_good_steps=scaler.good_steps)
            state.save(done, _state_entries(net, optimizer), append_dict=resume_extras)

    wall = time.perf_counter() - started
    summary = {"variant": variant, "iterations": iterations, "start_iteration": start_iteration,
               "wall_time_s": round(wall, 1), "last_loss": loss_value, "best_val_mIoU": best["mIoU"],
               "best_iteration": best["iteration"]}
    if dist.is_main:
        _write_outputs(net, train_log, out_ckpt, out_log, out_curve, f"SegFormer-{variant}")
        state.remove()
        log.info("finished %d iterations in %.1f s; model written to %s", iterations - start_iteration, wall,
                 out_ckpt)
    return summary


def _write_outputs(net, train_log: TrainLog, out_ckpt, out_log, out_curve, title: str) -> None:
    """The model first (the largest), then the log and the curve; if one cannot be written, those already
    written go too, so that no set of outputs looks finished without its model (the state folder stays)."""
    written = []
    try:
        with atomic_path(out_ckpt) as tmp:
            ms.save_checkpoint(net, str(tmp))
        written.append(Path(out_ckpt))
        with atomic_path(out_log) as tmp:
            tmp.write_text(train_log.path.read_text())
        written.append(Path(out_log))
        if out_curve:
            plot_curve(Path(out_log), Path(out_curve), title)
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise


def _state_entries(net: nn.Cell, optimizer: AdamW) -> list[dict]:
    """Everything a resumed run needs: network weights (BN statistics included) and optimizer state."""
    entries = [{"name": name, "data": param} for name, param in net.parameters_and_names()]
    entries += [{"name": param.name, "data": param} for param in optimizer.state_parameters()]
    return entries


def _wait_for_state(state: StateDir, timeout_s: float = 600.0):
    """Non-main ranks: wait until rank 0 has stamped the state folder with THIS run's settings hash, then
    resume from the same file. Until rank 0 rewrites it, settings.json may still be a previous run's
    (after a settings change): that is a wait, not an error, bounded by `timeout_s`."""
    deadline = time.time() + timeout_s
    while state.stamped_hash() != state.hash:
        if time.time() > deadline:
            raise TimeoutError(f"{state.path}: rank 0 did not stamp the state folder with this run's settings "
                               f"(hash {state.hash}, found {state.stamped_hash()}) within {timeout_s:.0f} s")
        time.sleep(0.2)
    checkpoints = state.checkpoints()
    return checkpoints[-1][1] if checkpoints else None


def _validation(net, val_list, settings: dict | None):
    """(segmenter, val pairs) for the periodic validation (one compiled forward, reused)."""
    from segformer.data.cityscapes import read_split_list
    from segformer.engine.inference import Segmenter
    from segformer.engine.inference_settings import InferenceSettings

    return Segmenter(net, InferenceSettings.from_config(settings)), read_split_list(val_list)


def _evaluate_and_keep_best(validation, settings, iteration, best, out_ckpt, dist) -> float:
    from segformer.engine.evaluate import evaluate_model

    segmenter, pairs = validation
    net = segmenter.net
    matrix = evaluate_model(segmenter, pairs, num_classes=settings["num_classes"])
    miou = float(matrix.metrics()["mIoU"])
    log.info("iteration %d: val mIoU %.4f (%s)", iteration, miou, segmenter.settings.describe())
    if miou > best["mIoU"]:
        best.update(mIoU=miou, iteration=iteration)
        if dist.is_main:
            best_path = Path(out_ckpt).with_name("best_model.ckpt")
            with atomic_path(best_path) as tmp:
                ms.save_checkpoint(net, str(tmp))
            log.info("best so far: %s", best_path)
    return miou
