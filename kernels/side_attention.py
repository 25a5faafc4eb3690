"""MetaT cross-attention of a side block, fused: ``x + Proj(MHA(q=Wq LN1(x), k=Wk kv, v=Wv kv))`` (HST.md §3, §5).

The trick (HST.md §5): there are only M = G+1 <= 16 keys (2 or 9 in practice) but up to 65,536 queries, so the
query and output projections are folded into the keys and values per (batch, head) by ``fold_attention``, plain
differentiable torch ops on ``[B, H, M, C]`` tensors (autograd differentiates them; no chain rule here):

- keys ``K''_h = s * (Wk kv + bk)_h (Wq_h * w)``, ``[M, C]`` over the C input dims of LN1(x), s = (C/h)^-1/2,
  w, b = LN1's affine; score bias ``s * (Wk kv + bk)_h . (Wq_h b + bq_h)``; so scores_h = xhat @ K''_h^T + bias
  with xhat the *un-affined* normalized x;
- values ``V'_h = (Wv kv + bv)_h Wproj_h^T``, ``[M, C]``, and out bias bproj, both times a drop-path
  ``branch_scale[b]``: the branch is ``sum_h softmax(scores_h) @ V'_h + bproj``.

``SideAttentionFunction`` holds the kernel math only. Its forward reads each query token once, normalizes it in
registers, loops over the heads with the folded keys/values of its batch (read from L2, padded to 16 keys with
masks: padded keys get a -inf score) and writes ``x + branch``: no ``C x C`` matrix ever touches the N queries, and
every ``tl.dot`` has all dims >= 16 whatever the head width (6..64), because the contraction runs over C.

Its backward recomputes LN and the softmax per token tile, reading each row in BLOCK_C-column chunks (no whole
row is ever held in registers, so no width spills), and writes ``dx = dy + LN_backward(sum_h ds_h @ K''_h)``
(``ds_h = p_h * (dp_h - rowsum(p_h dp_h))``, ``dp_h = dy @ V'_h^T``) and the gradients of the folded tensors,
``sum_n ds^T xhat``, ``sum_n ds``, ``sum_n p^T dy`` and ``sum_n dy``. Per tile and head, one chunk loop gives the
scores and dp ([BLOCK_N, BLOCK_M]), a second adds the folded gradients; each ds_h goes to a small per-program
scratch buffer, and a last chunk loop over the heads' ds gives dx (LN backward's row sums come from the
[BLOCK_N, BLOCK_M] tiles: ``sum_c dxhat = ds_h . rowsum(K''_h)``, ``sum_c dxhat xhat = ds_h . (xhat @ K''_h^T)``).
The grid is persistent, S programs per batch element, each adding its token tiles in order into its own fp32
slice of one partial buffer (relaxed atomics into a slice no other program touches: no contention, and every
element sees one program's adds in a fixed order, so the result is deterministic), then one torch ``sum`` over the
S slices. Only what autograd needs is computed (``ctx.needs_input_grad``): dx, the folded gradients, or both.
"""

from __future__ import annotations

import numbers
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from ._compat import (
    UnsupportedInput,
    autotune_configs,
    check_tensors,
    dot_precision,
    prune_by_registers,
    sm_count,
)
from ._tiles import layer_norm_tile

__all__ = ["AttentionParams", "SideAttentionFunction", "fold_attention", "side_attention", "side_attention_bwd",
           "side_attention_fwd"]  # fmt: skip

MAX_KEYS = 16  # BLOCK_M: keys are padded to one 16-row tile
MAX_WIDTH = 1024  # one [BLOCK_N, next_pow2(C)] register tile per token block
_PARTIAL_BYTES = 16 << 20  # cap on the backward's fp32 partial buffer (it should stay in L2)


@triton.jit
def _softmax(scores):
    """Row softmax of [BLOCK_N, BLOCK_M] scores (-inf in padded keys, which get 0)."""
    p = tl.exp(scores - tl.max(scores, axis=1)[:, None])
    return p / tl.sum(p, axis=1)[:, None]


