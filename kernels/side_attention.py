"""MetaT cross-attention of a side block, fused: ``x + Proj(MHA(q=Wq LN1(x), k=Wk kv, v=Wv kv))`` (HST.md §3, §5).

The trick (HST.md §5): there are only M = G+1 <= 16 keys (2 or 9 in practice) but up to 65,536 queries,
so the query and output projections are folded into the keys and values, per (batch, head), by a
small torch prologue on ``[B, h, M, C]`` tensors (``_fold``):

- ``K'_h = s * (Wk kv + bk)_h Wq_h``, ``[M, C]`` over the C input dims of LN1(x), s = (C/h)^-1/2;
  with LN1's affine folded in too, scores_h = ``xhat @ (K'_h * w)^T + (s * bq_h . k_h + K'_h @ b)``,
  where xhat is the *un-affined* normalized x;
- ``V'_h = (Wv kv + bv)_h Wproj_h^T``, ``[M, C]``, so the branch is ``sum_h softmax(scores_h) @ V'_h
  + bproj`` (a drop-path ``branch_scale[b]`` is folded into V' and bproj too).

The main kernel then reads each query token once, normalizes it in registers, loops over the heads
with the folded keys/values of its batch (read from L2, padded to 16 keys with masks: padded keys get
a -inf score), and writes ``x + branch``. No ``C x C`` matrix ever touches the N queries; every
``tl.dot`` has all dims >= 16 whatever the head width (6..64), because the contraction runs over C.

Backward: the per-token kernel recomputes LN and the softmax, writes
``dx = dy + LN_backward(sum_h ds_h @ K''_h)`` with ``ds_h = p_h * (dp_h - rowsum(p_h dp_h))``,
``dp_h = dy @ V'_h^T``, and reduces the small per-(batch, head) quantities ``sum_n ds^T xhat``,
``sum_n ds``, ``sum_n p^T dy`` and ``sum_n dy``: a persistent grid of ``S`` programs per batch,
each adding its tiles into its own fp32 partial slice (relaxed atomics into a slice no other program
touches, so there is no contention), then one torch ``sum`` over the S slices. The chain rule back
through the folding to kv, Wq, bq, Wk, bk, Wv, bv, Wproj, bproj and LN1's weight/bias is torch ops
on ``[B, h, M, C]`` tensors (``_fold_backward``).
"""

from __future__ import annotations

import numbers
from typing import NamedTuple

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from ._compat import (
    INTERPRET,
    UnsupportedInput,
    autotune_configs,
    check_tensors,
    dot_precision,
    prune_by_registers,
    sm_count,
)

__all__ = ["AttentionParams", "SideAttentionFunction", "side_attention", "side_attention_bwd", "side_attention_fwd"]

MAX_KEYS = 16  # BLOCK_M: keys are padded to one 16-row tile
MAX_WIDTH = 1024  # one [BLOCK_N, next_pow2(C)] register tile per token block
_PARTIAL_BYTES = 16 << 20  # cap on the backward's fp32 partial buffers (they should stay in L2)


@triton.jit
def _normalize(x, mask_c, C, eps):
    """LayerNorm without affine over the columns of x [BLOCK_N, BLOCK_C] (padded columns are 0).
    Returns xhat (0 in padded columns) and rstd [BLOCK_N]."""
    mean = tl.sum(x, axis=1) / C
    xc = tl.where(mask_c[None, :], x - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(xc * xc, axis=1) / C + eps)
    return xc * rstd[:, None], rstd


@triton.jit
def _head_probs(xhat, kf, kb, DOT_PRECISION: tl.constexpr):
    """Softmax over the keys of one head: xhat [BLOCK_N, BLOCK_C], kf [BLOCK_M, BLOCK_C] folded keys
    (0 in padded rows), kb [BLOCK_M] folded score bias (-inf in padded rows). Returns p [BLOCK_N, BLOCK_M]."""
    scores = tl.dot(xhat, tl.trans(kf), input_precision=DOT_PRECISION) + kb[None, :]
    p = tl.exp(scores - tl.max(scores, axis=1)[:, None])
    return p / tl.sum(p, axis=1)[:, None]


_FWD_CONFIGS = [
    triton.Config({"BLOCK_N": block_n}, num_warps=num_warps)
    for block_n, num_warps in ((64, 4), (32, 4), (128, 4), (64, 8), (128, 8), (16, 4), (32, 8))
]


