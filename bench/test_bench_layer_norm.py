"""layer_norm (``kernels/layer_norm.py``): the side stages' LayerNorms and the ViT blocks' LN-tuned norms.

Byte model (e = bytes per element, M rows of C): the op must read x and write y, and read the affine once:
fwd ``e (2 M C + 2 C)``; the backward must read x and dy and write dx, read the weight and write both affine
gradients: bwd ``e (3 M C + 3 C)``; fwdbwd is their sum. Row statistics a kernel saves (8 bytes per row)
are not counted: they could be recomputed.

Cases are (config, where, B, tokens, C): ``where`` is a side stage (``s1``..``s4``) or ``vit``.
"""
import pytest

from bench import _harness as h

SIDE = [(f"layer_norm-{s.prefix}-C{s.dim}", (s.config, f"s{s.stage}", s.batch, s.tokens, s.dim))
        for s in h.stage_shapes()]
VIT = [(f"layer_norm-{config}-vit-B{batch}-N{tokens}-C{dim}", (config, "vit", batch, tokens, dim))
       for config, batch, tokens, dim in h.vit_token_shapes()]
SHAPES = SIDE + VIT


def byte_model(case: tuple) -> dict:
    *_, batch, tokens, width = case
    e, rows = h.DTYPE.itemsize, batch * tokens
    fwd, bwd = e * (2 * rows * width + 2 * width), e * (3 * rows * width + 3 * width)
    return {"fwd": fwd, "bwd": bwd, "fwdbwd": fwd + bwd}


def shape_name(case: tuple) -> str:
    config, where, batch, tokens, width = case
    return f"{config}-{where}-B{batch}-N{tokens}-C{width}"


def info(case: tuple) -> dict:
    config, where, batch, tokens, width = case
    return {"config": config, "stage": where, "batch": batch, "tokens": tokens, "dim": width, "dtype": h.DTYPE_NAME}


def make_args(case: tuple) -> tuple:
    """(x [B, N, C], weight [C], bias [C], eps), tensors in the bench dtype, requiring grad."""
    *_, batch, tokens, width = case
    weight = (h.rand(width, scale=0.1) + 1).detach().requires_grad_()
    return h.rand(batch, tokens, width), weight, h.rand(width, scale=0.1), 1e-6


@pytest.mark.parametrize("case", h.cases(SHAPES))
def test_layer_norm(benchmark, copy_bandwidth, case):
    payload, pass_, provider = case
    fn, args = h.op_provider("layer_norm", provider), make_args(payload)
    h.run_op(benchmark, copy_bandwidth, op="layer_norm", provider=provider, pass_=pass_, forward=lambda: fn(*args),
             grad_targets=h.grad_targets(args), nbytes=byte_model(payload), shape=shape_name(payload),
             info=info(payload))
