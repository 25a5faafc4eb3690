"""layer_norm (``kernels/layer_norm.py``): the side stages' LayerNorms and the ViT blocks' LN-tuned norms.

Byte model (e = bytes per element, M rows of C): the op must read x and write y, and read the affine once:
fwd ``e (2 M C + 2 C)``; the backward must read x and dy and write dx, read the weight and write both affine
gradients: bwd ``e (3 M C + 3 C)``; fwdbwd is their sum. Row statistics a kernel saves (8 bytes per row)
are not counted: they could be recomputed.
"""
import pytest

from bench import _harness as h

SIDE = [(f"layer_norm-{s.prefix}-C{s.dim}", (s.config, f"s{s.stage}", s.batch, s.tokens, s.dim))
        for s in h.stage_shapes()]
VIT = [(f"layer_norm-{config}-vit-B{batch}-N{tokens}-C{dim}", (config, "vit", batch, tokens, dim))
       for config, batch, tokens, dim in h.vit_token_shapes()]


def byte_model(rows: int, width: int) -> dict:
    e = h.DTYPE.itemsize
    fwd, bwd = e * (2 * rows * width + 2 * width), e * (3 * rows * width + 3 * width)
    return {"fwd": fwd, "bwd": bwd, "fwdbwd": fwd + bwd}


@pytest.mark.parametrize("case", h.cases(SIDE + VIT))
def test_layer_norm(benchmark, copy_bandwidth, case):
    (config, where, batch, tokens, width), pass_, provider = case
    fn = h.op_provider("layer_norm", provider)
    x = h.rand(batch, tokens, width)
    weight, bias = h.rand(width, scale=0.1) + 1, h.rand(width, scale=0.1)
    weight = weight.detach().requires_grad_()
    eps = 1e-6
    h.run_op(
        benchmark, copy_bandwidth, op="layer_norm", provider=provider, pass_=pass_,
        forward=lambda: fn(x, weight, bias, eps), grad_targets=[x, weight, bias],
        nbytes=byte_model(batch * tokens, width), shape=f"{config}-{where}-B{batch}-N{tokens}-C{width}",
        info={"config": config, "stage": where, "batch": batch, "tokens": tokens, "dim": width, "dtype": h.DTYPE_NAME},
    )
