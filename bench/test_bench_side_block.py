"""A whole side block (HST.md §3), composed of the public ops: side attention, FG injection, side FFN.

``side_block`` runs ``x + Attn(LN1(x), kv)``, ``+ resize(Bridge(P))``, ``+ FFN(LN2(x))`` with one set of ops: the
references (eager), the references under torch.compile (one graph for the whole block), or the Triton kernels.
kv is [B, G+1, d], the patches a view of a ViT block output, bridged inside the block (timed).

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
import torch.nn.functional as F

from bench import _harness as h
from bench.test_bench_fg_injection import vit_patches
from bench.test_bench_side_attention import make_params as attention_params
from bench.test_bench_side_ffn import make_params as ffn_params

SHAPES = [(f"side_block-{s.prefix}-d{s.dim}-h{s.heads}-keys{s.keys}-vit{s.vit_hw[0]}x{s.vit_hw[1]}", s)
          for s in h.stage_shapes()]
OPS = ("side_attention", "fg_injection", "side_ffn")
NUM_ATTENTION_PARAMS = 10


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


def shape_name(s: h.StageShape) -> str:
    return f"{s.prefix}-d{s.dim}-h{s.heads}-keys{s.keys}-vit{s.vit_hw[0]}x{s.vit_hw[1]}"


def info(s: h.StageShape) -> dict:
    return s.info()


def make_args(s: h.StageShape) -> tuple:
    """(shape, x [B, N, C], kv [B, G+1, C], patches [B, Hv, Wv, D], bridge weight [C, D] and bias [C], the 10
    attention and 6 FFN parameters): ``side_block``'s arguments after ``ops``."""
    bridge = (h.rand(s.dim, s.vit_dim, scale=s.vit_dim**-0.5), h.rand(s.dim, scale=0.02))
    return (s, h.rand(s.batch, s.tokens, s.dim), h.rand(s.batch, s.keys, s.dim), vit_patches(s), *bridge,
            *attention_params(s.dim), *ffn_params(s.dim))


def side_block(ops: dict, s: h.StageShape, x, kv, patches, bridge_weight, bridge_bias, *params):
    """One side block with ``ops`` ({op name: function with the reference's signature})."""
    attention, ffn = params[:NUM_ATTENTION_PARAMS], params[NUM_ATTENTION_PARAMS:]
    x = ops["side_attention"](x, kv, *attention, s.heads, 1e-6)
    x = ops["fg_injection"](x, F.linear(patches, bridge_weight, bridge_bias), s.hw)
    return ops["side_ffn"](x, *ffn, 1e-6)


@functools.cache
def block_provider(provider: str, **compile_options):
    """``side_block`` bound to the ops of ``provider`` ('reference', 'compile': the reference block under
    ``h.compiled(..., **compile_options)``, 'triton'); one function per provider, so passes share a compiled graph."""
    if provider == "triton":
        return functools.partial(side_block, {op: h.kernel_op(op) for op in OPS})
    reference = functools.partial(side_block, {op: h.reference_op(op) for op in OPS})
    return h.compiled(reference, **compile_options) if provider == "compile" else reference


@pytest.mark.parametrize("case", h.cases(SHAPES))
def test_side_block(benchmark, copy_bandwidth, case):
    s, pass_, provider = case
    if provider == "triton":
        h.triton_op(OPS[0])  # skips without Triton
    block, args = block_provider(provider), make_args(s)
    h.run_op(benchmark, copy_bandwidth, op="side_block", provider=provider, pass_=pass_, forward=lambda: block(*args),
             grad_targets=h.grad_targets(args), nbytes=byte_model(s), flops=flop_model(s), shape=shape_name(s),
             info=info(s))
