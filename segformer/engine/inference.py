"""Test-time inference as mmseg 0.x (the authors' code base) does it: whole image, sliding window, and
multi-scale + flip. One `Segmenter` serves evaluation, rendering and the training-time validation, so
the predictions that are scored are the ones that are drawn.

For each test scale (the image resized, keeping its ratio, to fit `scale` x ratio; no `scale` means
the image's own size x ratio) and each flip:
- whole: the network sees the whole resized image; its H/4 logits are resized (bilinear) to the
  network input's size (mmseg `encode_decode`);
- slide: windows of `crop_size` every `stride` pixels, the last window of a row/column pushed back
  inside the image; overlapping logits are averaged (mmseg `slide_inference`);
then the logits are resized (bilinear, align_corners False) to the original image size, so that the
argmax is taken at the label's full resolution. With one scale and no flip the logits decide; with
several (or a flip), softmax probabilities are averaged over all of them (mmseg `aug_test`).

Inputs smaller than the network's minimum (MIN_INPUT_SIDE = 29 px a side: the stage-1 map, a quarter
of the input, must hold one 8x8 patch of the attention's spatial reduction) are not refused. mmseg 0.x
has no rule for them: its test pipelines resize every image to the test scale (keep-ratio `Resize`,
which enlarges small images, so with `scale: [2048, 1024]` a photo reaches this case only if it is
extremely elongated) and `slide_inference` decodes a window smaller than the crop as it is (the PyTorch
model then fails the same way; open-mmlab/mmsegmentation#389), where early 0.x releases (code many
forks still carry) padded every window to the crop with zeros. The rules here extend each mode the
way it already works, and change nothing for inputs of 29 px or more (tests/test_inference.py):
- whole: an input (after the test resize) with a side under the minimum is resized up, keeping its
  ratio, until its short side is MIN_INPUT_SIDE: the keep-ratio `Resize` of the test pipeline, taken
  as far as the network needs. The network sees the whole picture, not a canvas of padding, and its
  logits are resized to the original size like those of any test scale.
- slide: a window with a side under the minimum is padded at the bottom/right with zeros after
  normalisation (mmseg's `Pad` value) up to the minimum, and only the logits of its real pixels are
  kept, as early `slide_inference` did: sliding windows keep the pixel scale the mode is about.
- multi-scale + flip: every view follows its mode's rule, and its scores are brought back to the
  original size before averaging, as every view's are.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import mindspore as ms
import numpy as np
from mindspore import Tensor, nn

from segformer.data.transforms import NormalizePadCHW, rescale_size, resize_pair
from segformer.engine.inference_settings import InferenceSettings, window_boxes
from segformer.models.checkpoint import CheckpointMismatch, check_fits_model, without_optimizer_state
from segformer.models.layers import conv_output_size
from segformer.models.resize import BilinearResize
from segformer.models.variants import VARIANTS

log = logging.getLogger(__name__)


def minimum_input_side(config=VARIANTS["b0"]) -> int:
    """The smallest image side every stage of the MiT backbone accepts: each stage's map (after its
    overlapping patch embedding) must be at least its spatial-reduction ratio. 29 for b0 ... b5."""
    side = 1
    while True:
        size, fits = side, True
        for patch, stride, ratio in zip(config.patch_sizes, config.strides, config.sr_ratios):
            size = conv_output_size(size, patch, stride, patch // 2)
            fits = fits and size >= ratio
        if fits:
            return side
        side += 1


MIN_INPUT_SIDE = minimum_input_side()


def enlarge_to_minimum(size: tuple[int, int], width: int, height: int, minimum: int = MIN_INPUT_SIDE):
    """(w, h) `size` if both sides reach `minimum`, else the keep-ratio size of the width x height
    image whose short side is `minimum` (rounded as mmcv.rescale_size)."""
    if min(size) >= minimum:
        return size
    factor = minimum / min(width, height)
    return max(minimum, int(width * factor + 0.5)), max(minimum, int(height * factor + 0.5))


def load_model(variant: str, checkpoint, num_classes: int = 19) -> nn.Cell:
    """SegFormer-`variant` with every parameter (head included) from a MindSpore checkpoint, in eval mode.

    A checkpoint that does not fit (another variant, a backbone only, other classes) is refused with
    every offending name listed (CheckpointMismatch, a ValueError).
    """
    from segformer.models import build_model

    net = build_model(variant, num_classes)
    try:
        params = ms.load_checkpoint(str(checkpoint))
    except (RuntimeError, ValueError, OSError) as e:
        raise CheckpointMismatch(f"{checkpoint}: not a readable MindSpore checkpoint ({e})") from None
    params = without_optimizer_state(params)
    check_fits_model(params, net, str(checkpoint), head_required=True)
    ms.load_param_into_net(net, params, strict_load=True)
    net.set_train(False)
    return net


class LogitsAtInputSize(nn.Cell):
    """image [1, 3, h, w] -> logits [1, C, h, w]: the network, then bilinear up to its input's size."""

    def __init__(self, net: nn.Cell):
        super().__init__(auto_prefix=False)  # keep the model's parameter names (a prefix would rename them)
        self.net = net
        self.resize = BilinearResize(formulation=getattr(net, "formulation", "auto"))   # the model's own

    def construct(self, image):
        return self.resize(self.net(image), image.shape[2:])


