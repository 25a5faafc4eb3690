"""``hst_fast.kernels.side_ffn`` against ``side_ffn_reference``: output and all seven gradients.

Runs on CPU under Triton's interpreter (``tests/conftest.py`` sets ``TRITON_INTERPRET=1``), so
token counts stay small. Row counts (37, 50, 74, 197, 100) leave partial row tiles, widths 24..96
(and 384) leave padded columns, and their hidden widths 4C leave partial hidden chunks. C = 384 (fp32 and bf16) also
takes the kernels' wide-row path, which reads x and dy again after the hidden loop (``_REREAD_BLOCK_C``).
"""

import pytest
import torch

from hst_fast.kernels._compat import UnsupportedInput
from hst_fast.kernels.reference import side_ffn_reference
from hst_fast.kernels.side_ffn import side_ffn

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
GRAD_NAMES = ("x", "norm_weight", "norm_bias", "fc1_weight", "fc1_bias", "fc2_weight", "fc2_bias")
# Errors relative to the largest magnitude of each compared tensor (weight gradients are sums over all rows, so an
# absolute tolerance would have to follow their size). fp32: the kernels do the reference's math in another order
# (measured <= 1e-6). fp16/bf16: the kernels round the LN output, GELU output and the backward's dbranch/dpre to the
# input dtype before each matmul as PyTorch's low-precision path does, and keep everything else in fp32; measured
# errors against the fp32 answer key (<= 5e-4 fp16, <= 1e-2 bf16) match PyTorch's own fp16/bf16 path.
RELATIVE_TOLERANCES = {torch.float32: 1e-5, torch.float16: 3e-3, torch.bfloat16: 3e-2}

CASES = [
    # (x shape, dtype, with branch_scale)
    ((2, 37, 24), torch.float32, True),
    ((1, 197, 72), torch.float32, False),
    ((2, 50, 48), torch.float32, True),
    ((3, 37, 64), torch.float32, False),
    ((2, 50, 96), torch.float32, True),
    ((100, 32), torch.float32, False),
    ((2, 9, 384), torch.float32, True),
    ((2, 9, 384), torch.bfloat16, True),
    ((2, 50, 64), torch.bfloat16, True),
    ((1, 197, 72), torch.bfloat16, False),
    ((2, 37, 48), torch.bfloat16, True),
    ((74, 24), torch.bfloat16, False),
    ((2, 50, 96), torch.float16, True),
    ((1, 50, 24), torch.float16, False),
]


def _case_id(case) -> str:
    shape, dtype, scaled = case
    dims = "-".join(f"{name}{n}" for name, n in zip("BN" if len(shape) == 3 else "N", shape[:-1]))
    return f"{dims}-C{shape[-1]}-{DTYPE_NAMES[dtype]}" + ("-scaled" if scaled else "")


def _inputs(shape, dtype, hidden=None):
    """x and the six weights, scaled like a trained block: O(1) activations in, O(1) branch out."""
    width = shape[-1]
    hidden = hidden or 4 * width
    tensors = [
        torch.randn(*shape, device=DEVICE) * 2 + 0.5,
        1 + 0.1 * torch.randn(width, device=DEVICE),
        0.1 * torch.randn(width, device=DEVICE),
        torch.randn(hidden, width, device=DEVICE) / width**0.5,
        0.1 * torch.randn(hidden, device=DEVICE),
        torch.randn(width, hidden, device=DEVICE) / hidden**0.5,
        0.1 * torch.randn(width, device=DEVICE),
    ]
    return [t.to(dtype) for t in tensors]


def _branch_scale(batch: int) -> torch.Tensor:
    """A drop-path mask with both kept (scaled by 1 / keep_prob) and dropped samples."""
    return torch.tensor([2.0, 0.0, 1.25][:batch], device=DEVICE)


def _assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, name: str) -> None:
    tol = RELATIVE_TOLERANCES[dtype]
    scale = expected.abs().max().item()
    assert actual.shape == expected.shape, name
    torch.testing.assert_close(
        actual.float(), expected, atol=tol * max(scale, 1e-3), rtol=tol, msg=lambda m: f"{name}: {m}"
    )


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_side_ffn_matches_reference(case):
    shape, dtype, scaled = case
    inputs = _inputs(shape, dtype)
    branch_scale = _branch_scale(shape[0]) if scaled else None
    dy = torch.randn(*shape, device=DEVICE).to(dtype)

    leaves = [t.clone().requires_grad_() for t in inputs]
    y = side_ffn(*leaves, 1e-6, branch_scale)
    y.backward(dy)

    # Answer key: the fp32 reference on the same (already rounded) inputs.
    ref_leaves = [t.detach().float().requires_grad_() for t in inputs]
    y_ref = side_ffn_reference(*ref_leaves, 1e-6, branch_scale)
    y_ref.backward(dy.float())

    assert y.dtype == dtype
    _assert_close(y, y_ref, dtype, "output")
    for name, leaf, ref in zip(GRAD_NAMES, leaves, ref_leaves):
        assert leaf.grad is not None and leaf.grad.dtype == dtype, name
        _assert_close(leaf.grad, ref.grad, dtype, f"grad of {name}")


