"""side_attention (Triton) against ``reference.side_attention_reference``: output and every gradient."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from hst_fast.kernels import side_attention as side_attention_module
from hst_fast.kernels._compat import UnsupportedInput
from hst_fast.kernels.reference import side_attention_reference
from hst_fast.kernels.side_attention import side_attention

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

# (B, N, C, heads, keys): odd token counts, non-power-of-two widths, head widths 6..64, 1/2/9/16 keys.
SHAPES = [
    (2, 50, 72, 12, 9),  # head width 6 (classification stage 4 width)
    (1, 197, 64, 8, 2),  # head width 8, N = ViT-B token count
    (2, 33, 24, 2, 9),  # head width 12
    (1, 40, 128, 2, 16),  # head width 64, the most keys a tile holds
    (2, 21, 48, 4, 1),  # a single key: softmax is 1
    (1, 70, 96, 4, 9),  # head width 24
    (1, 45, 32, 2, 2),  # head width 16
]
WIDE = (1, 30, 384, 12, 9)  # detection stage 4 width, fp32 only (slow under the interpreter)

PARAM_NAMES = ("norm_weight", "norm_bias", "q_weight", "q_bias", "k_weight", "k_bias", "v_weight", "v_bias",
               "proj_weight", "proj_bias")  # fmt: skip
# Tolerances against the fp32 reference on the same (upcast) inputs; atol is relative to the tensor's
# largest magnitude (at least 1), since weight gradients are sums over many tokens. fp32: the folding
# only reorders the sums. fp16/bf16: everything inside runs in fp32 but x, dy and the output are rounded
# to the input dtype (bf16 keeps 8 significant bits: ~4e-3 per rounding, fp16 ~5e-4), and dots on fp32
# tiles of 16-bit inputs run in TF32 on a GPU (10-bit mantissa).
TOLERANCES = {
    torch.float32: {"atol": 2e-5, "rtol": 1e-4},
    torch.float16: {"atol": 3e-3, "rtol": 3e-3},
    torch.bfloat16: {"atol": 2e-2, "rtol": 2e-2},
}
DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


def _shape_id(shape):
    batch, num_tokens, width, heads, keys = shape
    return f"B{batch}-N{num_tokens}-C{width}-h{heads}-keys{keys}"


def _make_inputs(shape, dtype):
    """x, kv and the 10 parameters, with LN affine and biases away from their identity init."""
    batch, num_tokens, width, _, keys = shape
    x = torch.randn(batch, num_tokens, width, device=DEVICE) * 2 + 0.5
    kv = torch.randn(batch, keys, width, device=DEVICE)
    params = [1 + 0.2 * torch.randn(width, device=DEVICE), 0.2 * torch.randn(width, device=DEVICE)]
    for _ in range(4):  # q, k, v, proj
        params += [torch.randn(width, width, device=DEVICE) * width**-0.5, 0.2 * torch.randn(width, device=DEVICE)]
    return [t.to(dtype) for t in (x, kv, *params)]


def _assert_close(got, want, dtype, what):
    scale = want.abs().max().clamp_min(1.0).item()
    tol = TOLERANCES[dtype]
    torch.testing.assert_close(
        got.float(), want, atol=tol["atol"] * scale, rtol=tol["rtol"], msg=lambda m: f"{what}: {m}"
    )


def _check_against_reference(shape, dtype, branch_scale=None, trainable=None):
    """Output and the gradient of every input in ``trainable`` (names, default all) against the fp32 reference;
    the others must get none."""
    heads = shape[3]
    names = ("x", "kv", *PARAM_NAMES)
    trainable = names if trainable is None else trainable
    inputs = [t.detach().requires_grad_(name in trainable) for name, t in zip(names, _make_inputs(shape, dtype))]
    ref_inputs = [t.detach().float().requires_grad_(t.requires_grad) for t in inputs]

    out = side_attention(*inputs, heads, 1e-6, branch_scale)
    ref = side_attention_reference(*ref_inputs, heads, 1e-6, branch_scale)
    assert out.dtype == dtype
    _assert_close(out, ref, dtype, "output")

    grad = torch.randn_like(ref)
    out.backward(grad.to(dtype))
    ref.backward(grad)
    for name, got, want in zip(names, inputs, ref_inputs):
        if name not in trainable:
            assert got.grad is None, name
            continue
        assert got.grad is not None and got.grad.dtype == dtype, name
        _assert_close(got.grad, want.grad, dtype, f"grad {name}")


@pytest.mark.parametrize("dtype", list(TOLERANCES), ids=DTYPE_NAMES.get)
@pytest.mark.parametrize("shape", SHAPES, ids=_shape_id)
def test_side_attention_matches_reference(shape, dtype):
    _check_against_reference(shape, dtype)


def test_side_attention_wide():
    _check_against_reference(WIDE, torch.float32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=DTYPE_NAMES.get)
def test_side_attention_branch_scale(dtype):
    """Drop-path's per-sample scale is folded into the values and output bias (and gets no gradient)."""
    _check_against_reference((3, 37, 48, 4, 9), dtype, branch_scale=torch.tensor([0.0, 1.25, 0.8], device=DEVICE))