@triton.jit
def _head_tile(ptr, b, h, stride_b, stride_h, offs, mask, other):
    """The tile at ``offs`` of head h, batch element b of a [B, H, M, ...] folded tensor (``other`` where masked)."""
    return tl.load(ptr + b * stride_b + h * stride_h + offs, mask=mask, other=other)


@triton.jit
def _kv_chunk(offs_m, mask_m, start, C, BLOCK_C: tl.constexpr):
    """(mask, offsets) [BLOCK_M, BLOCK_C] of columns ``[start, start + BLOCK_C)`` of a head's [M, C] folded tile."""
    cols = start + tl.arange(0, BLOCK_C)
    return mask_m[:, None] & (cols < C)[None, :], offs_m[:, None] * C + cols[None, :]


_FWD_CONFIGS = [
    triton.Config({"BLOCK_N": block_n}, num_warps=num_warps)
    for block_n, num_warps in ((64, 4), (32, 4), (128, 4), (64, 8), (128, 8), (16, 4), (32, 8), (16, 8))
]
# The [BLOCK_N, BLOCK_C] fp32 token tiles (x, xhat, acc): at most 16 values per thread each, 8 with fp32 'ieee' dots
# (FMA, whose operands are whole BLOCK_C rows); above that ptxas spilled for sm_90 (tests/kernels/compile_sm90.py).
_prune_fwd = prune_by_registers(
    lambda m: ((m["BLOCK_N"] * m["BLOCK_C"], 8 if m["DOT_PRECISION"] == "ieee" else 16),)
)


