"""Bilinear resize (segformer/models/resize.py) against torch.nn.functional.interpolate: the interpolation
matrices, the separable products and their written-out backward, and the two formulations against each other."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import mindspore as ms
from mindspore import Tensor, nn

from segformer.models.resize import BilinearResize, bilinear_weights

ms.set_device("CPU")

# (input NCHW, output size, align_corners): integer up-scales as in the head (x2, x4, x8) and the loss (x4),
# non-integer ratios, down-scaling, one axis unchanged, a 1-pixel side, align_corners both ways
CASES = [
    ((2, 3, 4, 4), (32, 32), False),
    ((1, 4, 7, 9), (32, 48), False),
    ((1, 2, 16, 16), (5, 16), False),
    ((2, 3, 8, 6), (8, 17), False),
    ((1, 1, 1, 3), (4, 1), False),
    ((1, 2, 10, 10), (3, 7), True),
    ((1, 2, 5, 6), (11, 13), True),
]


def _torch_resize(x, g, size, align_corners):
    """F.interpolate's output and the gradient of sum(output * g) with respect to x."""
    tx = torch.from_numpy(x).requires_grad_(True)
    out = F.interpolate(tx, size=size, mode="bilinear", align_corners=align_corners)
    (out * torch.from_numpy(g)).sum().backward()
    return out.detach().numpy(), tx.grad.numpy()


@pytest.mark.parametrize("align_corners", [False, True])
def test_weights_are_interpolate_of_the_unit_vectors(align_corners):
    """Row o of the matrix = what F.interpolate makes of each input unit vector at output o: PyTorch's
    weights bit for bit (its float32 source coordinates), over all sizes 1..24 -> 1..40; rows sum to 1."""
    for in_size in range(1, 25):
        eye = torch.eye(in_size).reshape(in_size, 1, in_size)
        for out_size in range(1, 41):
            reference = F.interpolate(eye, size=out_size, mode="linear", align_corners=align_corners)[:, 0, :].T
            weights = bilinear_weights(in_size, out_size, align_corners)
            assert weights.shape == (out_size, in_size)
            np.testing.assert_array_equal(weights, reference.numpy(), err_msg=f"{in_size} -> {out_size}")
            np.testing.assert_allclose(weights.sum(axis=1), 1.0, rtol=0, atol=1e-6)
            assert (np.count_nonzero(weights, axis=1) <= 2).all()


class _WeightedSum(nn.Cell):
    def __init__(self, size, align_corners, formulation):
        super().__init__()
        self.resize = BilinearResize(align_corners, formulation)
        self.size = size

    def construct(self, x, g):
        return (self.resize(x, self.size) * g).sum()


@pytest.mark.parametrize("formulation", ["matmul", "conv"])
@pytest.mark.parametrize("shape, size, align_corners", CASES)
def test_resize_and_gradient_match_torch(shape, size, align_corners, formulation):
    """Output and input gradient equal F.interpolate's to float32 rounding (the separable form sums the
    width pass first, as PyTorch's kernel does), in PyNative mode."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(np.float32)
    g = rng.standard_normal(shape[:2] + size).astype(np.float32)
    ref_out, ref_grad = _torch_resize(x, g, size, align_corners)
    out = BilinearResize(align_corners, formulation)(Tensor(x), size).asnumpy()
    _, grad = ms.value_and_grad(_WeightedSum(size, align_corners, formulation))(Tensor(x), Tensor(g))
    np.testing.assert_allclose(out, ref_out, rtol=0, atol=1e-6)
    np.testing.assert_allclose(grad.asnumpy(), ref_grad, rtol=1e-5, atol=1e-6 * np.abs(ref_grad).max())


def test_separable_resize_in_graph_mode_and_unchanged_size():
    """The matrices are graph constants (ops.constexpr) in a compiled graph; an unchanged size returns the
    input itself."""
    rng = np.random.default_rng(1)
    shape, size = (2, 5, 7, 9), (32, 48)
    x = rng.standard_normal(shape).astype(np.float32)
    g = rng.standard_normal(shape[:2] + size).astype(np.float32)
    ref_out, ref_grad = _torch_resize(x, g, size, False)
    loss, grad = ms.jit(ms.value_and_grad(_WeightedSum(size, False, "matmul")))(Tensor(x), Tensor(g))
    assert float(loss) == pytest.approx(float((ref_out * g).sum()), rel=1e-5)
    np.testing.assert_allclose(grad.asnumpy(), ref_grad, rtol=1e-5, atol=1e-6 * np.abs(ref_grad).max())
    same = Tensor(x)
    assert BilinearResize(formulation="matmul")(same, (7, 9)) is same
