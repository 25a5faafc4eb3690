"""fg_injection (``kernels/fg_injection.py``): ``x + flatten(bilinear_resize(bridged, (H_s, W_s)))``.

The op is the resize and the residual add: ``bridged`` [B, Hv, Wv, C] is the bridge Linear(D -> C) already applied
to the ViT patches (HST.md §2: bridging first is exact and cheaper). The bridge is a plain cuBLAS GEMM, the same
for every provider, so it is not timed here: the op gets a contiguous bridged map, as ``F.linear`` returns it. The
side block benchmark times the block with its bridge.

Byte model (e = bytes per element; N = B * H_s * W_s side tokens of width C; V = B * Hv * Wv bridged ViT tokens of
width C): fwd ``e (2 N C + V C)`` (read x and bridged, write the output); bwd ``e (N C + V C)`` (read dy, write the
gradient of bridged; dx is dy itself, which autograd passes on without a copy, so it is not counted as a write).
"""
import pytest

from bench import _harness as h

SHAPES = [(f"fg_injection-{s.prefix}-d{s.dim}-vit{s.vit_hw[0]}x{s.vit_hw[1]}", s) for s in h.stage_shapes()]


def byte_model(s: h.StageShape) -> dict:
    e, n, v = h.DTYPE.itemsize, s.batch * s.tokens * s.dim, s.batch * s.vit_tokens * s.dim
    fwd, bwd = e * (2 * n + v), e * (n + v)
    return {"fwd": fwd, "bwd": bwd, "fwdbwd": fwd + bwd}


def shape_name(s: h.StageShape) -> str:
    return f"{s.prefix}-d{s.dim}-vit{s.vit_hw[0]}x{s.vit_hw[1]}"


def info(s: h.StageShape) -> dict:
    return s.info()


def vit_patches(s: h.StageShape):
    """[B, Hv, Wv, D] patches viewed out of a [B, G+1+Hv*Wv, D] block output (non-leaf, gets a gradient)."""
    block_out = h.rand(s.batch, s.keys + s.vit_tokens, s.vit_dim)
    return block_out[:, s.keys:].unflatten(1, s.vit_hw)


def make_args(s: h.StageShape) -> tuple:
    """(x [B, H_s*W_s, C], bridged [B, Hv, Wv, C], out_hw)."""
    return h.rand(s.batch, s.tokens, s.dim), h.rand(s.batch, *s.vit_hw, s.dim), s.hw


@pytest.mark.parametrize("case", h.cases(SHAPES))
def test_fg_injection(benchmark, copy_bandwidth, case):
    s, pass_, provider = case
    fn, args = h.op_provider("fg_injection", provider), make_args(s)
    h.run_op(benchmark, copy_bandwidth, op="fg_injection", provider=provider, pass_=pass_, forward=lambda: fn(*args),
             grad_targets=h.grad_targets(args), nbytes=byte_model(s), shape=shape_name(s), info=info(s))