@triton.autotune(
    configs=autotune_configs(_FWD_CONFIGS),
    key=["C", "H", "M", "ROWS_BUCKET"],
    prune_configs_by={"early_config_prune": _prune_fwd},
)
@triton.jit(do_not_specialize=["ROWS_BUCKET"])
def _side_attention_fwd_kernel(
    X,  # [B, N, C] side tokens
    KF,  # [B, H, M, C] fp32 folded keys K'': (b, h, m, c) at b * stride_kb + h * stride_kh + m * C + c
    KB,  # [B, H, M] fp32 folded score bias: (b, h, m) at b * stride_bb + h * stride_bh + m
    VF,  # [B, H, M, C] fp32 folded values V': (b, h, m, c) at b * stride_vb + h * stride_vh + m * C + c
    OB,  # [B, C] fp32 out bias: (b, c) at b * stride_ob + c
    Y,  # [B, N, C] output, x's dtype
    N, C, M, H,  # tokens, width, keys, heads
    stride_kb, stride_kh, stride_bb, stride_bh, stride_vb, stride_vh, stride_ob,
    ROWS_BUCKET,  # autotuning key only: next_power_of_2(B * N)
    eps,
    BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_M: tl.constexpr, DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    pid_n = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_c = tl.arange(0, BLOCK_C)
    offs_m = tl.arange(0, BLOCK_M)
    mask_c = offs_c < C
    mask_m = offs_m < M
    mask_x = (offs_n < N)[:, None] & mask_c[None, :]
    mask_kv = mask_m[:, None] & mask_c[None, :]
    kv_offs = offs_m[:, None] * C + offs_c[None, :]

    tok = offs_n[:, None] * C + offs_c[None, :]  # int32 offsets from this batch element's rows
    X += pid_b * N * C
    Y += pid_b * N * C
    x = tl.load(X + tok, mask=mask_x, other=0.0).to(tl.float32)
    _, _, xhat = layer_norm_tile(x, mask_x, C, eps)

    acc = tl.zeros((BLOCK_N, BLOCK_C), dtype=tl.float32)
    for h in range(H):
        kf = _head_tile(KF, pid_b, h, stride_kb, stride_kh, kv_offs, mask_kv, 0.0)
        kb = _head_tile(KB, pid_b, h, stride_bb, stride_bh, offs_m, mask_m, float("-inf"))
        p = _softmax(tl.dot(xhat, tl.trans(kf), input_precision=DOT_PRECISION) + kb[None, :])
        vf = _head_tile(VF, pid_b, h, stride_vb, stride_vh, kv_offs, mask_kv, 0.0)
        acc += tl.dot(p, vf, input_precision=DOT_PRECISION)

    ob = tl.load(OB + pid_b * stride_ob + offs_c, mask=mask_c, other=0.0)
    tl.store(Y + tok, (x + acc + ob[None, :]).to(Y.dtype.element_ty), mask=mask_x)


@triton.jit
def _token_chunk(ptr, offs_n, mask_n, start, C, BLOCK_C: tl.constexpr):
    """Columns ``[start, start + BLOCK_C)`` of the token rows ``offs_n`` of a [N, C] matrix as fp32
    [BLOCK_N, BLOCK_C] (0 where masked); returns (tile, mask, offsets)."""
    cols = start + tl.arange(0, BLOCK_C)
    mask = mask_n[:, None] & (cols < C)[None, :]
    offs = offs_n[:, None] * C + cols[None, :]
    return tl.load(ptr + offs, mask=mask, other=0.0).to(tl.float32), mask, offs


@triton.jit
def _xhat_chunk(X, offs_n, mask_n, start, C, mean, rstd, BLOCK_C: tl.constexpr):
    """The un-affined LayerNorm of x's columns ``[start, start + BLOCK_C)``, [BLOCK_N, BLOCK_C] fp32, 0 where
    masked."""
    x, mask, _ = _token_chunk(X, offs_n, mask_n, start, C, BLOCK_C)
    return tl.where(mask, (x - mean[:, None]) * rstd[:, None], 0.0)


@triton.jit
def _chunked_layer_norm_stats(X, offs_n, mask_n, C, eps, BLOCK_C: tl.constexpr):
    """(mean, rstd) [BLOCK_N] of the token rows ``offs_n``, read in BLOCK_C-column chunks: the mean, then the
    variance of the centered values (two passes, as ``layer_norm_tile``)."""
    total = tl.zeros(offs_n.shape, dtype=tl.float32)
    for start in range(0, C, BLOCK_C):
        x, _, _ = _token_chunk(X, offs_n, mask_n, start, C, BLOCK_C)
        total += tl.sum(x, axis=1)
    mean = total / C
    squares = tl.zeros(offs_n.shape, dtype=tl.float32)
    for start in range(0, C, BLOCK_C):
        x, mask, _ = _token_chunk(X, offs_n, mask_n, start, C, BLOCK_C)
        centered = tl.where(mask, x - mean[:, None], 0.0)
        squares += tl.sum(centered * centered, axis=1)
    return mean, tl.rsqrt(squares / C + eps)


@triton.jit
def _side_attention_bwd_kernel(
    X,  # [B, N, C] side tokens (forward input)
    DY,  # [B, N, C] upstream gradient
    KF, KB, VF,  # folded keys, score bias and values, as in the forward kernel
    DX,  # [B, N, C] gradient of x, x's dtype; written only if WRITE_DX
    PARTIAL,  # [S, 2HBMC + HBM + BC] fp32, zeroed; written only if FOLD_GRADS. Slice s holds program (s, b)'s
    # sums over its tokens, head-major: d_keys [H, B, M, C] (sum ds^T xhat), d_values [H, B, M, C] (sum p^T dy),
    # d_key_bias [H, B, M] (sum ds), d_out_bias [B, C] (sum dy)
    DS,  # [S * B, H, BLOCK_N, BLOCK_M] fp32 scratch, program (s, b)'s ds of every head for its current token tile;
    # used only if WRITE_DX
    N, C, M, H, S,  # tokens, width, keys, heads, programs per batch element
    stride_kb, stride_kh, stride_bb, stride_bh, stride_vb, stride_vh,
    eps,
    WRITE_DX: tl.constexpr, FOLD_GRADS: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_M: tl.constexpr, DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    pid_s = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
    B = tl.num_programs(1)
    offs_m = tl.arange(0, BLOCK_M)
    mask_m = offs_m < M
    d_keys = PARTIAL + pid_s * (2 * H * B * M * C + H * B * M + B * C)  # this program's slice
    d_values = d_keys + H * B * M * C
    d_key_bias = d_values + H * B * M * C
    d_out_bias = d_key_bias + H * B * M
    ds_scratch = DS + (pid_s * B + pid_b) * H * BLOCK_N * BLOCK_M
    ds_offs = tl.arange(0, BLOCK_N)[:, None] * BLOCK_M + offs_m[None, :]

    X += pid_b * N * C
    DY += pid_b * N * C
    DX += pid_b * N * C
    for tile in range(pid_s, tl.cdiv(N, BLOCK_N), S):
        offs_n = tile * BLOCK_N + tl.arange(0, BLOCK_N)
        mask_n = offs_n < N
        mean, rstd = _chunked_layer_norm_stats(X, offs_n, mask_n, C, eps, BLOCK_C)
        if FOLD_GRADS:
            for start in range(0, C, BLOCK_C):
                dy, _, _ = _token_chunk(DY, offs_n, mask_n, start, C, BLOCK_C)
                cols = start + tl.arange(0, BLOCK_C)
                tl.atomic_add(d_out_bias + pid_b * C + cols, tl.sum(dy, axis=0), mask=cols < C, sem="relaxed")
        # LayerNorm backward's row sums of dxhat = sum_h ds_h @ K''_h and of dxhat * xhat, from [BLOCK_N, BLOCK_M]
        # tiles: sum_c dxhat = sum_h ds_h . rowsum(K''_h), sum_c dxhat * xhat = sum_h ds_h . (xhat @ K''_h^T).
        sum_dxhat = tl.zeros((BLOCK_N,), dtype=tl.float32)
        sum_dxhat_xhat = tl.zeros((BLOCK_N,), dtype=tl.float32)
        if WRITE_DX:
            tl.debug_barrier()  # every thread has read the previous tile's ds from the scratch
        for h in range(H):
            # Scores and dp = dy @ V'_h^T over C in chunks; the chunks' [BLOCK_N, BLOCK_C] tiles die in the loop.
            xhat_keys = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)  # xhat @ K''_h^T
            dp = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
            key_sums = tl.zeros((BLOCK_M,), dtype=tl.float32)  # rowsum(K''_h)
            for start in range(0, C, BLOCK_C):
                kv_mask, kv_offs = _kv_chunk(offs_m, mask_m, start, C, BLOCK_C)
                kf = _head_tile(KF, pid_b, h, stride_kb, stride_kh, kv_offs, kv_mask, 0.0)
                xhat = _xhat_chunk(X, offs_n, mask_n, start, C, mean, rstd, BLOCK_C)
                xhat_keys += tl.dot(xhat, tl.trans(kf), input_precision=DOT_PRECISION)
                key_sums += tl.sum(kf, axis=1)
                vf = _head_tile(VF, pid_b, h, stride_vb, stride_vh, kv_offs, kv_mask, 0.0)
                dy, _, _ = _token_chunk(DY, offs_n, mask_n, start, C, BLOCK_C)
                dp += tl.dot(dy, tl.trans(vf), input_precision=DOT_PRECISION)
            kb = _head_tile(KB, pid_b, h, stride_bb, stride_bh, offs_m, mask_m, float("-inf"))
            p = tl.where(mask_n[:, None], _softmax(xhat_keys + kb[None, :]), 0.0)
            ds = p * (dp - tl.sum(p * dp, axis=1)[:, None])  # softmax backward; 0 in padded keys/tokens
            if FOLD_GRADS:
                head = h * B + pid_b
                for start in range(0, C, BLOCK_C):
                    kv_mask, kv_offs = _kv_chunk(offs_m, mask_m, start, C, BLOCK_C)
                    dy, _, _ = _token_chunk(DY, offs_n, mask_n, start, C, BLOCK_C)
                    dvf = tl.dot(tl.trans(p), dy, input_precision=DOT_PRECISION)
                    tl.atomic_add(d_values + head * M * C + kv_offs, dvf, mask=kv_mask, sem="relaxed")
                    xhat = _xhat_chunk(X, offs_n, mask_n, start, C, mean, rstd, BLOCK_C)
                    dkf = tl.dot(tl.trans(ds), xhat, input_precision=DOT_PRECISION)
                    tl.atomic_add(d_keys + head * M * C + kv_offs, dkf, mask=kv_mask, sem="relaxed")
                tl.atomic_add(d_key_bias + head * M + offs_m, tl.sum(ds, axis=0), mask=mask_m, sem="relaxed")
            if WRITE_DX:
                sum_dxhat += tl.sum(ds * key_sums[None, :], axis=1)
                sum_dxhat_xhat += tl.sum(ds * xhat_keys, axis=1)
                tl.store(ds_scratch + h * BLOCK_N * BLOCK_M + ds_offs, ds)

        if WRITE_DX:
            # dx = dy + LN_backward(dxhat) (no affine: LN1's weight/bias live in the folded keys), chunk by chunk.
            tl.debug_barrier()  # every thread's ds is in the scratch
            mean_dxhat = sum_dxhat / C
            mean_dxhat_xhat = sum_dxhat_xhat / C
            for start in range(0, C, BLOCK_C):
                kv_mask, kv_offs = _kv_chunk(offs_m, mask_m, start, C, BLOCK_C)
                dxhat = tl.zeros((BLOCK_N, BLOCK_C), dtype=tl.float32)
                for h in range(H):
                    ds = tl.load(ds_scratch + h * BLOCK_N * BLOCK_M + ds_offs)
                    kf = _head_tile(KF, pid_b, h, stride_kb, stride_kh, kv_offs, kv_mask, 0.0)
                    dxhat += tl.dot(ds, kf, input_precision=DOT_PRECISION)
                xhat = _xhat_chunk(X, offs_n, mask_n, start, C, mean, rstd, BLOCK_C)
                dy, mask, offs = _token_chunk(DY, offs_n, mask_n, start, C, BLOCK_C)
                dx = dy + rstd[:, None] * (dxhat - mean_dxhat[:, None] - xhat * mean_dxhat_xhat[:, None])
                tl.store(DX + offs, dx.to(DX.dtype.element_ty), mask=mask)


class AttentionParams(NamedTuple):
    """The side block's LN1 affine ([C]) and its q, k, v, proj Linear layers (weights [C, C], biases [C]), in the
    public op's argument order."""

    norm_weight: torch.Tensor
    norm_bias: torch.Tensor
    q_weight: torch.Tensor
    q_bias: torch.Tensor
    k_weight: torch.Tensor
    k_bias: torch.Tensor
    v_weight: torch.Tensor
    v_bias: torch.Tensor
    proj_weight: torch.Tensor
    proj_bias: torch.Tensor


def fold_attention(
    kv: torch.Tensor, params: AttentionParams, num_heads: int, branch_scale: torch.Tensor | None = None,
    branch_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """Folds LN1's affine and Wq into the keys, Wproj and ``branch_scale`` into the values, per (batch, head), in
    fp32, with differentiable torch ops (k and v in one matmul, one bmm per folded tensor).

    kv: [B, M, C]; params: ``AttentionParams``; branch_scale: optional [B], rounded to ``branch_dtype`` first as the
    reference rounds it. Returns fp32 (keys [B, H, M, C], key_bias [B, H, M], values [B, H, M, C], out_bias [B, C]);
    keys, key_bias and values are head-major in memory (views of [H, B, M, ...] tensors).
    """
    p = params
    batch, num_keys, width = kv.shape
    head_dim = width // num_heads

    def per_head(t: torch.Tensor) -> torch.Tensor:  # [B*M, C] -> [H, B*M, D] view
        return t.view(-1, num_heads, head_dim).transpose(0, 1)

    def batch_major(t: torch.Tensor) -> torch.Tensor:  # [H, B*M, ...] -> [B, H, M, ...] view
        return t.view(num_heads, batch, num_keys, *t.shape[2:]).transpose(0, 1)

    kv_weight = torch.cat([p.k_weight, p.v_weight]).float()
    kv_bias = torch.cat([p.k_bias, p.v_bias]).float()
    k, v = torch.addmm(kv_bias, kv.reshape(-1, width).float(), kv_weight.t()).view(-1, 2, width).unbind(1)
    k = per_head(k * head_dim**-0.5)
    q_weight = p.q_weight.float()
    folded_q = (q_weight * p.norm_weight.float()).view(num_heads, head_dim, width)  # Wq_h * w
    folded_q_bias = torch.addmv(p.q_bias.float(), q_weight, p.norm_bias.float()).view(num_heads, head_dim, 1)
    proj = p.proj_weight.float().view(width, num_heads, head_dim).permute(1, 2, 0)  # Wproj_h^T, [H, D, C]
    keys = batch_major(torch.bmm(k, folded_q))
    key_bias = batch_major(torch.bmm(k, folded_q_bias).squeeze(2))
    values = batch_major(torch.bmm(per_head(v), proj))
    out_bias = p.proj_bias.float().expand(batch, width)
    if branch_scale is not None:
        scale = branch_scale.to(branch_dtype).float()
        values = values * scale.view(batch, 1, 1, 1)
        out_bias = out_bias * scale.view(batch, 1)
    return keys, key_bias, values, out_bias


def _check_inputs(x, kv, params: AttentionParams, num_heads, branch_scale) -> None:
    """Shapes (ValueError), then what the kernels do not handle (UnsupportedInput)."""
    if x.dim() != 3 or kv.dim() != 3:
        raise ValueError(
            f"side_attention: expected x [B, N, C] and kv [B, M, C], got {tuple(x.shape)} and {tuple(kv.shape)}"
        )
    batch, _, width = x.shape
    if kv.shape[0] != batch or kv.shape[2] != width:
        raise ValueError(
            f"side_attention: kv {tuple(kv.shape)} does not match x {tuple(x.shape)} (expected [{batch}, M, {width}])"
        )
    for name, param in zip(AttentionParams._fields, params):
        expected = (width, width) if name.endswith("weight") and name != "norm_weight" else (width,)
        if tuple(param.shape) != expected:
            raise ValueError(
                f"side_attention: {name} has shape {tuple(param.shape)}, expected {list(expected)} for "
                f"x {tuple(x.shape)}"
            )
    if branch_scale is not None:
        if branch_scale.shape != (batch,):
            raise ValueError(f"side_attention: branch_scale {tuple(branch_scale.shape)} must be [{batch}]")
        if branch_scale.device != x.device:
            raise UnsupportedInput(f"side_attention: branch_scale on {branch_scale.device}, x on {x.device}")
    if not isinstance(num_heads, numbers.Integral) or num_heads < 1:
        raise ValueError(f"side_attention: num_heads must be a positive int, got {num_heads!r}")
    if kv.shape[1] == 0:
        raise ValueError(f"side_attention: kv {tuple(kv.shape)} has no keys")
    if kv.shape[1] > MAX_KEYS:
        raise UnsupportedInput(f"side_attention: {kv.shape[1]} keys, the kernel holds at most {MAX_KEYS} per tile")
    if width % num_heads != 0:
        raise UnsupportedInput(f"side_attention: width {width} is not divisible by num_heads={num_heads}")
    if width > MAX_WIDTH:
        raise UnsupportedInput(f"side_attention: width {width} > {MAX_WIDTH}, beyond one register tile per token")
    check_tensors("side_attention", x, kv, *params)


def _check_folded(x, keys, key_bias, values, out_bias) -> None:
    """The folded tensors against x [B, N, C]: shapes and dtype (ValueError), contiguous rows (UnsupportedInput)."""
    batch, _, width = x.shape
    num_heads, num_keys = keys.shape[1], keys.shape[2]
    shapes = {"keys": (batch, num_heads, num_keys, width), "key_bias": (batch, num_heads, num_keys),
              "values": (batch, num_heads, num_keys, width), "out_bias": (batch, width)}  # fmt: skip
    for (name, shape), t in zip(shapes.items(), (keys, key_bias, values, out_bias)):
        if tuple(t.shape) != shape or t.dtype != torch.float32 or t.device != x.device:
            raise ValueError(f"side_attention: {name} is {tuple(t.shape)} {t.dtype}, expected {list(shape)} fp32")
    if keys.stride()[2:] != (width, 1) or values.stride()[2:] != (width, 1) or key_bias.stride(2) != 1:
        raise UnsupportedInput("side_attention: folded keys/values need contiguous [M, C] rows per (batch, head)")
    if out_bias.stride(1) != 1:
        raise UnsupportedInput("side_attention: out_bias needs contiguous [C] rows")


def _head_strides(keys, key_bias, values) -> tuple[int, ...]:
    """The kernels' batch and head strides of keys, key_bias and values (their rows are contiguous)."""
    return (*keys.stride()[:2], *key_bias.stride()[:2], *values.stride()[:2])


def side_attention_fwd(x, keys, key_bias, values, out_bias, eps=1e-6) -> torch.Tensor:
    """Forward launcher. x: [B, N, C] contiguous; keys [B, H, M, C], key_bias [B, H, M], values [B, H, M, C],
    out_bias [B, C]: fp32 from ``fold_attention``. Returns y [B, N, C] in x's dtype."""
    _check_folded(x, keys, key_bias, values, out_bias)
    batch, num_tokens, width = x.shape
    y = torch.empty_like(x)
    if x.numel() == 0:
        return y

    def grid(meta):
        return (triton.cdiv(num_tokens, meta["BLOCK_N"]), batch)

    _side_attention_fwd_kernel[grid](
        x, keys, key_bias, values, out_bias, y, num_tokens, width, keys.shape[2], keys.shape[1],
        *_head_strides(keys, key_bias, values), out_bias.stride(0), triton.next_power_of_2(batch * num_tokens), eps,
        BLOCK_C=triton.next_power_of_2(width), BLOCK_M=MAX_KEYS, DOT_PRECISION=dot_precision(x.dtype),
    )  # fmt: skip
    return y


def _bwd_launch_sizes(width: int) -> tuple[int, int, int, int]:
    """(BLOCK_N, BLOCK_C, num_warps, num_stages) of the backward: 64-token tiles read in 32-column chunks (narrower
    rows are padded to 16 or 32, wider ones loop over chunks), no software pipelining of the chunk loops. Measured
    for sm_90 (tests/kernels/compile_sm90.py), fp32 and bf16, at every HST width: at most 226 registers, no spills;
    64-column chunks, 4 warps or pipelined loops spilled at some width."""
    return 64, min(max(16, triton.next_power_of_2(width)), 32), 8, 1


def side_attention_bwd(
    grad_out, x, keys, key_bias, values, eps, dx: bool = True, fold_grads: bool = True, num_splits: int | None = None
):
    """Backward launcher; arguments as ``side_attention_fwd``. Returns (dx [B, N, C] in x's dtype or None unless
    ``dx``, then d_keys, d_key_bias, d_values, d_out_bias in fp32, head-major as ``fold_attention``'s, or Nones
    unless ``fold_grads``).

    ``num_splits``: programs per batch element (S), default about 2 per SM over the batch; tests set it low to make
    programs loop over several token tiles.
    """
    grad_out = grad_out.contiguous()
    batch, num_tokens, width = x.shape
    num_heads, num_keys = keys.shape[1], keys.shape[2]
    block_n, block_c, num_warps, num_stages = _bwd_launch_sizes(width)
    num_tiles = triton.cdiv(num_tokens, block_n)
    slice_size = 2 * num_heads * batch * num_keys * width + num_heads * batch * num_keys + batch * width
    if num_splits is None:
        num_splits = min(triton.cdiv(2 * sm_count(x.device), batch), max(1, _PARTIAL_BYTES // (4 * slice_size)))
    num_splits = max(1, min(num_splits, num_tiles))

    grad_x = torch.empty_like(x) if dx else None
    partial = torch.zeros(num_splits, slice_size, device=x.device, dtype=torch.float32) if fold_grads else None
    ds_scratch = torch.empty(num_splits * batch, num_heads, block_n, MAX_KEYS, device=x.device) if dx else None
    if num_tokens > 0:
        _side_attention_bwd_kernel[(num_splits, batch)](
            x, grad_out, keys, key_bias, values, x if grad_x is None else grad_x, x if partial is None else partial,
            x if ds_scratch is None else ds_scratch,
            num_tokens, width, num_keys, num_heads, num_splits, *_head_strides(keys, key_bias, values), eps,
            WRITE_DX=dx, FOLD_GRADS=fold_grads,
            BLOCK_N=block_n, BLOCK_C=block_c, BLOCK_M=MAX_KEYS, DOT_PRECISION=dot_precision(x.dtype),
            num_warps=num_warps, num_stages=num_stages,
        )  # fmt: skip
    if partial is None:
        return grad_x, None, None, None, None
    head_major = (num_heads, batch, num_keys)
    d_keys, d_values, d_key_bias, d_out_bias = partial.sum(0).split(
        [num_heads * batch * num_keys * width] * 2 + [num_heads * batch * num_keys, batch * width]
    )
    return (
        grad_x,
        d_keys.view(*head_major, width).transpose(0, 1),
        d_key_bias.view(head_major).transpose(0, 1),
        d_values.view(*head_major, width).transpose(0, 1),
        d_out_bias.view(batch, width),
    )


class SideAttentionFunction(torch.autograd.Function):
    """The kernels on already-folded tensors: ``apply(x, keys, key_bias, values, out_bias, eps)`` as
    ``side_attention_fwd``. Saves x and the folded keys/values; the backward recomputes LN and the softmax per token
    and returns the reduced gradients of the folded tensors."""

    @staticmethod
    def forward(ctx, x, keys, key_bias, values, out_bias, eps):
        ctx.save_for_backward(x, keys, key_bias, values)
        ctx.eps = float(eps)
        return side_attention_fwd(x, keys, key_bias, values, out_bias, eps)

    @staticmethod
    def backward(ctx, grad_out):
        needs = ctx.needs_input_grad
        grads = side_attention_bwd(grad_out, *ctx.saved_tensors, ctx.eps, dx=needs[0], fold_grads=any(needs[1:5]))
        return (*(grad if need else None for grad, need in zip(grads, needs)), None)


def side_attention(
    x: torch.Tensor, kv: torch.Tensor,
    norm_weight: torch.Tensor, norm_bias: torch.Tensor, q_weight: torch.Tensor, q_bias: torch.Tensor,
    k_weight: torch.Tensor, k_bias: torch.Tensor, v_weight: torch.Tensor, v_bias: torch.Tensor,
    proj_weight: torch.Tensor, proj_bias: torch.Tensor,
    num_heads: int, eps: float = 1e-6, branch_scale: torch.Tensor | None = None,
) -> torch.Tensor:  # fmt: skip
    """MetaT cross-attention with its residual, ``x + Proj(MultiHead(q=Wq LN1(x), k=Wk kv, v=Wv kv))``
    (HST.md §3 step 1), with Wq / LN1's affine folded into the keys and Wproj into the values (§5).

    x: [B, N, C] side tokens; kv: [B, M, C] meta tokens + GlobalT, 1 <= M <= 16; norm_*: [C] LN1 affine;
    *_weight: [C, C]; *_bias: [C]; num_heads must divide C (head widths of any size); branch_scale:
    optional [B] drop-path scale (no gradient). fp32 / fp16 / bf16, one dtype for all tensors but
    branch_scale; the fold, LN, softmax and every sum in fp32. Returns [B, N, C] in x's dtype. Same signature and
    result as ``reference.side_attention_reference``; differentiable in x, kv and the 10 parameters.

    Raises ``UnsupportedInput`` for more than 16 keys, C not divisible by num_heads, C > 1024, mixed
    dtypes/devices or non-contiguous inputs; ``ValueError`` for inconsistent shapes.
    """
    params = AttentionParams(
        norm_weight, norm_bias, q_weight, q_bias, k_weight, k_bias, v_weight, v_bias, proj_weight, proj_bias
    )
    _check_inputs(x, kv, params, num_heads, branch_scale)
    folded = fold_attention(kv, params, int(num_heads), branch_scale, x.dtype)
    return SideAttentionFunction.apply(x, *folded, eps)
