"""side_attention (``kernels/side_attention.py``): MetaT cross-attention of a side block, with its residual.

Byte model (e = bytes per element; N = B * tokens queries of width C, B * M keys, P = 4 C^2 + 6 C parameters:
q/k/v/proj weights and biases, LN1 affine): the op must read x and write the output, read kv and the
parameters once: fwd ``e (2 N C + B M C + P)``. The backward must read x and dy and write dx, read kv and
write dkv, read the parameters and write their gradients: bwd ``e (3 N C + 2 B M C + 2 P)``. Nothing per
query and head (scores, probabilities, q) has to reach memory: there are only M = G + 1 keys.

Providers: the reference (eager), torch.compile of it, xformers ``memory_efficient_attention`` for the
attention core (LayerNorm and projections in torch), and the fused Triton kernel.
"""
import pytest
import torch
import torch.nn.functional as F

from bench import _harness as h

SHAPES = [(f"side_attention-{s.prefix}-d{s.dim}-keys{s.keys}", s) for s in h.stage_shapes()]
PROVIDERS = ("reference", "compile", "xformers", "triton")


def byte_model(s: h.StageShape) -> dict:
    e, n, c = h.DTYPE.itemsize, s.batch * s.tokens, s.dim
    kv, params = s.batch * s.keys * c, 4 * c * c + 6 * c
    fwd, bwd = e * (2 * n * c + kv + params), e * (3 * n * c + 2 * kv + 2 * params)
    return {"fwd": fwd, "bwd": bwd, "fwdbwd": fwd + bwd}


def xformers_side_attention(x, kv, norm_weight, norm_bias, q_weight, q_bias, k_weight, k_bias, v_weight, v_bias,
                            proj_weight, proj_bias, num_heads, eps=1e-6, branch_scale=None):
    """The reference's math with xformers' ``memory_efficient_attention`` as the attention core."""
    from xformers.ops import memory_efficient_attention

    batch, tokens, width = x.shape
    head_dim = width // num_heads
    q = F.linear(F.layer_norm(x, (width,), norm_weight, norm_bias, eps), q_weight, q_bias)
    k, v = F.linear(kv, k_weight, k_bias), F.linear(kv, v_weight, v_bias)
    out = memory_efficient_attention(q.view(batch, tokens, num_heads, head_dim),
                                     k.view(batch, -1, num_heads, head_dim), v.view(batch, -1, num_heads, head_dim))
    return x + F.linear(out.reshape(batch, tokens, width), proj_weight, proj_bias)


def shape_name(s: h.StageShape) -> str:
    return f"{s.prefix}-d{s.dim}-keys{s.keys}"


def info(s: h.StageShape) -> dict:
    return s.info()


def make_params(c: int) -> list:
    """LN1 affine [C] and the q, k, v, proj Linear layers (weights [C, C], biases [C]), in the op's order."""
    norm = [torch.ones(c, device=h.DEVICE, dtype=h.DTYPE, requires_grad=True), h.rand(c, scale=0.02)]
    return norm + [t for _ in range(4) for t in (h.rand(c, c, scale=c**-0.5), h.rand(c, scale=0.02))]


def make_args(s: h.StageShape) -> tuple:
    """(x [B, N, C], kv [B, G+1, C], the 10 parameters, heads, eps)."""
    return h.rand(s.batch, s.tokens, s.dim), h.rand(s.batch, s.keys, s.dim), *make_params(s.dim), s.heads, 1e-6


@pytest.mark.parametrize("case", h.cases(SHAPES, PROVIDERS))
def test_side_attention(benchmark, copy_bandwidth, case):
    s, pass_, provider = case
    fn = xformers_side_attention if provider == "xformers" else h.op_provider("side_attention", provider)
    args = make_args(s)
    try:
        h.run_op(benchmark, copy_bandwidth, op="side_attention", provider=provider, pass_=pass_,
                 forward=lambda: fn(*args), grad_targets=h.grad_targets(args), nbytes=byte_model(s),
                 shape=shape_name(s), info=info(s))
    except (ValueError, NotImplementedError) as error:  # xformers: no operator for these inputs (head width 6)
        if provider != "xformers":
            raise
        pytest.skip(f"xformers memory_efficient_attention does not support this shape: {error}")