def softmax_channels(logits: np.ndarray) -> np.ndarray:
    """Softmax over axis 0 (classes) of [C, H, W] float32, computed stably."""
    shifted = logits - logits.max(axis=0, keepdims=True)
    np.exp(shifted, out=shifted)
    shifted /= shifted.sum(axis=0, keepdims=True)
    return shifted


class Segmenter:
    """A model in eval mode that turns an H x W x 3 uint8 RGB image into class scores / train ids."""

    def __init__(self, net: nn.Cell, settings: InferenceSettings | None = None, *, jit: bool = True):
        self.net = net
        self.settings = settings or InferenceSettings()
        self.normalize = NormalizePadCHW()
        cell = LogitsAtInputSize(net)
        self.resize = cell.resize
        self._forward = ms.jit(cell.construct) if jit else cell

    def input_sizes(self, width: int, height: int) -> list[tuple[int, int]]:
        """(w, h) of the resized image for each test ratio (mmseg MultiScaleFlipAug + keep-ratio Resize);
        in whole mode enlarged, keeping the ratio, where a side would be under MIN_INPUT_SIDE."""
        base_w, base_h = self.settings.scale or (width, height)
        sizes = [rescale_size(width, height, (int(base_w * r), int(base_h * r))) for r in self.settings.ratios]
        sizes = [(max(w, 1), max(h, 1)) for w, h in sizes]  # a 1-px side at ratio 0.5 would round to 0
        if self.settings.mode == "whole":
            sizes = [enlarge_to_minimum(size, width, height) for size in sizes]
        return sizes

    def window_logits(self, image: np.ndarray, batch: Tensor, y1: int, y2: int, x1: int, x2: int) -> np.ndarray:
        """Logits [C, y2 - y1, x2 - x1] of one slide window; one with a side under MIN_INPUT_SIDE is padded
        with zeros (after normalisation) at the bottom/right to the minimum and its real pixels kept."""
        height, width = y2 - y1, x2 - x1
        if min(height, width) >= MIN_INPUT_SIDE:
            return self._forward(batch[:, :, y1:y2, x1:x2]).asnumpy()[0]
        padded = np.zeros((1, 3, max(height, MIN_INPUT_SIDE), max(width, MIN_INPUT_SIDE)), np.float32)
        padded[0, :, :height, :width] = image[:, y1:y2, x1:x2]
        return self._forward(Tensor(padded)).asnumpy()[0][:, :height, :width]

    def network_logits(self, image: np.ndarray) -> Tensor:
        """Normalised image (3 x h x w float32) -> logits [1, C, h, w] by whole or slide inference."""
        batch = Tensor(image[None])
        if self.settings.mode == "whole":
            return self._forward(batch)
        height, width = image.shape[1:]
        total = count = None
        for y1, y2, x1, x2 in window_boxes(height, width, self.settings.crop_size, self.settings.stride):
            window = self.window_logits(image, batch, y1, y2, x1, x2)
            if total is None:
                total = np.zeros((window.shape[0], height, width), np.float32)
                count = np.zeros((height, width), np.float32)
            total[:, y1:y2, x1:x2] += window
            count[y1:y2, x1:x2] += 1
        return Tensor((total / count)[None])

    def scores(self, image: np.ndarray) -> np.ndarray:
        """[C, H, W] float32 at the image's own size: logits (single scale, no flip) or mean probabilities."""
        height, width = image.shape[:2]
        flips = (False, True) if self.settings.flip else (False,)
        total, views = None, 0
        for size in self.input_sizes(width, height):
            resized, _ = resize_pair(image, None, size)
            for flip in flips:
                view = np.ascontiguousarray(resized[:, ::-1]) if flip else resized
                logits = self.network_logits(self.normalize.normalize_chw(view))
                logits = self.resize(logits, (height, width))
                scores = logits.asnumpy()[0]
                if self.settings.averages_probabilities:
                    scores = softmax_channels(scores)
                if flip:
                    scores = scores[:, :, ::-1]
                total = scores if total is None else total + scores
                views += 1
        return total / views if views > 1 else total

    def predict(self, image: np.ndarray) -> np.ndarray:
        """H x W uint8 train ids (argmax of the scores; ties go to the lower class, as torch.argmax)."""
        return self.scores(image).argmax(axis=0).astype(np.uint8)


@dataclass
class Progress:
    """A log line every `every` items with rate and ETA (long evaluations and renderings show progress)."""

    total: int
    what: str
    every: int = 10
    compiles: bool = True  # the first item includes the model's graph compile (reported on its own line)
    start: float = field(default_factory=time.perf_counter)
    done: int = 0

    def step(self) -> None:
        self.done += 1
        if self.done == 1 and self.compiles:
            log.info("%s: first image %.1f s (graph compile included)", self.what, time.perf_counter() - self.start)
        if self.done % self.every and self.done != self.total:
            return
        elapsed = time.perf_counter() - self.start
        rate = self.done / elapsed if elapsed > 0 else float("inf")
        eta = (self.total - self.done) / rate if rate > 0 else 0.0
        log.info("%s %d/%d (%.2f images/s, ETA %.0f s)", self.what, self.done, self.total, rate, eta)

