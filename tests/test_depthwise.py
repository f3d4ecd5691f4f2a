"""The CPU depthwise 3x3 (segformer/models/depthwise.py): the compiled C++ kernels against the im2col taps and
PyTorch's grouped conv, in graph mode at SegFormer-like shapes and odd ones, and how the library is built."""

import numpy as np
import pytest
import torch

import mindspore as ms
from mindspore import Tensor, nn

from segformer.models import build_model
from segformer.models.depthwise import (Depthwise3x3Product, build_kernel_library, direct_kernels,
                                        use_portable_kernels)

ms.set_device("CPU")


def test_direct_kernels_build_here():
    """The C++ kernels are what the CPU formulation trains with: on the machines this project supports (with a
    C++ compiler) they must build, not fall back silently."""
    kernels = direct_kernels()
    assert kernels is not None and kernels.library.is_file()
    assert Depthwise3x3Product(4).kernels is kernels


class _Passes(nn.Cell):
    """Output, weight gradient and input gradient of one product, as the written-out backward computes them."""

    def __init__(self, channels: int, direct: bool):
        super().__init__()
        self.product = Depthwise3x3Product(channels, direct)

    def construct(self, feature_map, weight, grad):
        return (self.product.filtered(feature_map, weight), self.product.weight_gradient(feature_map, grad),
                self.product.input_gradient(grad, weight, feature_map.shape))


@pytest.mark.parametrize("shape", [(2, 16, 8, 8), (1, 8, 13, 6), (2, 3, 5, 1), (2, 3, 1, 7), (1, 2, 1, 1)])
def test_direct_and_taps_compute_the_same_passes_as_pytorch(shape):
    rng = np.random.default_rng(sum(shape))
    feature_map = rng.standard_normal(shape).astype(np.float32)
    weight = rng.standard_normal((shape[1], 1, 3, 3)).astype(np.float32)
    grad = rng.standard_normal((shape[0], shape[1], shape[2] * shape[3])).astype(np.float32)
    t_map = torch.from_numpy(feature_map).requires_grad_(True)
    t_weight = torch.from_numpy(weight).requires_grad_(True)
    out = torch.nn.functional.conv2d(t_map, t_weight, padding=1, groups=shape[1])
    (out.flatten(2) * torch.from_numpy(grad)).sum().backward()
    expected = (out.detach().flatten(2).numpy(), t_weight.grad.numpy(), t_map.grad.numpy())
    for direct in (True, False):
        got = ms.jit(_Passes(shape[1], direct).construct)(Tensor(feature_map), Tensor(weight), Tensor(grad))
        for ours, theirs, what in zip(got, expected, ("output", "weight gradient", "input gradient")):
            np.testing.assert_allclose(ours.asnumpy(), theirs, rtol=1e-5, atol=1e-5 * max(1.0, np.abs(theirs).max()),
                                       err_msg=f"{what}, direct={direct}")


def test_library_is_built_once_and_reused(tmp_path):
    first = build_kernel_library(cache=tmp_path)
    stamp = first.stat().st_mtime_ns
    assert build_kernel_library(cache=tmp_path) == first and first.stat().st_mtime_ns == stamp
    assert [path.name for path in tmp_path.iterdir()] == [first.name]   # no staging left behind


def test_a_failed_build_names_the_compiler_and_the_source(tmp_path, monkeypatch):
    broken = tmp_path / "broken.cc"
    broken.write_text("this is not C++\n")
    with pytest.raises(RuntimeError, match=r"g\+\+ failed on .*broken\.cc"):
        build_kernel_library(broken, cache=tmp_path / "cache")
    assert not any((tmp_path / "cache").glob("*.so"))
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    with pytest.raises(RuntimeError, match="cannot run the C\\+\\+ compiler"):
        build_kernel_library(cache=tmp_path / "cache")


def test_unknown_choice_is_refused(monkeypatch):
    monkeypatch.setenv("SEGFORMER_DEPTHWISE", "winograd")
    direct_kernels.cache_clear()
    try:
        with pytest.raises(ValueError, match="SEGFORMER_DEPTHWISE='winograd'"):
            direct_kernels()
    finally:
        monkeypatch.undo()
        direct_kernels.cache_clear()


def test_portable_model_uses_no_custom_operator():
    """Exported graphs must not name a library on this machine: use_portable_kernels switches every product."""
    net = build_model("b0", formulation="matmul")
    products = [cell for _, cell in net.cells_and_names() if isinstance(cell, Depthwise3x3Product)]
    # per block: Mix-FFN's and its DWConv layer's (which holds the parameters)
    assert len(products) == 2 * 8 and all(product.kernels is not None for product in products)
    assert use_portable_kernels(net) is net
    assert all(product.kernels is None for product in products)