def test_side_ffn_hidden_not_4c_and_scale_b11():
    """Any hidden width works (here 40: one full and one partial chunk); a [B, 1, 1] mask as timm's drop_path."""
    inputs = _inputs((2, 21, 48), torch.float32, hidden=40)
    branch_scale = torch.tensor([0.5, 3.0], device=DEVICE).view(2, 1, 1)
    leaves = [t.clone().requires_grad_() for t in inputs]
    side_ffn(*leaves, 1e-5, branch_scale).sum().backward()
    ref_leaves = [t.clone().requires_grad_() for t in inputs]
    side_ffn_reference(*ref_leaves, 1e-5, branch_scale).sum().backward()
    for name, leaf, ref in zip(GRAD_NAMES, leaves, ref_leaves):
        _assert_close(leaf.grad, ref.grad, torch.float32, f"grad of {name}")


@pytest.mark.parametrize("trainable", ["x", "weights"])
def test_side_ffn_partial_requires_grad(trainable):
    """Frozen weights skip the weight-gradient kernel; a frozen input gets no gradient."""
    inputs = _inputs((2, 25, 24), torch.float32)
    leaves = [t.clone().requires_grad_((i == 0) == (trainable == "x")) for i, t in enumerate(inputs)]
    side_ffn(*leaves, 1e-6).sum().backward()
    ref_leaves = [t.clone().requires_grad_(leaf.requires_grad) for t, leaf in zip(inputs, leaves)]
    side_ffn_reference(*ref_leaves, 1e-6).sum().backward()
    for name, leaf, ref in zip(GRAD_NAMES, leaves, ref_leaves):
        if ref.requires_grad:
            _assert_close(leaf.grad, ref.grad, torch.float32, f"grad of {name}")
        else:
            assert leaf.grad is None, name


def test_side_ffn_inference_and_empty():
    inputs = _inputs((2, 37, 24), torch.float32)
    with torch.no_grad():
        y = side_ffn(*inputs)
    _assert_close(y, side_ffn_reference(*inputs), torch.float32, "output")
    empty = _inputs((2, 0, 24), torch.float32)
    assert side_ffn(*empty).shape == (2, 0, 24)


def _bad(index, transform):
    def make(inputs):
        return [transform(t) if i == index else t for i, t in enumerate(inputs)]

    return make


@pytest.mark.parametrize(
    "make, scale, error, match",
    [
        (lambda inputs: [t.double() for t in inputs], None, UnsupportedInput, "dtype torch.float64"),
        (_bad(3, torch.Tensor.half), None, UnsupportedInput, "mixed dtypes"),
        (_bad(0, lambda x: x.transpose(0, 1).contiguous().transpose(0, 1)), None, UnsupportedInput, "non-contiguous"),
        (_bad(5, lambda w: w.t().contiguous()), None, ValueError, r"fc2_weight \(96, 24\)"),
        (_bad(3, lambda w: w[:, :12]), None, ValueError, r"fc1_weight \(96, 12\)"),
        (_bad(1, lambda w: w[:12]), None, ValueError, r"norm_weight \(12,\)"),
        (_bad(6, lambda b: b[None]), None, ValueError, r"fc2_bias \(1, 24\)"),
        (lambda inputs: inputs, torch.ones(3), ValueError, r"branch_scale must be \[B\].*B = 2"),
        (lambda inputs: [inputs[0][0], *inputs[1:]], torch.ones(2), ValueError, r"needs x as \[B, N, C\]"),
        (lambda inputs: inputs, torch.ones(2, requires_grad=True), UnsupportedInput, "drop-path mask"),
    ],
    ids=[
        "float64",
        "mixed-dtypes",
        "non-contiguous",
        "fc2-transposed",
        "fc1-narrow",
        "norm-weight-short",
        "fc2-bias-2d",
        "scale-wrong-batch",
        "scale-with-2d-x",
        "scale-requires-grad",
    ],
)
def test_side_ffn_rejects_bad_inputs(make, scale, error, match):
    inputs = make(_inputs((2, 19, 24), torch.float32))
    with pytest.raises(error, match=match):
        side_ffn(*inputs, 1e-6, scale)


def test_side_ffn_rejects_too_wide():
    inputs = _inputs((1, 2, 520), torch.float32, hidden=16)
    with pytest.raises(UnsupportedInput, match="wider than"):
        side_ffn(*inputs)
