"""A whole side block (``hst_fast.hst.side_block.SideBlock``): side attention, FG injection, side FFN.

The block is built as the model builds it, with the reference ops (eager), the reference ops under
torch.compile, or the Triton kernels; kv is [B, G+1, d] and the patches a view of a ViT block output.

Byte model: the sum of what the block as one op must move (e = bytes per element; N = B * H_s * W_s
tokens of width C, B * M keys, V = B * Hv * Wv ViT tokens of width D, P = 12 C^2 + 13 C block parameters
plus C D + C bridge parameters): fwd ``e (2 N C + B M C + V D + P)``; bwd ``e (3 N C + 2 B M C + 2 V D + 2 P)``.
Intermediate [N, C] activations between the three ops are not counted: a fully fused block would not need
them, so the figure shows how far the three-kernel block is from one pass over x.

FLOPs (reference formulation): fwd ``20 N C^2`` (q and proj 4, FFN 16) ``+ 4 N M C`` (scores and mix)
``+ 2 V D C`` (bridge at ViT resolution) ``+ 4 B M C^2`` (k, v); bwd twice that.
"""
import functools

import pytest

from bench import _harness as h
from bench.test_bench_fg_injection import vit_patches

SHAPES = [(f"side_block-{s.prefix}-d{s.dim}-h{s.heads}-keys{s.keys}-vit{s.vit_hw[0]}x{s.vit_hw[1]}", s)
          for s in h.stage_shapes()]


def byte_model(s: h.StageShape) -> dict:
    e, n, c = h.DTYPE.itemsize, s.batch * s.tokens, s.dim
    kv, vit = s.batch * s.keys * c, s.batch * s.vit_tokens * s.vit_dim
    params = 12 * c * c + 13 * c + c * s.vit_dim + c
    fwd, bwd = e * (2 * n * c + kv + vit + params), e * (3 * n * c + 2 * kv + 2 * vit + 2 * params)
    return {"fwd": fwd, "bwd": bwd, "fwdbwd": fwd + bwd}


def flop_model(s: h.StageShape) -> dict:
    n, c = s.batch * s.tokens, s.dim
    vit_tokens, keys = s.batch * s.vit_tokens, s.batch * s.keys
    fwd = 20 * n * c * c + 4 * n * s.keys * c + 2 * vit_tokens * s.vit_dim * c + 4 * keys * c * c
    return {"fwd": fwd, "bwd": 2 * fwd, "fwdbwd": 3 * fwd}


@functools.cache
def build_block(s: h.StageShape, provider: str):
    """(callable block, bridge, parameters) for ``provider``, weights in the bench dtype on the device.

    Cached per shape and provider, so the three passes share one block (and one torch.compile graph)."""
    from torch import nn

    from hst_fast.backend import reference_ops, triton_ops
    from hst_fast.models.side_network import SideBlock, init_side_weights

    if provider == "triton":
        try:
            ops = triton_ops()
        except ImportError as error:
            pytest.skip(f"Triton ops are not available: {error!r}")
    else:
        ops = reference_ops()
    block, bridge = SideBlock(s.dim, s.heads, 0.0, ops), nn.Linear(s.vit_dim, s.dim)
    block.apply(init_side_weights)
    bridge.apply(init_side_weights)
    block.to(h.DEVICE, h.DTYPE).train()
    bridge.to(h.DEVICE, h.DTYPE)
    runner = h.compiled_module(block) if provider == "compile" else block
    return runner, bridge, [*block.parameters(), *bridge.parameters()]


@pytest.mark.parametrize("case", h.cases(SHAPES))
def test_side_block(benchmark, copy_bandwidth, case):
    s, pass_, provider = case
    block, bridge, params = build_block(s, provider)
    x, kv, patches = h.rand(s.batch, s.tokens, s.dim), h.rand(s.batch, s.keys, s.dim), vit_patches(s)
    h.run_op(benchmark, copy_bandwidth, op="side_block", provider=provider, pass_=pass_,
             forward=lambda: block(x, kv, patches, s.hw, bridge), grad_targets=[x, kv, patches, *params],
             nbytes=byte_model(s), flops=flop_model(s),
             shape=f"{s.prefix}-d{s.dim}-h{s.heads}-keys{s.keys}-vit{s.vit_hw[0]}x{s.vit_hw[1]}", info=s.info())