@triton.autotune(
    configs=autotune_configs(_FWD_CONFIGS),
    key=["C", "H", "M"],
    # two live [BLOCK_N, BLOCK_C] fp32 tiles (xhat, acc) per program
    prune_configs_by={"early_config_prune": prune_by_registers(128, lambda m: (2 * m["BLOCK_N"] * m["BLOCK_C"],))},
)
@triton.jit
def _side_attention_fwd_kernel(
    X,  # [B, N, C] side tokens
    KF,  # [B, H, M, C] fp32 folded keys K'' = s * k_h Wq_h * ln_weight
    KB,  # [B, H, M] fp32 folded score bias
    VF,  # [B, H, M, C] fp32 folded values V' = v_h Wproj_h^T (times branch_scale)
    OB,  # [B, C] fp32 output bias bproj (times branch_scale)
    Y,  # [B, N, C] output, x's dtype
    N, C, M, H,  # tokens, width, keys, heads
    eps,
    BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_M: tl.constexpr, DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    pid_n = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_c = tl.arange(0, BLOCK_C)
    offs_m = tl.arange(0, BLOCK_M)
    mask_c = offs_c < C
    mask_x = (offs_n < N)[:, None] & mask_c[None, :]
    mask_kv = (offs_m < M)[:, None] & mask_c[None, :]
    kv_offs = offs_m[:, None] * C + offs_c[None, :]

    tok = pid_b * N * C + offs_n[:, None] * C + offs_c[None, :]
    x = tl.load(X + tok, mask=mask_x, other=0.0).to(tl.float32)
    xhat, _ = _normalize(x, mask_c, C, eps)

    acc = tl.zeros((BLOCK_N, BLOCK_C), dtype=tl.float32)
    for h in range(H):
        head = pid_b * H + h
        kf = tl.load(KF + head * M * C + kv_offs, mask=mask_kv, other=0.0)
        kb = tl.load(KB + head * M + offs_m, mask=offs_m < M, other=float("-inf"))
        p = _head_probs(xhat, kf, kb, DOT_PRECISION)
        vf = tl.load(VF + head * M * C + kv_offs, mask=mask_kv, other=0.0)
        acc += tl.dot(p, vf, input_precision=DOT_PRECISION)

    ob = tl.load(OB + pid_b * C + offs_c, mask=mask_c, other=0.0)
    tl.store(Y + tok, (x + acc + ob[None, :]).to(Y.dtype.element_ty), mask=mask_x)


@triton.jit
def _side_attention_bwd_kernel(
    X,  # [B, N, C] side tokens (forward input)
    DY,  # [B, N, C] upstream gradient
    KF,  # [B, H, M, C] fp32 folded keys
    KB,  # [B, H, M] fp32 folded score bias
    VF,  # [B, H, M, C] fp32 folded values
    DX,  # [B, N, C] gradient of x, x's dtype
    DKF,  # [B, S, H, M, C] fp32, zeroed: per-program partials of sum_n ds^T xhat
    DKB,  # [B, S, H, M] fp32, zeroed: per-program partials of sum_n ds
    DVF,  # [B, S, H, M, C] fp32, zeroed: per-program partials of sum_n p^T dy
    DOB,  # [B, S, C] fp32: per-program partials of sum_n dy
    N, C, M, H, S,  # tokens, width, keys, heads, programs per batch element
    eps,
    BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_M: tl.constexpr, DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    pid_s = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
    offs_c = tl.arange(0, BLOCK_C)
    offs_m = tl.arange(0, BLOCK_M)
    mask_c = offs_c < C
    mask_m = offs_m < M
    mask_kv = mask_m[:, None] & mask_c[None, :]
    kv_offs = offs_m[:, None] * C + offs_c[None, :]
    part = (pid_b * S + pid_s) * H  # this program's first [M, C] partial slice

    dob = tl.zeros((BLOCK_C,), dtype=tl.float32)
    for tile in range(pid_s, tl.cdiv(N, BLOCK_N), S):
        offs_n = tile * BLOCK_N + tl.arange(0, BLOCK_N)
        mask_n = offs_n < N
        mask_x = mask_n[:, None] & mask_c[None, :]
        tok = pid_b * N * C + offs_n[:, None] * C + offs_c[None, :]
        x = tl.load(X + tok, mask=mask_x, other=0.0).to(tl.float32)
        dy = tl.load(DY + tok, mask=mask_x, other=0.0).to(tl.float32)
        xhat, rstd = _normalize(x, mask_c, C, eps)
        dob += tl.sum(dy, axis=0)

        dxhat = tl.zeros((BLOCK_N, BLOCK_C), dtype=tl.float32)
        for h in range(H):
            head = pid_b * H + h
            kf = tl.load(KF + head * M * C + kv_offs, mask=mask_kv, other=0.0)
            kb = tl.load(KB + head * M + offs_m, mask=mask_m, other=float("-inf"))
            vf = tl.load(VF + head * M * C + kv_offs, mask=mask_kv, other=0.0)
            p = tl.where(mask_n[:, None], _head_probs(xhat, kf, kb, DOT_PRECISION), 0.0)
            dp = tl.dot(dy, tl.trans(vf), input_precision=DOT_PRECISION)  # [BLOCK_N, BLOCK_M]
            ds = p * (dp - tl.sum(p * dp, axis=1)[:, None])  # softmax backward; 0 in padded keys/tokens
            dxhat += tl.dot(ds, kf, input_precision=DOT_PRECISION)

            slice_offs = (part + h) * M * C + kv_offs
            dvf = tl.dot(tl.trans(p), dy, input_precision=DOT_PRECISION)
            dkf = tl.dot(tl.trans(ds), xhat, input_precision=DOT_PRECISION)
            tl.atomic_add(DVF + slice_offs, dvf, mask=mask_kv, sem="relaxed")
            tl.atomic_add(DKF + slice_offs, dkf, mask=mask_kv, sem="relaxed")
            tl.atomic_add(DKB + (part + h) * M + offs_m, tl.sum(ds, axis=0), mask=mask_m, sem="relaxed")

        # LayerNorm backward (no affine: LN1's weight/bias live in the folded keys).
        mean_dxhat = tl.sum(dxhat, axis=1) / C
        mean_dxhat_xhat = tl.sum(dxhat * xhat, axis=1) / C
        dx = dy + rstd[:, None] * (dxhat - mean_dxhat[:, None] - xhat * mean_dxhat_xhat[:, None])
        tl.store(DX + tok, dx.to(DX.dtype.element_ty), mask=mask_x)

    tl.store(DOB + (pid_b * S + pid_s) * C + offs_c, dob, mask=mask_c)


class AttentionParams(NamedTuple):
    """The side block's LN1 affine ([C]) and its q, k, v, proj Linear layers (weights [C, C], biases [C]), in the
    public op's argument order. Launchers take them as one tuple."""

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


class _Folded(NamedTuple):
    """The per-(batch, head) folded attention (fp32) and what its backward needs."""

    keys: torch.Tensor  # [B, H, M, C] K'' = K' * ln_weight, applied to the un-affined xhat
    key_bias: torch.Tensor  # [B, H, M] s * bq_h . k_h + K' @ ln_bias
    values: torch.Tensor  # [B, H, M, C] V' (times branch_scale)
    out_bias: torch.Tensor  # [B, C] bproj (times branch_scale)
    raw_keys: torch.Tensor  # [B, H, M, C] K' = s * k_h Wq_h
    k: torch.Tensor  # [B, H, M, d] Wk kv + bk, per head
    v: torch.Tensor  # [B, H, M, d] Wv kv + bv, per head
    scale: torch.Tensor | None  # [B] branch_scale in fp32, or None


def _fold(kv, params: AttentionParams, num_heads, branch_scale, branch_dtype) -> _Folded:
    """Folds Wq (and LN1's affine) into the keys and Wproj into the values, per (batch, head), in fp32."""
    p = AttentionParams(*(t.float() for t in params))
    batch, num_keys, width = kv.shape
    head_dim = width // num_heads
    softmax_scale = head_dim**-0.5
    kv = kv.float()
    k = F.linear(kv, p.k_weight, p.k_bias).view(batch, num_keys, num_heads, head_dim).transpose(1, 2)
    v = F.linear(kv, p.v_weight, p.v_bias).view(batch, num_keys, num_heads, head_dim).transpose(1, 2)
    raw_keys = softmax_scale * torch.einsum("bhmd,hdc->bhmc", k, p.q_weight.view(num_heads, head_dim, width))
    key_bias = softmax_scale * torch.einsum("bhmd,hd->bhm", k, p.q_bias.view(num_heads, head_dim))
    keys = raw_keys * p.norm_weight
    key_bias = key_bias + raw_keys @ p.norm_bias
    values = torch.einsum("bhmd,ohd->bhmo", v, p.proj_weight.view(width, num_heads, head_dim))
    out_bias = p.proj_bias.expand(batch, width)
    scale = None
    if branch_scale is not None:
        # the reference multiplies by branch_scale.to(x.dtype): round the same way
        scale = branch_scale.to(branch_dtype).float()
        values = values * scale.view(batch, 1, 1, 1)
        out_bias = out_bias * scale.view(batch, 1)
    return _Folded(
        keys.contiguous(), key_bias.contiguous(), values.contiguous(), out_bias.contiguous(), raw_keys, k, v, scale
    )


def _fold_backward(folded: _Folded, grads, kv, params: AttentionParams):
    """Chain rule from the reduced gradients of the folded tensors back to the module's inputs.

    grads: (d_keys [B, H, M, C], d_key_bias [B, H, M], d_values [B, H, M, C], d_out_bias [B, C]), fp32.
    Returns fp32 grads for (kv, norm_weight, norm_bias, q_weight, q_bias, k_weight, k_bias, v_weight,
    v_bias, proj_weight, proj_bias).
    """
    d_keys, d_key_bias, d_values, d_out_bias = grads
    batch, num_heads, num_keys, width = d_keys.shape
    head_dim = width // num_heads
    softmax_scale = head_dim**-0.5
    if folded.scale is not None:
        d_values = d_values * folded.scale.view(batch, 1, 1, 1)
        d_out_bias = d_out_bias * folded.scale.view(batch, 1)
    grad_proj_bias = d_out_bias.sum(0)

    # keys = raw_keys * w; key_bias = s * bq.k + raw_keys @ b
    grad_norm_weight = (d_keys * folded.raw_keys).sum((0, 1, 2))
    grad_norm_bias = torch.einsum("bhm,bhmc->c", d_key_bias, folded.raw_keys)
    norm_weight, norm_bias = params.norm_weight.float(), params.norm_bias.float()
    d_raw_keys = softmax_scale * (d_keys * norm_weight + d_key_bias[..., None] * norm_bias)
    d_qk_bias = softmax_scale * d_key_bias  # gradient of (bq_h . k_h), [B, H, M]

    # raw_keys = s * k_h Wq_h
    wq = params.q_weight.float().view(num_heads, head_dim, width)
    bq = params.q_bias.float().view(num_heads, head_dim)
    grad_k = torch.einsum("bhmc,hdc->bhmd", d_raw_keys, wq) + d_qk_bias[..., None] * bq[None, :, None, :]
    grad_q_weight = torch.einsum("bhmd,bhmc->hdc", folded.k, d_raw_keys).reshape(width, width)
    grad_q_bias = torch.einsum("bhm,bhmd->hd", d_qk_bias, folded.k).reshape(width)

    # values = v_h Wproj_h^T
    wp = params.proj_weight.float().view(width, num_heads, head_dim)
    grad_v = torch.einsum("bhmo,ohd->bhmd", d_values, wp)
    grad_proj_weight = torch.einsum("bhmo,bhmd->ohd", d_values, folded.v).reshape(width, width)

    # k = kv Wk^T + bk, v = kv Wv^T + bv
    kv = kv.float().reshape(-1, width)
    grad_k = grad_k.transpose(1, 2).reshape(-1, width)
    grad_v = grad_v.transpose(1, 2).reshape(-1, width)
    grad_kv = (grad_k @ params.k_weight.float() + grad_v @ params.v_weight.float()).view(batch, num_keys, width)
    grad_params = AttentionParams(
        grad_norm_weight, grad_norm_bias, grad_q_weight, grad_q_bias, grad_k.t() @ kv, grad_k.sum(0),
        grad_v.t() @ kv, grad_v.sum(0), grad_proj_weight, grad_proj_bias,
    )  # fmt: skip
    return (grad_kv, *grad_params)


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


def side_attention_fwd(x, kv, params: AttentionParams, num_heads, eps=1e-6, branch_scale=None):
    """Forward launcher. x: [B, N, C]; kv: [B, M, C]; params: the 10 parameter tensors (any sequence in
    ``AttentionParams`` order). Returns (y [B, N, C] in x's dtype, the fold)."""
    params = AttentionParams(*params)
    _check_inputs(x, kv, params, num_heads, branch_scale)
    num_heads = int(num_heads)
    folded = _fold(kv, params, num_heads, branch_scale, x.dtype)
    batch, num_tokens, width = x.shape
    y = torch.empty_like(x)
    if x.numel() == 0:
        return y, folded

    def grid(meta):
        return (triton.cdiv(num_tokens, meta["BLOCK_N"]), batch)

    _side_attention_fwd_kernel[grid](
        x, folded.keys, folded.key_bias, folded.values, folded.out_bias, y, num_tokens, width, kv.shape[1], num_heads,
        eps, BLOCK_C=triton.next_power_of_2(width), BLOCK_M=MAX_KEYS, DOT_PRECISION=dot_precision(x.dtype),
    )  # fmt: skip
    return y, folded


def _bwd_block_sizes(width: int) -> tuple[int, int, int]:
    """(BLOCK_N, BLOCK_C, num_warps): four live [BLOCK_N, BLOCK_C] fp32 tiles (dy, xhat, dxhat, dx)."""
    block_c = triton.next_power_of_2(width)
    block_n = max(16, min(64, 8192 // block_c))
    if INTERPRET:  # the interpreter runs one numpy op per block: fewer, larger programs are faster
        block_n = 64
    return block_n, block_c, 4 if block_c <= 128 else 8


def side_attention_bwd(
    grad_out, x, folded: _Folded, kv, params: AttentionParams, num_heads, eps, num_splits: int | None = None
):
    """Backward launcher. Returns fp32-reduced grads cast to each input's dtype, in the order
    (x, kv, norm_weight, norm_bias, q_weight, q_bias, k_weight, k_bias, v_weight, v_bias, proj_weight, proj_bias).

    ``num_splits``: programs per batch element (S), default about 2 per SM over the batch; tests set it
    low to make programs loop over several token tiles.
    """
    grad_out = grad_out.contiguous()
    batch, num_tokens, width = x.shape
    num_keys = kv.shape[1]
    block_n, block_c, num_warps = _bwd_block_sizes(width)
    num_tiles = triton.cdiv(num_tokens, block_n)
    if num_splits is None:
        slice_bytes = batch * (2 * num_heads * num_keys * width + num_heads * num_keys + width) * 4
        num_splits = min(triton.cdiv(2 * sm_count(x.device), batch), max(1, _PARTIAL_BYTES // slice_bytes))
    num_splits = max(1, min(num_splits, num_tiles))

    f32 = {"device": x.device, "dtype": torch.float32}
    d_keys = torch.zeros(batch, num_splits, num_heads, num_keys, width, **f32)
    d_key_bias = torch.zeros(batch, num_splits, num_heads, num_keys, **f32)
    d_values = torch.zeros(batch, num_splits, num_heads, num_keys, width, **f32)
    d_out_bias = torch.zeros(batch, num_splits, width, **f32)
    grad_x = torch.empty_like(x)
    if num_tokens > 0:
        _side_attention_bwd_kernel[(num_splits, batch)](
            x, grad_out, folded.keys, folded.key_bias, folded.values, grad_x, d_keys, d_key_bias, d_values, d_out_bias,
            num_tokens, width, num_keys, num_heads, num_splits, eps,
            BLOCK_N=block_n, BLOCK_C=block_c, BLOCK_M=MAX_KEYS, DOT_PRECISION=dot_precision(x.dtype),
            num_warps=num_warps,
        )  # fmt: skip
    reduced = (d_keys.sum(1), d_key_bias.sum(1), d_values.sum(1), d_out_bias.sum(1))
    grads = _fold_backward(folded, reduced, kv, AttentionParams(*params))
    return (grad_x, *(g.to(x.dtype) for g in grads))


class SideAttentionFunction(torch.autograd.Function):
    """Autograd wrapper: saves x, kv and the parameters (and the small fp32 fold); the backward recomputes LN and
    the softmax per token. Arguments in the public op's order, the 10 parameters as ``*params``."""

    @staticmethod
    def forward(ctx, x, kv, *args):
        *params, num_heads, eps, branch_scale = args
        y, folded = side_attention_fwd(x, kv, params, num_heads, eps, branch_scale)
        ctx.save_for_backward(x, kv, *params)
        ctx.folded = folded  # small fp32 [B, H, M, C] tensors without autograd history
        ctx.num_heads, ctx.eps = int(num_heads), float(eps)
        return y

    @staticmethod
    def backward(ctx, grad_out):
        x, kv, *params = ctx.saved_tensors
        grads = side_attention_bwd(grad_out, x, ctx.folded, kv, params, ctx.num_heads, ctx.eps)
        return (*grads, None, None, None)


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
    branch_scale; LN, softmax and every sum in fp32. Returns [B, N, C] in x's dtype. Same signature and
    result as ``reference.side_attention_reference``.

    Raises ``UnsupportedInput`` for more than 16 keys, C not divisible by num_heads, C > 1024, mixed
    dtypes/devices or non-contiguous inputs; ``ValueError`` for inconsistent shapes.
    """
    params = (norm_weight, norm_bias, q_weight, q_bias, k_weight, k_bias, v_weight, v_bias, proj_weight, proj_bias)
    return SideAttentionFunction.apply(x, kv, *params, num_heads, eps, branch_scale)
