"""The 3x3 depthwise convolution of Mix-FFN (stride 1, padding 1, groups = channels) and how it is computed.

"conv" formulation (Ascend/GPU): MindSpore's grouped Conv2D. "matmul" formulation (CPU): `Depthwise3x3Product`,
whose forward and written-out backward run in one of two ways, the same function either way:
- direct (the default where it builds): three small C++ loops (`kernels/depthwise3x3.cc`) run by MindSpore as
  ahead-of-time custom operators (`ops.Custom(func_type="aot")`, documented for CPU): one pass over the map
  for the output, one for the weight gradient, and the input gradient is the output's loop on the output
  gradient with the kernel rotated by 180 degrees. 7-12x faster than the taps below (benchmarks/README.md).
  The source is compiled on first use with the system's C++ compiler (`CXX`, default g++; -O3) into
  a per-user cache (`SEGFORMER_KERNEL_CACHE`, default ~/.cache/segformer/kernels), named by a hash of the
  source and flags, written atomically: concurrent jobs share one build.
- taps: im2col (9 shifted copies of the map) times each channel's 9 weights as one batched product;
  MindSpore's own kernels only. Used where the C++ cannot be built or loaded (a warning says why), for
  non-float32 maps, with `SEGFORMER_DEPTHWISE=taps`, and in exported graphs (`use_portable_kernels`: a custom
  operator names a library on this machine, which a MindIR file must not depend on).
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Optional

import mindspore as ms
from mindspore import nn, ops

from segformer.models.layers import _ConvShapedParameters, after, batched_weight, in_dtype_of, resolve_formulation

log = logging.getLogger(__name__)

KERNEL_SOURCE = Path(__file__).with_name("kernels") / "depthwise3x3.cc"
COMPILE_FLAGS = ("-O3", "-std=c++17", "-shared", "-fPIC", "-fopenmp-simd", "-pthread")
CHOICES = ("auto", "direct", "taps")   # SEGFORMER_DEPTHWISE


def kernel_cache_dir() -> Path:
    if os.environ.get("SEGFORMER_KERNEL_CACHE"):
        return Path(os.environ["SEGFORMER_KERNEL_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "segformer" / "kernels"


def build_kernel_library(source: Path = KERNEL_SOURCE, cache: Optional[Path] = None) -> Path:
    """The compiled library of `source` in `cache`, built now unless a build of the same source and flags
    is there. Raises RuntimeError with the compiler's message when it cannot be built."""
    compiler = os.environ.get("CXX", "g++")
    digest = hashlib.sha256(source.read_bytes() + " ".join((compiler,) + COMPILE_FLAGS).encode()).hexdigest()[:16]
    cache = kernel_cache_dir() if cache is None else cache
    library = cache / f"{source.stem}-{digest}.so"
    if library.is_file():
        return library
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache, prefix=".build-") as staging:
        staged = Path(staging) / library.name
        try:
            result = subprocess.run([compiler, *COMPILE_FLAGS, "-o", str(staged), str(source)],
                                    capture_output=True, text=True, timeout=300)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise RuntimeError(f"cannot run the C++ compiler {compiler!r}: {e}") from None
        if result.returncode != 0 or not staged.is_file():
            raise RuntimeError(f"{compiler} failed on {source} (exit {result.returncode}): {result.stderr.strip()[-2000:]}")
        os.replace(staged, library)
    return library


class DirectKernels:
    """The custom operators of `kernels/depthwise3x3.cc` (float32, NCHW): `forward(map, weight)` -> map-shaped
    correlation with the [C, 1, 3, 3] weight; `weight_gradient(map, dout)` -> [C, 1, 3, 3]."""

    def __init__(self, library: Path):
        self.library = library
        self.forward = ops.Custom(f"{library}:depthwise3x3_forward", out_shape=lambda map_shape, _: map_shape,
                                  out_dtype=lambda map_dtype, _: map_dtype, func_type="aot")
        self.weight_gradient = ops.Custom(f"{library}:depthwise3x3_weight_gradient",
                                          out_shape=lambda map_shape, _: [map_shape[1], 1, 3, 3],
                                          out_dtype=lambda map_dtype, _: map_dtype, func_type="aot")


@lru_cache(maxsize=None)
def direct_kernels() -> Optional[DirectKernels]:
    """The direct kernels of this process (built on first use), or None where they cannot be had or
    `SEGFORMER_DEPTHWISE=taps`; `SEGFORMER_DEPTHWISE=direct` makes a failed build an error."""
    choice = os.environ.get("SEGFORMER_DEPTHWISE", "auto")
    if choice not in CHOICES:
        raise ValueError(f"SEGFORMER_DEPTHWISE={choice!r}: expected one of {CHOICES}")
    if choice == "taps":
        return None
    try:
        return DirectKernels(build_kernel_library())
    except (RuntimeError, OSError, TypeError) as e:   # TypeError: outside MS_CUSTOM_AOT_WHITE_LIST (ops.Custom)
        if choice == "direct":
            raise
        log.warning("depthwise 3x3 on CPU: the C++ kernels are not available (%s); using im2col, slower", e)
        return None


