"""side_ffn (``kernels/side_ffn.py``): a side block's feed-forward ``x + FC2(GELU(FC1(LN2(x))))``, hidden 4C.

Byte model (e = bytes per element; N = B * tokens rows of width C; P = 8 C^2 + 7 C parameters: fc1/fc2
weights and biases, LN2 affine): the op must read x and write the output, and read the parameters:
fwd ``e (2 N C + P)``; the backward must read x and dy, write dx, read the parameters and write their
gradients: bwd ``e (3 N C + 2 P)``. The [N, 4C] hidden never has to reach memory (a fused kernel keeps it
on chip), so it is not counted.

FLOPs (model FLOPs of the two matmuls, what compute-bound time is judged by): fwd ``16 N C^2``; bwd
``32 N C^2`` (input and weight gradients of both); a kernel that recomputes FC1 in the backward does more
work than it is credited with.
"""
import pytest
import torch

from bench import _harness as h

SHAPES = [(f"side_ffn-{s.prefix}-d{s.dim}", s) for s in h.stage_shapes()]


def byte_model(s: h.StageShape) -> dict:
    e, n, c = h.DTYPE.itemsize, s.batch * s.tokens, s.dim
    params = 8 * c * c + 7 * c
    fwd, bwd = e * (2 * n * c + params), e * (3 * n * c + 2 * params)
    return {"fwd": fwd, "bwd": bwd, "fwdbwd": fwd + bwd}


def flop_model(s: h.StageShape) -> dict:
    n, c = s.batch * s.tokens, s.dim
    return {"fwd": 16 * n * c * c, "bwd": 32 * n * c * c, "fwdbwd": 48 * n * c * c}


def shape_name(s: h.StageShape) -> str:
    return f"{s.prefix}-d{s.dim}"


def info(s: h.StageShape) -> dict:
    return s.info()


def make_params(c: int) -> list:
    """LN2 affine [C], FC1 [4C, C] + [4C], FC2 [C, 4C] + [C], in the op's order."""
    return [torch.ones(c, device=h.DEVICE, dtype=h.DTYPE, requires_grad=True), h.rand(c, scale=0.02),
            h.rand(4 * c, c, scale=c**-0.5), h.rand(4 * c, scale=0.02),
            h.rand(c, 4 * c, scale=(4 * c) ** -0.5), h.rand(c, scale=0.02)]


def make_args(s: h.StageShape) -> tuple:
    """(x [B, N, C], the 6 parameters, eps)."""
    return h.rand(s.batch, s.tokens, s.dim), *make_params(s.dim), 1e-6


@pytest.mark.parametrize("case", h.cases(SHAPES))
def test_side_ffn(benchmark, copy_bandwidth, case):
    s, pass_, provider = case
    fn, args = h.op_provider("side_ffn", provider), make_args(s)
    h.run_op(benchmark, copy_bandwidth, op="side_ffn", provider=provider, pass_=pass_, forward=lambda: fn(*args),
             grad_targets=h.grad_targets(args), nbytes=byte_model(s), flops=flop_model(s), shape=shape_name(s),
             info=info(s))
