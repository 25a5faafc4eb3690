"""``hst_fast.kernels.layer_norm`` against ``layer_norm_reference``: output and every gradient.

Runs on CPU under Triton's interpreter (``tests/conftest.py`` sets ``TRITON_INTERPRET=1``), so
row counts stay small; odd row counts (197, 50, 37) leave partial row tiles, and widths that are
not powers of two leave padded columns.
"""

import pytest
import torch

from hst_fast.kernels._compat import UnsupportedInput
from hst_fast.kernels.layer_norm import layer_norm
from hst_fast.kernels.reference import layer_norm_reference

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
# fp32: same math as the reference up to summation order. fp16/bf16: the kernel rounds once at the end, the fp32
# reference (same upcast inputs) not at all; the error is the output's rounding plus fp32 sums over <= 197 rows,
# so tolerances are a few units in the last place of the dtype (fp16 eps 1e-3, bf16 eps 8e-3) on O(1) values.
TOLERANCES = {
    torch.float32: {"atol": 1e-5, "rtol": 1e-5},
    torch.float16: {"atol": 4e-3, "rtol": 4e-3},
    torch.bfloat16: {"atol": 3e-2, "rtol": 2e-2},
}
# Weight gradients sum over all rows: fp32 sums of rounded dy, so they scale with sqrt(rows) in 16-bit.
GRAD_SUM_TOLERANCES = {
    torch.float32: {"atol": 1e-4, "rtol": 1e-5},
    torch.float16: {"atol": 3e-2, "rtol": 1e-2},
    torch.bfloat16: {"atol": 2e-1, "rtol": 3e-2},
}

CASES = [
    # (leading shape, C, dtype): every side width and the ViT widths in fp32, a spread in 16-bit.
    ((2, 197), 72, torch.float32),
    ((197,), 24, torch.float32),
    ((50,), 32, torch.float32),
    ((3, 37), 48, torch.float32),
    ((37,), 64, torch.float32),
    ((2, 50), 96, torch.float32),
    ((37,), 128, torch.float32),
    ((2, 25), 384, torch.float32),
    ((37,), 768, torch.float32),
    ((19,), 1024, torch.float32),
    ((2, 197), 72, torch.float16),
    ((37,), 24, torch.float16),
    ((50,), 128, torch.float16),
    ((50,), 384, torch.float16),
    ((2, 9), 768, torch.float16),
    ((2, 197), 64, torch.bfloat16),
    ((37,), 24, torch.bfloat16),
    ((3, 37), 48, torch.bfloat16),
    ((50,), 96, torch.bfloat16),
    ((2, 9), 768, torch.bfloat16),
]


def _case_id(case) -> str:
    lead, width, dtype = case
    rows = "x".join(str(n) for n in lead)
    return f"N{rows}-C{width}-{DTYPE_NAMES[dtype]}"


def _inputs(lead, width, dtype):
    x = (torch.randn(*lead, width, device=DEVICE) * 2 + 0.5).to(dtype)
    weight = (1 + 0.1 * torch.randn(width, device=DEVICE)).to(dtype)
    bias = (0.1 * torch.randn(width, device=DEVICE)).to(dtype)
    return x, weight, bias


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_layer_norm_matches_reference(case):
    lead, width, dtype = case
    eps = 1e-6
    x, weight, bias = _inputs(lead, width, dtype)
    dy = torch.randn(*lead, width, device=DEVICE).to(dtype)

    leaves = [t.clone().requires_grad_() for t in (x, weight, bias)]
    y = layer_norm(*leaves, eps)
    y.backward(dy)

    # Answer key: the fp32 reference on the same (already rounded) inputs.
    ref_leaves = [t.float().requires_grad_() for t in (x, weight, bias)]
    y_ref = layer_norm_reference(*ref_leaves, eps)
    y_ref.backward(dy.float())

    assert y.dtype == dtype and y.shape == x.shape
    torch.testing.assert_close(y.float(), y_ref, **TOLERANCES[dtype])
    torch.testing.assert_close(leaves[0].grad.float(), ref_leaves[0].grad, **TOLERANCES[dtype])
    for name, leaf, ref in zip(("weight", "bias"), leaves[1:], ref_leaves[1:]):
        assert leaf.grad.dtype == dtype, name
        torch.testing.assert_close(
            leaf.grad.float(), ref.grad, **GRAD_SUM_TOLERANCES[dtype], msg=lambda m, name=name: f"{name}: {m}"
        )


def test_layer_norm_no_grad_and_eps():
    """A large eps (HST's 1e-5 vs 1e-6 both pass through) and inference without autograd."""
    x, weight, bias = _inputs((5, 7), 48, torch.float32)
    with torch.no_grad():
        y = layer_norm(x, weight, bias, 1e-1)
    torch.testing.assert_close(y, layer_norm_reference(x, weight, bias, 1e-1), atol=1e-5, rtol=1e-5)


def test_layer_norm_frozen_affine_only_x_grad():
    x, weight, bias = _inputs((37,), 64, torch.float32)
    x.requires_grad_()
    layer_norm(x, weight, bias, 1e-6).sum().backward()
    assert x.grad is not None and weight.grad is None and bias.grad is None


def test_layer_norm_frozen_input_only_affine_grads():
    """x without a gradient: the kernel skips dx and still gives the affine's gradients."""
    x, weight, bias = _inputs((2, 37), 72, torch.float32)
    leaves = [weight.clone().requires_grad_(), bias.clone().requires_grad_()]
    dy = torch.randn_like(x)
    layer_norm(x, *leaves, 1e-6).backward(dy)
    ref_leaves = [weight.clone().requires_grad_(), bias.clone().requires_grad_()]
    layer_norm_reference(x, *ref_leaves, 1e-6).backward(dy)
    for name, leaf, ref in zip(("weight", "bias"), leaves, ref_leaves):
        torch.testing.assert_close(leaf.grad, ref.grad, **GRAD_SUM_TOLERANCES[torch.float32], msg=name)


def test_layer_norm_empty_rows():
    x, weight, bias = _inputs((0,), 32, torch.float32)
    assert layer_norm(x, weight, bias, 1e-6).shape == (0, 32)


@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda x, w, b: (x.double(), w.double(), b.double()), UnsupportedInput, "dtype torch.float64"),
        (lambda x, w, b: (x.half(), w, b), UnsupportedInput, "mixed dtypes"),
        (lambda x, w, b: (x.transpose(0, 1), w, b), ValueError, r"weight \(64,\)"),
        (lambda x, w, b: (x[:, :32], w[:32], b[:32]), UnsupportedInput, "non-contiguous"),
        (lambda x, w, b: (x, w[:32], b), ValueError, r"must both be \[C\] = \[64\]"),
        (lambda x, w, b: (x, w, b[None]), ValueError, r"bias \(1, 64\)"),
    ],
    ids=["float64", "mixed-dtypes", "transposed-width", "non-contiguous", "short-weight", "bias-2d"],
)
def test_layer_norm_rejects_bad_inputs(make, error, match):
    x, weight, bias = _inputs((40,), 64, torch.float32)
    with pytest.raises(error, match=match):
        layer_norm(*make(x, weight, bias), 1e-6)


def test_layer_norm_rejects_too_wide():
    x, weight, bias = _inputs((2,), 8200, torch.float32)
    with pytest.raises(UnsupportedInput, match="wider than"):
        layer_norm(x, weight, bias, 1e-6)
