"""fg_injection (Triton) against ``reference.fg_injection_reference``: output and every gradient."""

import pytest
import torch

from hst_fast.kernels._compat import UnsupportedInput
from hst_fast.kernels.fg_injection import fg_injection, fg_injection_fwd
from hst_fast.kernels.reference import fg_injection_reference

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

# (B, (Hv, Wv), (Hs, Ws), C, D)
SHAPES = [
    (2, (4, 4), (16, 16), 32, 48),  # stage 1: 4x upsampling
    (1, (8, 8), (4, 4), 72, 48),  # stage 4: 0.5x downsampling
    (2, (4, 6), (8, 12), 24, 40),  # non-square
    (1, (7, 5), (7, 5), 48, 32),  # equal sizes, odd
    (1, (5, 3), (9, 14), 200, 48),  # non-integer factors, C above one channel tile (128)
    (2, (1, 3), (3, 2), 16, 16),  # a single input row: both y-neighbours are the same pixel
]

# Tolerances against the fp32 reference on the same (upcast) inputs; atol is relative to the
# tensor's largest magnitude (gradients summed over many tokens grow with the sum). fp32: only
# summation order differs. fp16/bf16: the bridged map and the output are rounded to the input
# dtype (bf16 has 8 significant bits, ~4e-3 relative per rounding), and the gradient matmuls run
# in that dtype.
TOLERANCES = {
    torch.float32: {"atol": 1e-5, "rtol": 1e-5},
    torch.float16: {"atol": 5e-3, "rtol": 5e-3},
    torch.bfloat16: {"atol": 3e-2, "rtol": 3e-2},
}
DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


def _assert_close(got, want, dtype, what):
    scale = want.abs().max().clamp_min(1.0).item()
    tol = TOLERANCES[dtype]
    torch.testing.assert_close(
        got.float(), want, atol=tol["atol"] * scale, rtol=tol["rtol"], msg=lambda m: f"{what}: {m}"
    )


def _shape_id(shape):
    batch, (in_h, in_w), (out_h, out_w), width, depth = shape
    return f"B{batch}-{in_h}x{in_w}to{out_h}x{out_w}-C{width}-D{depth}"


def _make_inputs(shape, dtype):
    batch, (in_h, in_w), (out_h, out_w), width, depth = shape
    x = torch.randn(batch, out_h * out_w, width, device=DEVICE)
    patches = torch.randn(batch, in_h, in_w, depth, device=DEVICE)
    weight = torch.randn(width, depth, device=DEVICE) * depth**-0.5
    bias = torch.randn(width, device=DEVICE)
    return [t.to(dtype) for t in (x, patches, weight, bias)], (out_h, out_w)


@pytest.mark.parametrize("dtype", list(TOLERANCES), ids=DTYPE_NAMES.get)
@pytest.mark.parametrize("shape", SHAPES, ids=_shape_id)
def test_fg_injection_matches_reference(shape, dtype):
    inputs, out_hw = _make_inputs(shape, dtype)
    # The answer key runs in fp32 on the same values the kernel sees.
    ref_inputs = [t.detach().float().requires_grad_() for t in inputs]
    inputs = [t.detach().requires_grad_() for t in inputs]

    out = fg_injection(*inputs, out_hw)
    ref = fg_injection_reference(*ref_inputs, out_hw)
    assert out.dtype == dtype
    _assert_close(out, ref, dtype, "output")

    grad = torch.randn_like(ref)
    out.backward(grad.to(dtype))
    ref.backward(grad)
    for name, got, want in zip(("x", "patches", "bridge_weight", "bridge_bias"), inputs, ref_inputs):
        assert got.grad is not None, name
        assert got.grad.dtype == dtype, name
        _assert_close(got.grad, want.grad, dtype, f"grad {name}")


def test_fg_injection_writes_every_output(monkeypatch):
    """A NaN-filled output buffer shows any element the kernel forgets to write."""
    inputs, out_hw = _make_inputs(SHAPES[2], torch.float32)
    monkeypatch.setattr(torch, "empty_like", lambda t: torch.full_like(t, float("nan")))
    out = fg_injection_fwd(*inputs, out_hw)
    assert not out.isnan().any()
    torch.testing.assert_close(out, fg_injection_reference(*inputs, out_hw), atol=1e-5, rtol=1e-5)


def test_fg_injection_takes_batch_strided_patches():
    """The model passes a ViT block's output sliced past its meta and class tokens (batch-strided)."""
    (x, patches, weight, bias), out_hw = _make_inputs(SHAPES[0], torch.float32)
    batch, in_h, in_w, depth = patches.shape
    block_out = torch.randn(batch, 9 + in_h * in_w, depth)
    strided = block_out[:, 9:].unflatten(1, (in_h, in_w))
    assert not strided.is_contiguous()
    torch.testing.assert_close(
        fg_injection(x, strided, weight, bias, out_hw), fg_injection_reference(x, strided, weight, bias, out_hw),
        atol=1e-5, rtol=1e-5,
    )


def test_fg_injection_bad_inputs():
    (x, patches, weight, bias), out_hw = _make_inputs(SHAPES[0], torch.float32)
    with pytest.raises(UnsupportedInput, match="patches are torch.float16"):
        fg_injection(x, patches.half(), weight, bias, out_hw)
    with pytest.raises(UnsupportedInput, match="mixed dtypes"):
        fg_injection(x, patches, weight.half(), bias, out_hw)
    with pytest.raises(UnsupportedInput, match="non-contiguous"):
        fg_injection(x.transpose(0, 1).contiguous().transpose(0, 1), patches, weight, bias, out_hw)
    with pytest.raises(ValueError, match="does not match"):
        fg_injection(x, patches, weight, bias, (16, 15))
    with pytest.raises(ValueError, match="bridge weight"):
        fg_injection(x, patches, weight[:, :-1].contiguous(), bias, out_hw)
    with pytest.raises(ValueError, match=r"expected x \[B, Hs\*Ws, C\]"):
        fg_injection(x, patches.flatten(1, 2), weight, bias, out_hw)
    with pytest.raises(ValueError, match="batch"):
        fg_injection(x, patches[:1], weight, bias, out_hw)
