"""fg_injection (Triton) against ``reference.fg_injection_reference``: output and every gradient, both adjoints."""

import pytest
import torch

from hst_fast.kernels import fg_injection as fg_injection_module
from hst_fast.kernels._compat import UnsupportedInput
from hst_fast.kernels.fg_injection import fg_injection, fg_injection_bwd
from hst_fast.kernels.reference import fg_injection_reference

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

# (B, (Hv, Wv), (Hs, Ws), C)
SHAPES = [
    (2, (4, 4), (16, 16), 32),  # stage 1: 4x upsampling
    (1, (8, 8), (4, 4), 72),  # stage 4: 0.5x downsampling
    (2, (4, 6), (8, 12), 24),  # non-square
    (1, (7, 5), (7, 5), 48),  # equal sizes, odd
    (1, (5, 3), (9, 14), 200),  # non-integer factors, C above one channel tile (128)
    (2, (1, 3), (3, 2), 16),  # a single input row: both y-neighbours are the same pixel
    (1, (2, 3), (9, 14), 8),  # ~4.5x upsampling: the widest gather windows
    (1, (16, 11), (3, 5), 40),  # ~5x downsampling: input pixels no output touches get zero
]

# Tolerances against the fp32 reference on the same (upcast) inputs; atol is relative to the
# tensor's largest magnitude (gradients summed over many tokens grow with the sum). fp32: only
# summation order differs. fp16/bf16: the output and the bridged map's gradient are rounded to the
# input dtype (bf16 has 8 significant bits, ~4e-3 relative per rounding).
TOLERANCES = {
    torch.float32: {"atol": 1e-5, "rtol": 1e-5},
    torch.float16: {"atol": 5e-3, "rtol": 5e-3},
    torch.bfloat16: {"atol": 3e-2, "rtol": 3e-2},
}
DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


@pytest.fixture
def deterministic():
    """``torch.use_deterministic_algorithms(True)`` for one test."""
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(previous)


def _assert_close(got, want, dtype, what):
    scale = want.abs().max().clamp_min(1.0).item()
    tol = TOLERANCES[dtype]
    torch.testing.assert_close(
        got.float(), want, atol=tol["atol"] * scale, rtol=tol["rtol"], msg=lambda m: f"{what}: {m}"
    )


def _shape_id(shape):
    batch, (in_h, in_w), (out_h, out_w), width = shape
    return f"B{batch}-{in_h}x{in_w}to{out_h}x{out_w}-C{width}"


def _make_inputs(shape, dtype):
    batch, (in_h, in_w), (out_h, out_w), width = shape
    x = torch.randn(batch, out_h * out_w, width, device=DEVICE)
    bridged = torch.randn(batch, in_h, in_w, width, device=DEVICE)
    return [t.to(dtype) for t in (x, bridged)], (out_h, out_w)


def _check_against_reference(shape, dtype):
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
    for name, got, want in zip(("x", "bridged"), inputs, ref_inputs):
        assert got.grad is not None and got.grad.dtype == dtype, name
        _assert_close(got.grad, want.grad, dtype, f"grad {name}")


@pytest.mark.parametrize("dtype", list(TOLERANCES), ids=DTYPE_NAMES.get)
@pytest.mark.parametrize("shape", SHAPES, ids=_shape_id)
def test_fg_injection_matches_reference(shape, dtype):
    _check_against_reference(shape, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=DTYPE_NAMES.get)
@pytest.mark.parametrize("shape", [SHAPES[i] for i in (4, 7)], ids=_shape_id)
def test_fg_injection_deterministic_matches_reference(shape, dtype, deterministic):
    """Under deterministic algorithms the backward gathers instead of scattering with atomics (every shape: the
    next test)."""
    _check_against_reference(shape, dtype)


def _adjoints(shape, monkeypatch):
    """grad_out and a function running the adjoint, scatter (default) or gather (``deterministic=True``)."""
    batch, (in_h, in_w), out_hw, width = shape
    grad_out = torch.randn(batch, out_hw[0] * out_hw[1], width, device=DEVICE)

    def adjoint(deterministic: bool) -> torch.Tensor:
        monkeypatch.setattr(torch, "are_deterministic_algorithms_enabled", lambda: deterministic)
        return fg_injection_bwd(grad_out, (batch, in_h, in_w, width), torch.float32, out_hw)

    return adjoint