class Depthwise3x3Product(nn.Cell):
    """Bias-free 3x3 depthwise conv, [B, C, H, W] map and [C, 1, 3, 3] weight -> [B, C, H*W], with its
    backward written out (it needs only the input map) and two ways to compute it (module docstring).

    Taps: im2col viewed as [B, C, 9, HW] times each channel's 9 weights, one BatchMatMul on the explicitly
    broadcast weight (ops.matmul's own broadcasting would make the backward transpose the taps, and a CPU
    Transpose keeps 8 bytes per element allocated). The taps, 9x the map, are rebuilt in the backward instead
    of being kept from the forward for every block until the backward reaches it (autodiff would keep them:
    the weight's gradient reads them). Input gradient either way: the same correlation of the output
    gradient with the kernel rotated by 180 degrees (the adjoint of a padded correlation)."""

    def __init__(self, channels: int, direct: bool = True):
        super().__init__()
        self.channels = channels
        self.kernels = direct_kernels() if direct else None
        self.weight_times_taps = ops.BatchMatMul()
        self.gradient_times_taps = ops.BatchMatMul(transpose_b=True)
        # ops.unfold's primitive, made here: ops.unfold makes it on the fly, which fails to compile in the
        # bprop of a cell that calls this one's methods
        self.im2col = ops.Im2Col(ksizes=(3, 3), strides=(1, 1), dilations=(1, 1), pads=(1, 1))

    def use_taps(self):
        """Compute with MindSpore's own kernels only (for graphs that leave this machine)."""
        self.kernels = None

    def _direct(self, feature_map) -> bool:
        return self.kernels is not None and feature_map.dtype == ms.float32

    def filtered(self, feature_map, weight):
        """The conv's output [B, C, H*W]."""
        batch, channels, height, width = feature_map.shape
        if self._direct(feature_map):
            return self.kernels.forward(feature_map, weight).reshape(batch, channels, height * width)
        product = self.weight_times_taps(self._per_sample(weight, batch), self._taps(feature_map))
        return product.reshape(batch, channels, height * width)

    def weight_gradient(self, feature_map, filtered_grad):
        """The weight's gradient [C, 1, 3, 3] from the input map and the output's gradient [B, C, H*W]."""
        if self._direct(feature_map):
            return self.kernels.weight_gradient(feature_map, filtered_grad.reshape(feature_map.shape))
        batch, channels = feature_map.shape[0], feature_map.shape[1]
        per_sample = self.gradient_times_taps(filtered_grad.reshape(batch, channels, 1, -1), self._taps(feature_map))
        return per_sample.sum(axis=0).reshape(channels, 1, 3, 3)

    def input_gradient(self, filtered_grad, weight, map_shape):
        """The input map's gradient (map_shape) from the output's [B, C, H*W]."""
        rotated = ops.flip(weight, (2, 3))   # a new tensor (a reversed slice would be a strided view in PyNative)
        return self.filtered(filtered_grad.reshape(map_shape), rotated).reshape(map_shape)

    def construct(self, feature_map, weight):
        return self.filtered(feature_map, weight)

    def bprop(self, feature_map, weight, out, dout):
        feature_map = after(feature_map, dout)
        return self.input_gradient(dout, weight, feature_map.shape), self.weight_gradient(feature_map, dout)

    def _taps(self, feature_map):
        batch, _, height, width = feature_map.shape
        return self.im2col(feature_map).reshape(batch, self.channels, 9, height * width)

    def _per_sample(self, weight, batch):
        return batched_weight(weight.reshape(self.channels, 1, 9), batch)


class DepthwiseConv3x3(_ConvShapedParameters):
    """3x3 depthwise conv (padding 1, groups = channels, with bias): NCHW map -> NCHW map.

    "conv": the grouped conv kernel. "matmul": `Depthwise3x3Product` (im2col's taps were already about 7x
    faster than MindSpore's grouped conv kernel on CPU at SegFormer's stage-1 shapes). The weight keeps the
    grouped-conv layout [C, 1, 3, 3].
    """

    def __init__(self, channels: int, formulation: str):
        super().__init__(channels, channels, 3, groups=channels)
        self.channels = channels
        self.use_matmul = resolve_formulation(formulation) == "matmul"
        self.conv2d = ops.Conv2D(channels, 3, mode=1, pad_mode="pad", pad=1, stride=1, group=channels)
        self.product = Depthwise3x3Product(channels) if self.use_matmul else None

    def construct(self, feature_map):
        weight, bias = in_dtype_of(feature_map, self.weight, self.bias)
        if not self.use_matmul:
            return ops.bias_add(self.conv2d(feature_map, weight), bias)
        filtered = self.product(feature_map, weight)
        return ops.bias_add(filtered, bias).reshape(feature_map.shape)


def use_portable_kernels(net: nn.Cell) -> nn.Cell:
    """`net` with every depthwise product on MindSpore's own kernels (before exporting it); returns `net`."""
    for _, cell in net.cells_and_names():
        if isinstance(cell, Depthwise3x3Product):
            cell.use_taps()
    return net
