"""fg_injection (``kernels/fg_injection.py``): ``x + flatten(bilinear_resize(Bridge(P), (H_s, W_s)))``.

Inputs as in the model: the patches [B, Hv, Wv, D] are a batch-strided view of a ViT block output
[B, G+1+Hv*Wv, D] past its meta and class tokens.

Byte model (e = bytes per element; N = B * H_s * W_s side tokens of width C; V = B * Hv * Wv ViT tokens of
width D; W = C D + C bridge parameters): fwd ``e (2 N C + V D + W)`` (read x, write the output, read the
patches and the bridge once). The backward must read dy, read the patches (for the bridge's weight gradient),
write their gradient, read the bridge and write its gradients: bwd ``e (N C + 2 V D + 2 W)``; dx is dy
itself, which autograd passes on without a copy, so it is not counted as a write.
"""
import pytest

from bench import _harness as h

SHAPES = [(f"fg_injection-{s.prefix}-d{s.dim}-vit{s.vit_hw[0]}x{s.vit_hw[1]}-D{s.vit_dim}", s)
          for s in h.stage_shapes()]


def byte_model(s: h.StageShape) -> dict:
    e, n, c = h.DTYPE.itemsize, s.batch * s.tokens, s.dim
    vit, bridge = s.batch * s.vit_tokens * s.vit_dim, s.dim * s.vit_dim + s.dim
    fwd, bwd = e * (2 * n * c + vit + bridge), e * (n * c + 2 * vit + 2 * bridge)
    return {"fwd": fwd, "bwd": bwd, "fwdbwd": fwd + bwd}


def vit_patches(s: h.StageShape):
    """[B, Hv, Wv, D] patches viewed out of a [B, G+1+Hv*Wv, D] block output (non-leaf, gets a gradient)."""
    block_out = h.rand(s.batch, s.keys + s.vit_tokens, s.vit_dim)
    return block_out[:, s.keys:].unflatten(1, s.vit_hw)


@pytest.mark.parametrize("case", h.cases(SHAPES))
def test_fg_injection(benchmark, copy_bandwidth, case):
    s, pass_, provider = case
    fn = h.op_provider("fg_injection", provider)
    x, patches = h.rand(s.batch, s.tokens, s.dim), vit_patches(s)
    weight, bias = h.rand(s.dim, s.vit_dim, scale=s.vit_dim**-0.5), h.rand(s.dim, scale=0.02)
    h.run_op(benchmark, copy_bandwidth, op="fg_injection", provider=provider, pass_=pass_,
             forward=lambda: fn(x, patches, weight, bias, s.hw), grad_targets=[x, patches, weight, bias],
             nbytes=byte_model(s), shape=f"{s.prefix}-d{s.dim}-vit{s.vit_hw[0]}x{s.vit_hw[1]}-D{s.vit_dim}",
             info=s.info())