@pytest.mark.parametrize(
    "trainable", [("x",), ("kv", *PARAM_NAMES), ("x", "q_weight")], ids=["x-only", "frozen-x", "x-and-q-weight"]
)
def test_side_attention_partial_requires_grad(trainable):
    """Only what autograd needs: frozen parameters skip the folded gradients, a frozen x skips dx."""
    _check_against_reference((2, 37, 48, 4, 9), torch.float32, trainable=trainable)


def test_side_attention_backward_repeats_bitwise():
    """Each partial slice is written by one program in a fixed order: the backward is deterministic."""
    inputs = [t.requires_grad_() for t in _make_inputs((2, 70, 72, 12, 9), torch.float32)]
    grad = torch.randn(2, 70, 72, device=DEVICE)
    runs = [torch.autograd.grad(side_attention(*inputs, 12), inputs, grad) for _ in range(2)]
    for name, first, second in zip(("x", "kv", *PARAM_NAMES), *runs):
        assert torch.equal(first, second), name


class _LaunchCounter(TorchDispatchMode):
    """Counts the aten ops that launch a device kernel (not views or allocations) and the Triton launches of
    ``side_attention``'s kernels, whose own interpreter ops are not counted."""

    # allocations, and a view aten does not flag as one
    NO_LAUNCH = {"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "_unsafe_view"}

    def __init__(self, monkeypatch):
        super().__init__()
        self.aten, self.triton, self.inside_kernel = 0, 0, False
        for name in ("_side_attention_fwd_kernel", "_side_attention_bwd_kernel"):
            monkeypatch.setattr(side_attention_module, name, self._counted(getattr(side_attention_module, name)))

    def _counted(self, kernel):
        counter = self

        class Counted:
            def __getitem__(self, grid):
                def launch(*args, **kwargs):
                    counter.triton += 1
                    counter.inside_kernel = True
                    try:
                        return kernel[grid](*args, **kwargs)
                    finally:
                        counter.inside_kernel = False

                return launch

        return Counted()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        # fill_: conftest's NaN fill of fresh buffers, not the op's own work
        name = func.overloadpacket.__name__
        if not (self.inside_kernel or func.is_view or name in self.NO_LAUNCH or name == "fill_"):
            self.aten += 1
        return func(*args, **(kwargs or {}))


def test_side_attention_launch_count(monkeypatch):
    """Forward and backward of a trained block (fp32): the fold and its autograd backward are 9 + 24 torch kernels
    around the 2 Triton launches with torch 2.13 (55 when the backward's chain rule was written by hand); the bounds
    leave room for another torch version's decompositions."""
    inputs = [t.requires_grad_() for t in _make_inputs((2, 50, 72, 12, 9), torch.float32)]
    grad = torch.randn(2, 50, 72, device=DEVICE)
    with _LaunchCounter(monkeypatch) as counter:
        out = side_attention(*inputs, 12)
        forward = (counter.aten, counter.triton)
        out.backward(grad)
    assert forward[0] <= 10 and forward[1] == 1
    assert counter.aten <= 36 and counter.triton == 2


def test_side_attention_programs_loop_over_tiles(monkeypatch):
    """With one SM, each backward program owns several token tiles and accumulates them into its partials."""
    monkeypatch.setattr(side_attention_module, "sm_count", lambda device: 1)
    _check_against_reference((2, 197, 72, 12, 9), torch.float32)


def test_side_attention_writes_every_output(monkeypatch):
    """NaN-filled output and grad_x buffers show any element a kernel forgets to write."""
    monkeypatch.setattr(torch, "empty_like", lambda t: torch.full_like(t, float("nan")))
    _check_against_reference((1, 50, 72, 12, 9), torch.float32)


def test_side_attention_bad_inputs():
    x, kv, *params = _make_inputs((2, 20, 24, 2, 9), torch.float32)
    with pytest.raises(UnsupportedInput, match="17 keys"):
        side_attention(x, torch.randn(2, 17, 24, device=DEVICE), *params, 2)
    with pytest.raises(UnsupportedInput, match="not divisible by num_heads=5"):
        side_attention(x, kv, *params, 5)
    with pytest.raises(UnsupportedInput, match="mixed dtypes"):
        side_attention(x.half(), kv, *params, 2)
    with pytest.raises(UnsupportedInput, match="non-contiguous"):
        side_attention(x.transpose(0, 1).contiguous().transpose(0, 1), kv, *params, 2)
    with pytest.raises(ValueError, match=r"kv \(2, 9, 32\) does not match x"):
        side_attention(x, torch.randn(2, 9, 32, device=DEVICE), *params, 2)
    with pytest.raises(ValueError, match=r"expected x \[B, N, C\]"):
        side_attention(x[0], kv, *params, 2)
    bad = list(params)
    bad[2] = bad[2][:, :-1].contiguous()
    with pytest.raises(ValueError, match=r"q_weight has shape \(24, 23\)"):
        side_attention(x, kv, *bad, 2)
    with pytest.raises(ValueError, match="branch_scale"):
        side_attention(x, kv, *params, 2, 1e-6, torch.ones(3, device=DEVICE))