@pytest.mark.parametrize("shape", SHAPES, ids=_shape_id)
def test_fg_injection_gather_equals_scatter(shape, monkeypatch):
    """The gather adjoint equals the atomic one within fp32 rounding."""
    adjoint = _adjoints(shape, monkeypatch)
    torch.testing.assert_close(adjoint(deterministic=True), adjoint(deterministic=False), atol=1e-5, rtol=1e-5)


def test_fg_injection_gather_repeats_bitwise(monkeypatch):
    adjoint = _adjoints(SHAPES[4], monkeypatch)
    assert torch.equal(adjoint(deterministic=True), adjoint(deterministic=True))


def test_fg_injection_bridged_without_grad_skips_the_adjoint(monkeypatch):
    """A frozen bridged map gets no gradient and no adjoint kernel runs; x's gradient is grad_out itself."""
    (x, bridged), out_hw = _make_inputs(SHAPES[0], torch.float32)
    monkeypatch.setattr(fg_injection_module, "fg_injection_bwd", lambda *args: pytest.fail("adjoint launched"))
    x.requires_grad_()
    grad = torch.randn_like(x)
    fg_injection(x, bridged, out_hw).backward(grad)
    torch.testing.assert_close(x.grad, grad, atol=0, rtol=0)


def test_fg_injection_x_without_grad():
    (x, bridged), out_hw = _make_inputs(SHAPES[2], torch.float32)
    bridged.requires_grad_()
    fg_injection(x, bridged, out_hw).sum().backward()
    ref = bridged.detach().requires_grad_()
    fg_injection_reference(x, ref, out_hw).sum().backward()
    torch.testing.assert_close(bridged.grad, ref.grad, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("layout", ["batch-strided", "channels-first"])
def test_fg_injection_takes_strided_bridged(layout):
    """A slice of a bridged ViT block output past its meta and class tokens (batch-strided), or a permuted
    channels-first map, without a copy; gradients flow back to the base tensor."""
    (x, bridged), out_hw = _make_inputs(SHAPES[2], torch.float32)
    batch, in_h, in_w, width = bridged.shape
    if layout == "batch-strided":
        base = torch.randn(batch, 9 + in_h * in_w, width, device=DEVICE, requires_grad=True)
        view = base[:, 9:].unflatten(1, (in_h, in_w))
    else:
        base = torch.randn(batch, width, in_h, in_w, device=DEVICE, requires_grad=True)
        view = base.permute(0, 2, 3, 1)
    assert not view.is_contiguous()
    out = fg_injection(x, view, out_hw)
    ref_base = base.detach().requires_grad_()
    ref_view = ref_base[:, 9:].unflatten(1, (in_h, in_w)) if layout == "batch-strided" else ref_base.permute(0, 2, 3, 1)
    ref = fg_injection_reference(x, ref_view, out_hw)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    grad = torch.randn_like(ref)
    out.backward(grad)
    ref.backward(grad)
    torch.testing.assert_close(base.grad, ref_base.grad, atol=1e-5, rtol=1e-5)


def test_fg_injection_bad_inputs():
    (x, bridged), out_hw = _make_inputs(SHAPES[0], torch.float32)
    with pytest.raises(UnsupportedInput, match="bridged is torch.float16"):
        fg_injection(x, bridged.half(), out_hw)
    with pytest.raises(UnsupportedInput, match="non-contiguous"):
        fg_injection(x.transpose(0, 1).contiguous().transpose(0, 1), bridged, out_hw)
    with pytest.raises(ValueError, match="does not match the 256 tokens"):
        fg_injection(x, bridged, (16, 15))
    with pytest.raises(ValueError, match=r"bridged \(2, 4, 4, 31\) does not match x"):
        fg_injection(x, bridged[..., :-1], out_hw)
    with pytest.raises(ValueError, match=r"expected x \[B, Hs\*Ws, C\]"):
        fg_injection(x, bridged.flatten(1, 2), out_hw)
    with pytest.raises(ValueError, match="does not match x"):
        fg_injection(x, bridged[:1], out_hw)
