"""The side block's feed-forward with its residual, ``x + s_b * FC2(GELU(FC1(LN(x))))``, fused in Triton.

HST.md §3 step 3: width C, hidden 4C, exact (erf) GELU, LayerNorm eps 1e-6, and an optional per-sample
drop-path scale ``s_b``. At stage 1 of the detection config there are (H/4)(W/4) tokens per image (65,536 at
1024x1024) and C = 64, so the [N, 4C] hidden activation is the largest tensor of the side network. None of the
kernels here ever writes it to global memory (the flash-attention trick applied to an MLP):

- forward: one program per ``BLOCK_M`` rows normalizes them in registers, then walks the hidden dim in
  ``BLOCK_H`` chunks: ``act = GELU(LN(x) @ W1[chunk]^T + b1[chunk])`` and ``acc += act @ W2[:, chunk]^T``.
  Only the output and each row's mean and 1/std (fp32) are stored.
- backward, two kernels that both recompute LN and the hidden chunk by chunk:
  ``_side_ffn_bwd_dx_kernel`` (persistent over row tiles) gives ``dx`` plus per-program fp32 partials of the
  LayerNorm affine's and FC2 bias's gradients; ``_side_ffn_bwd_dw_kernel`` (one program per hidden chunk and
  row split) accumulates ``dW1[chunk]``, ``dW2[:, chunk]`` and ``db1[chunk]`` over its rows in registers and
  writes one fp32 partial per row split. Partials are summed once on the host; there are no atomics, so the
  backward is deterministic. Each kernel runs only if autograd needs one of its gradients, and the dx kernel writes
  ``dx`` only if x needs it (``ctx.needs_input_grad``).

Reference: ``hst_fast.kernels.reference.side_ffn_reference``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._compat import (
    INTERPRET,
    UnsupportedInput,
    autotune_configs,
    check_tensors,
    dot_dtype,
    dot_precision,
    prune_by_registers,
    sm_count,
)
from ._tiles import layer_norm_tile, load_affine, row_tile, saved_layer_norm_tile

__all__ = ["MAX_WIDTH", "SideFFNFunction", "side_ffn", "side_ffn_bwd", "side_ffn_fwd"]

# Widest C a program keeps whole in registers (its [BLOCK_M, C] accumulator); wider raises UnsupportedInput.
# HST's widest side stage is 384; at 1024 the fp32 backward's smallest tiles overflow an H100's shared memory.
MAX_WIDTH = 512
# Cap on the fp32 weight-gradient partials of the dw kernel, in elements (64 MiB).
_MAX_PARTIAL_ELEMENTS = 1 << 24

_SQRT1_2 = tl.constexpr(0.7071067811865476)  # compiled kernels only read constexpr globals
_INV_SQRT_2PI = tl.constexpr(0.3989422804014327)
# Row tiles this wide (BLOCK_C) that the forward and the dx kernel need after the hidden loop are read again there
# (``_reread``) rather than held in registers through it: at C = 384 holding them spilled. Narrower ones are held: read
# again, ptxas chose fewer registers and spilled at some small widths (fp32 forward at C = 32, dx at C = 48 and 64).
_REREAD_BLOCK_C = tl.constexpr(512)


def _configs(block_ms, block_hs) -> list:
    """The autotuning space in order of preference (bigger tiles first); the first config is the one the interpreter
    runs (small and valid for any width)."""
    configs = [
        triton.Config({"BLOCK_M": block_m, "BLOCK_H": block_h}, num_warps=num_warps, num_stages=2)
        for block_m in block_ms
        for block_h in block_hs
        for num_warps in (4, 8)
    ]
    return autotune_configs(configs)


# Retuned per width, hidden width and power-of-two bucket of the row count (not the first call's rows for every size).
_TUNING_KEY = ["C", "H", "ROWS_BUCKET"]
_ROW_CONFIGS = _configs((64, 128, 32, 16), (64, 32, 16))
_DW_CONFIGS = _configs((64, 128, 32, 16), (32, 64, 16))
# Register budgets per thread, fitted to what ptxas does for sm_90 (tests/kernels/compile_sm90.py,
# compile_table.md): above them configs spilled (up to thousands of values for fp32's FMA dots, whose operands are
# whole BLOCK_C rows), so the autotuner never sees them. Rows kernels: the [BLOCK_M, BLOCK_C] fp32 row tiles
# (x_hat, dy, the accumulator), the [BLOCK_H, BLOCK_C] weight chunks, the [BLOCK_M, BLOCK_H] hidden chunk.
_prune_rows = prune_by_registers(
    lambda m: ((m["BLOCK_M"] * m["BLOCK_C"], 16), (m["BLOCK_H"] * m["BLOCK_C"], 32), (m["BLOCK_M"] * m["BLOCK_H"], 8))
)
# The dw kernel: its two [BLOCK_H, BLOCK_C] fp32 weight-gradient accumulators, the [BLOCK_M, BLOCK_C] row tiles
# and the hidden chunk. Fitted before dbranch moved after FC1's dot; since then bf16's (16, 32) and (32, 16) tiles of
# 8 warps also compile clean at C = 256 and 384 (160 to 249 registers), not admitted until timed on a GPU.
_prune_dw_registers = prune_by_registers(
    lambda m: ((m["BLOCK_H"] * m["BLOCK_C"], 16), (m["BLOCK_M"] * m["BLOCK_C"], 16), (m["BLOCK_M"] * m["BLOCK_H"], 8))
)


# fp32 'ieee' dots run on FMA units, whose operands are whole BLOCK_C rows per thread, and ptxas's register allocation
# for them is erratic (a smaller tile can spill where a larger one does not, and Triton 3.6 and 3.7 differ): each
# kernel runs one tile per BLOCK_C there, (BLOCK_M, BLOCK_H, num_warps), the one that compiled for sm_90 without
# spills with both Tritons (tests/kernels/compile_sm90.py; budgets alone kept spilling ones).
_FMA_TILES = {
    "fwd": {16: (32, 32, 8), 32: (32, 32, 8), 64: (32, 32, 8), 128: (32, 32, 8), 256: (32, 32, 8), 512: (16, 16, 8)},
    "dx": {16: (16, 32, 8), 32: (16, 32, 8), 64: (16, 16, 8), 128: (16, 32, 8), 256: (16, 32, 8), 512: (16, 16, 8)},
    "dw": {16: (16, 32, 8), 32: (16, 32, 8), 64: (16, 16, 4), 128: (16, 16, 4), 256: (16, 16, 4), 512: (16, 16, 8)},
}


def _with_fma_tiles(kernel: str, prune):
    """``prune`` for 16-bit and TF32 dots; with fp32 'ieee' dots, the kernel's ``_FMA_TILES`` config for BLOCK_C."""

    def pruned(configs, named_args, **kwargs):
        if kwargs["PRECISION"] != "ieee":
            return prune(configs, named_args, **kwargs)
        if INTERPRET:  # it runs the first config only, and registers mean nothing there
            return configs
        tile = _FMA_TILES[kernel][kwargs["BLOCK_C"]]
        return [c for c in configs if (c.kwargs["BLOCK_M"], c.kwargs["BLOCK_H"], c.num_warps) == tile]

    return pruned


_prune_fwd = _with_fma_tiles("fwd", _prune_rows)
_prune_dx = _with_fma_tiles("dx", _prune_rows)
_prune_dw = _with_fma_tiles("dw", _prune_dw_registers)


@triton.jit
def _gelu_with_grad(pre):
    """Exact GELU of ``pre`` and its derivative: ``pre * Phi(pre)`` and ``Phi(pre) + pre * phi(pre)``."""
    cdf = 0.5 * (1.0 + tl.erf(pre * _SQRT1_2))
    pdf = tl.exp(-0.5 * pre * pre) * _INV_SQRT_2PI
    return pre * cdf, cdf + pre * pdf


@triton.jit
def _normed(x_hat, norm_weight, norm_bias, x_ptr, DOT_DTYPE: tl.constexpr):
    """The LayerNorm output ``x_hat * w + b`` as FC1's ``tl.dot`` operand: rounded to x's dtype like the reference's
    LN output, then cast to DOT_DTYPE; padded columns are exactly zero."""
    return (x_hat * norm_weight[None, :] + norm_bias[None, :]).to(x_ptr.dtype.element_ty).to(DOT_DTYPE)


@triton.jit
def _reread(ptr, offsets, mask):
    """``ptr[offsets]`` as fp32 [BLOCK_M, BLOCK_C], 0 where masked, read a second time. evict_first, as this is the
    last read; its policy, unlike the first read's, also keeps the compiler from merging the two (CSE)."""
    return tl.load(ptr + offsets, mask=mask, other=0.0, eviction_policy="evict_first").to(tl.float32)


@triton.jit
def _scale_rows(t, scale_ptr, rows, row_mask, N, HAS_SCALE: tl.constexpr):
    """``t`` [BLOCK_M, BLOCK_C] times its rows' per-sample branch scale (row r is in sample r // N), if HAS_SCALE."""
    if HAS_SCALE:
        scale = tl.load(scale_ptr + rows // N, mask=row_mask, other=0.0)
        t = t * scale[:, None]
    return t


@triton.autotune(configs=_ROW_CONFIGS, key=_TUNING_KEY, prune_configs_by={"early_config_prune": _prune_fwd})
@triton.jit(do_not_specialize=["ROWS_BUCKET"])
def _side_ffn_fwd_kernel(
    x_ptr,  # [M, C] input rows, M = B * N
    y_ptr,  # [M, C] output, x's dtype
    norm_weight_ptr,  # [C]
    norm_bias_ptr,  # [C]
    fc1_weight_ptr,  # [H, C]
    fc1_bias_ptr,  # [H]
    fc2_weight_ptr,  # [C, H]
    fc2_bias_ptr,  # [C]
    scale_ptr,  # [B] fp32 per-sample branch scale, read only if HAS_SCALE
    mean_ptr,  # [M] fp32, saved for the backward
    rstd_ptr,  # [M] fp32, 1 / sqrt(var + eps), saved for the backward
    M, C, H,
    N,  # rows per sample: row r belongs to sample r // N
    ROWS_BUCKET,  # autotuning key only: next_power_of_2(M)
    eps,
    HAS_SCALE: tl.constexpr, DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_H: tl.constexpr,
):  # fmt: skip
    cols = tl.arange(0, BLOCK_C)
    col_mask = cols < C
    rows, row_mask, mask, offsets = row_tile(tl.program_id(0), M, C, cols, col_mask, BLOCK_M)

    x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    mean, rstd, x_hat = layer_norm_tile(x, mask, C, eps)
    norm_weight, norm_bias = load_affine(norm_weight_ptr, norm_bias_ptr, cols, col_mask)
    normed = _normed(x_hat, norm_weight, norm_bias, x_ptr, DOT_DTYPE)

    acc = tl.zeros([BLOCK_M, BLOCK_C], dtype=tl.float32)
    for start in range(0, H, BLOCK_H):
        hidden = start + tl.arange(0, BLOCK_H)
        h_mask = hidden < H
        w1 = tl.load(  # [BLOCK_H, BLOCK_C]
            fc1_weight_ptr + hidden[:, None] * C + cols[None, :], mask=h_mask[:, None] & col_mask[None, :], other=0.0
        )
        b1 = tl.load(fc1_bias_ptr + hidden, mask=h_mask, other=0.0).to(tl.float32)
        pre = tl.dot(normed, tl.trans(w1.to(DOT_DTYPE)), input_precision=PRECISION) + b1[None, :]
        act = pre * 0.5 * (1.0 + tl.erf(pre * _SQRT1_2))  # padded hidden units: pre = 0, act = 0
        w2 = tl.load(  # [BLOCK_C, BLOCK_H]
            fc2_weight_ptr + cols[:, None] * H + hidden[None, :], mask=col_mask[:, None] & h_mask[None, :], other=0.0
        )
        act = act.to(x_ptr.dtype.element_ty).to(DOT_DTYPE)
        acc = tl.dot(act, tl.trans(w2.to(DOT_DTYPE)), acc, input_precision=PRECISION)

    fc2_bias = tl.load(fc2_bias_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)
    branch = _scale_rows(acc + fc2_bias[None, :], scale_ptr, rows, row_mask, N, HAS_SCALE)
    if BLOCK_C >= _REREAD_BLOCK_C:
        x = _reread(x_ptr, offsets, mask)
    tl.store(y_ptr + offsets, (x + branch).to(y_ptr.dtype.element_ty), mask=mask)
    tl.store(mean_ptr + rows, mean, mask=row_mask)
    tl.store(rstd_ptr + rows, rstd, mask=row_mask)


@triton.autotune(configs=_ROW_CONFIGS, key=_TUNING_KEY, prune_configs_by={"early_config_prune": _prune_dx})
@triton.jit(do_not_specialize=["ROWS_BUCKET"])
def _side_ffn_bwd_dx_kernel(
    x_ptr,  # [M, C] forward input
    dy_ptr,  # [M, C] gradient of the output
    norm_weight_ptr,  # [C]
    norm_bias_ptr,  # [C]
    fc1_weight_ptr,  # [H, C]
    fc1_bias_ptr,  # [H]
    fc2_weight_ptr,  # [C, H]
    scale_ptr,  # [B] fp32, read only if HAS_SCALE
    mean_ptr,  # [M] fp32
    rstd_ptr,  # [M] fp32
    dx_ptr,  # [M, C] gradient of x, x's dtype; written only if DX
    partial_ptr,  # [3, num_programs, C] fp32: this program's sums over its rows of dnorm_weight, dnorm_bias, dfc2_bias
    M, C, H, N,
    ROWS_BUCKET,  # autotuning key only: next_power_of_2(M)
    HAS_SCALE: tl.constexpr, DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr, DX: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_H: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    num_programs = tl.num_programs(0)
    cols = tl.arange(0, BLOCK_C)
    col_mask = cols < C
    norm_weight, norm_bias = load_affine(norm_weight_ptr, norm_bias_ptr, cols, col_mask)
    dnorm_weight = tl.zeros([BLOCK_C], dtype=tl.float32)
    dnorm_bias = tl.zeros([BLOCK_C], dtype=tl.float32)
    dfc2_bias = tl.zeros([BLOCK_C], dtype=tl.float32)

    for tile in range(pid, tl.cdiv(M, BLOCK_M), num_programs):
        rows, row_mask, mask, offsets = row_tile(tile, M, C, cols, col_mask, BLOCK_M)
        rstd, x_hat = saved_layer_norm_tile(x_ptr, mean_ptr, rstd_ptr, rows, row_mask, offsets, mask, "")
        normed = _normed(x_hat, norm_weight, norm_bias, x_ptr, DOT_DTYPE)
        dy = tl.load(dy_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        # padded rows and columns are zero, so they add nothing below
        dbranch = _scale_rows(dy, scale_ptr, rows, row_mask, N, HAS_SCALE)
        dfc2_bias += tl.sum(dbranch, axis=0)
        dbranch = dbranch.to(x_ptr.dtype.element_ty).to(DOT_DTYPE)

        dnormed = tl.zeros([BLOCK_M, BLOCK_C], dtype=tl.float32)
        for start in range(0, H, BLOCK_H):
            hidden = start + tl.arange(0, BLOCK_H)
            h_mask = hidden < H
            w1 = tl.load(  # [BLOCK_H, BLOCK_C]
                fc1_weight_ptr + hidden[:, None] * C + cols[None, :],
                mask=h_mask[:, None] & col_mask[None, :],
                other=0.0,
            ).to(DOT_DTYPE)
            b1 = tl.load(fc1_bias_ptr + hidden, mask=h_mask, other=0.0).to(tl.float32)
            pre = tl.dot(normed, tl.trans(w1), input_precision=PRECISION) + b1[None, :]
            _, act_grad = _gelu_with_grad(pre)
            w2 = tl.load(  # [BLOCK_C, BLOCK_H]
                fc2_weight_ptr + cols[:, None] * H + hidden[None, :],
                mask=col_mask[:, None] & h_mask[None, :],
                other=0.0,
            ).to(DOT_DTYPE)
            dpre = tl.dot(dbranch, w2, input_precision=PRECISION) * act_grad
            dpre = dpre.to(x_ptr.dtype.element_ty).to(DOT_DTYPE)
            dnormed = tl.dot(dpre, w1, dnormed, input_precision=PRECISION)

        if BLOCK_C >= _REREAD_BLOCK_C:
            x_hat = saved_layer_norm_tile(x_ptr, mean_ptr, rstd_ptr, rows, row_mask, offsets, mask, "evict_first")[1]
        dnorm_weight += tl.sum(dnormed * x_hat, axis=0)
        dnorm_bias += tl.sum(dnormed, axis=0)
        if DX:
            # LayerNorm backward: dx_hat = w * dnormed;
            # dx = rstd * (dx_hat - mean(dx_hat) - x_hat * mean(dx_hat * x_hat))
            if BLOCK_C >= _REREAD_BLOCK_C:
                dy = _reread(dy_ptr, offsets, mask)
            dx_hat = dnormed * norm_weight[None, :]
            mean_dx_hat = tl.sum(dx_hat, axis=1) / C
            mean_dx_hat_x_hat = tl.sum(dx_hat * x_hat, axis=1) / C
            dx = dy + (dx_hat - mean_dx_hat[:, None] - x_hat * mean_dx_hat_x_hat[:, None]) * rstd[:, None]
            tl.store(dx_ptr + offsets, dx.to(dx_ptr.dtype.element_ty), mask=mask)

    partial = partial_ptr + pid * C + cols
    tl.store(partial, dnorm_weight, mask=col_mask)
    tl.store(partial + num_programs * C, dnorm_bias, mask=col_mask)
    tl.store(partial + 2 * num_programs * C, dfc2_bias, mask=col_mask)


@triton.autotune(configs=_DW_CONFIGS, key=_TUNING_KEY, prune_configs_by={"early_config_prune": _prune_dw})
@triton.jit(do_not_specialize=["ROWS_BUCKET"])
def _side_ffn_bwd_dw_kernel(
    # The dx kernel's 10 inputs: x, dy [M, C]; norm_weight, norm_bias [C]; fc1_weight [H, C]; fc1_bias [H];
    # fc2_weight [C, H]; scale [B] fp32 (read only if HAS_SCALE); mean, rstd [M] fp32.
    x_ptr, dy_ptr, norm_weight_ptr, norm_bias_ptr, fc1_weight_ptr, fc1_bias_ptr, fc2_weight_ptr, scale_ptr,
    mean_ptr, rstd_ptr,
    partial_ptr,  # [num_splits, 2HC + H] fp32, this split's sums: dfc1_weight [H, C], dfc2_weight [C, H], dfc1_bias [H]
    M, C, H, N,
    ROWS_BUCKET,  # autotuning key only: next_power_of_2(M)
    HAS_SCALE: tl.constexpr, DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_H: tl.constexpr,
):  # fmt: skip
    split = tl.program_id(1)
    num_splits = tl.num_programs(1)
    cols = tl.arange(0, BLOCK_C)
    col_mask = cols < C
    hidden = tl.program_id(0) * BLOCK_H + tl.arange(0, BLOCK_H)
    h_mask = hidden < H
    w_mask = h_mask[:, None] & col_mask[None, :]  # for [BLOCK_H, BLOCK_C] tiles
    norm_weight, norm_bias = load_affine(norm_weight_ptr, norm_bias_ptr, cols, col_mask)
    w1 = tl.load(fc1_weight_ptr + hidden[:, None] * C + cols[None, :], mask=w_mask, other=0.0).to(DOT_DTYPE)
    b1 = tl.load(fc1_bias_ptr + hidden, mask=h_mask, other=0.0).to(tl.float32)
    w2 = tl.load(  # [BLOCK_C, BLOCK_H]
        fc2_weight_ptr + cols[:, None] * H + hidden[None, :], mask=col_mask[:, None] & h_mask[None, :], other=0.0
    ).to(DOT_DTYPE)
    dw1 = tl.zeros([BLOCK_H, BLOCK_C], dtype=tl.float32)
    dw2_t = tl.zeros([BLOCK_H, BLOCK_C], dtype=tl.float32)  # dW2[:, chunk] transposed
    db1 = tl.zeros([BLOCK_H], dtype=tl.float32)

    for tile in range(split, tl.cdiv(M, BLOCK_M), num_splits):
        rows, row_mask, mask, offsets = row_tile(tile, M, C, cols, col_mask, BLOCK_M)
        _, x_hat = saved_layer_norm_tile(x_ptr, mean_ptr, rstd_ptr, rows, row_mask, offsets, mask, "")
        normed = _normed(x_hat, norm_weight, norm_bias, x_ptr, DOT_DTYPE)
        pre = tl.dot(normed, tl.trans(w1), input_precision=PRECISION) + b1[None, :]
        act, act_grad = _gelu_with_grad(pre)
        # dbranch only now: the compiler computes it in both dot-operand layouts, whole rows per warp, and before
        # FC1's dot these registers were live through it (at C = 384 that spilled).
        dy = tl.load(dy_ptr + offsets, mask=mask, other=0.0).to(tl.float32)  # zero on padded rows
        dbranch = _scale_rows(dy, scale_ptr, rows, row_mask, N, HAS_SCALE)
        dbranch = dbranch.to(x_ptr.dtype.element_ty).to(DOT_DTYPE)
        dpre = tl.dot(dbranch, w2, input_precision=PRECISION) * act_grad
        db1 += tl.sum(dpre, axis=0)
        dpre = dpre.to(x_ptr.dtype.element_ty).to(DOT_DTYPE)
        act = act.to(x_ptr.dtype.element_ty).to(DOT_DTYPE)
        dw1 = tl.dot(tl.trans(dpre), normed, dw1, input_precision=PRECISION)
        dw2_t = tl.dot(tl.trans(act), dbranch, dw2_t, input_precision=PRECISION)

    partial = partial_ptr + split * (2 * H * C + H)
    tl.store(partial + hidden[:, None] * C + cols[None, :], dw1, mask=w_mask)
    tl.store(partial + H * C + cols[None, :] * H + hidden[:, None], dw2_t, mask=w_mask)
    tl.store(partial + 2 * H * C + hidden, db1, mask=h_mask)


_PARAM_NAMES = ("norm_weight", "norm_bias", "fc1_weight", "fc1_bias", "fc2_weight", "fc2_bias")


def _check(x, norm_weight, norm_bias, fc1_weight, fc1_bias, fc2_weight, fc2_bias, branch_scale) -> None:
    """Raises ValueError for inconsistent shapes, UnsupportedInput for inputs the kernels do not handle."""
    params = (norm_weight, norm_bias, fc1_weight, fc1_bias, fc2_weight, fc2_bias)
    width = x.shape[-1] if x.dim() else 0
    hidden = fc1_weight.shape[0] if fc1_weight.dim() == 2 else -1
    shapes_ok = (
        x.dim() >= 1
        and tuple(norm_weight.shape) == (width,)
        and tuple(norm_bias.shape) == (width,)
        and tuple(fc1_weight.shape) == (hidden, width)
        and tuple(fc1_bias.shape) == (hidden,)
        and tuple(fc2_weight.shape) == (width, hidden)
        and tuple(fc2_bias.shape) == (width,)
    )
    if not shapes_ok:
        raise ValueError(
            "side_ffn: expected x [..., C], norm_weight/norm_bias [C], fc1_weight [H, C], fc1_bias [H], "
            "fc2_weight [C, H], fc2_bias [C]; got "
            + ", ".join(f"{name} {tuple(t.shape)}" for name, t in zip(("x", *_PARAM_NAMES), (x, *params)))
        )
    if branch_scale is not None:
        if x.dim() != 3:
            raise ValueError(f"side_ffn: branch_scale needs x as [B, N, C], got x {tuple(x.shape)}")
        if branch_scale.numel() != x.shape[0] or branch_scale.dim() not in (1, 3):
            raise ValueError(
                f"side_ffn: branch_scale must be [B] or [B, 1, 1] with B = {x.shape[0]}, "
                f"got {tuple(branch_scale.shape)}"
            )
    check_tensors("side_ffn", x, *params)
    if width > MAX_WIDTH:
        raise UnsupportedInput(f"side_ffn: C = {width} is wider than the kernel's limit of {MAX_WIDTH}")
    if branch_scale is not None:
        if branch_scale.device != x.device:
            raise UnsupportedInput(f"side_ffn: branch_scale on {branch_scale.device}, x on {x.device}")
        if not branch_scale.is_floating_point():
            raise UnsupportedInput(f"side_ffn: branch_scale must be floating point, got {branch_scale.dtype}")


def _launch_meta(x: torch.Tensor, branch_scale: torch.Tensor | None) -> dict:
    """Arguments every kernel here shares: branch scale, rows per sample, tuning key, dot dtype and precision,
    BLOCK_C."""
    width = x.shape[-1]
    has_scale = branch_scale is not None
    return {
        # Rounded to x's dtype first, as the reference multiplies in x's dtype.
        "scale": branch_scale.reshape(-1).to(x.dtype).float() if has_scale else x,
        "N": x.shape[1] if x.dim() == 3 else 1,
        "ROWS_BUCKET": triton.next_power_of_2(x.numel() // width),
        "HAS_SCALE": has_scale,
        "DOT_DTYPE": dot_dtype(x.dtype),
        "PRECISION": dot_precision(x.dtype),
        "BLOCK_C": max(16, triton.next_power_of_2(width)),  # tl.dot needs every dim >= 16
    }


def side_ffn_fwd(
    x, norm_weight, norm_bias, fc1_weight, fc1_bias, fc2_weight, fc2_bias, eps=1e-6, branch_scale=None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Forward launcher; arguments as ``side_ffn``. Returns (y [..., C], mean [M] fp32, rstd [M] fp32)."""
    _check(x, norm_weight, norm_bias, fc1_weight, fc1_bias, fc2_weight, fc2_bias, branch_scale)
    width, hidden = x.shape[-1], fc1_weight.shape[0]
    x2d = x.view(-1, width)
    rows = x2d.shape[0]
    y = torch.empty_like(x)
    mean = torch.empty(rows, device=x.device, dtype=torch.float32)
    rstd = torch.empty(rows, device=x.device, dtype=torch.float32)
    if rows == 0:
        return y, mean, rstd
    meta = _launch_meta(x, branch_scale)
    scale = meta.pop("scale")
    _side_ffn_fwd_kernel[lambda config: (triton.cdiv(rows, config["BLOCK_M"]),)](
        x2d, y, norm_weight, norm_bias, fc1_weight, fc1_bias, fc2_weight, fc2_bias, scale, mean, rstd,
        rows, width, hidden, eps=eps, **meta,
    )  # fmt: skip
    return y, mean, rstd


def side_ffn_bwd(
    dy, x, norm_weight, norm_bias, fc1_weight, fc1_bias, fc2_weight, mean, rstd, branch_scale=None,
    needs: tuple[bool, ...] = (True,) * 7,
) -> tuple[torch.Tensor | None, ...]:  # fmt: skip
    """Backward launcher. dy, x: [..., C]; weights as in ``side_ffn``; mean, rstd: [M] fp32 from ``side_ffn_fwd``.

    Returns (dx, dnorm_weight, dnorm_bias, dfc1_weight, dfc1_bias, dfc2_weight, dfc2_bias) in x's dtype, None where
    ``needs`` (one bool per gradient, as ``ctx.needs_input_grad``) is False. The dx kernel (dx, the LayerNorm affine,
    FC2 bias) and the dw kernel (FC1 weight and bias, FC2 weight) run only if one of their gradients is needed.
    """
    width, hidden = x.shape[-1], fc1_weight.shape[0]
    dy = dy.contiguous()
    x2d = x.view(-1, width)
    rows = x2d.shape[0]
    grads = [torch.empty_like(x) if needs[0] else None] + [None] * 6
    params = (norm_weight, norm_bias, fc1_weight, fc1_bias, fc2_weight, norm_bias)  # shapes of the weight grads
    if rows == 0:
        return tuple(grads[:1] + [torch.zeros_like(t) if need else None for t, need in zip(params, needs[1:])])
    meta = _launch_meta(x, branch_scale)
    scale = meta.pop("scale")
    num_sms = sm_count(x.device)
    # What both backward kernels read, in their argument order.
    inputs = (x2d, dy.view(-1, width), norm_weight, norm_bias, fc1_weight, fc1_bias, fc2_weight, scale, mean, rstd)

    if needs[0] or needs[1] or needs[2] or needs[6]:
        num_programs = min(triton.cdiv(rows, 32), 4 * num_sms)
        partial = torch.empty(3, num_programs, width, device=x.device, dtype=torch.float32)
        _side_ffn_bwd_dx_kernel[(num_programs,)](
            *inputs, x2d if grads[0] is None else grads[0], partial, rows, width, hidden, DX=needs[0], **meta
        )
        grads[1], grads[2], grads[6] = partial.sum(1).to(x.dtype)
    if any(needs[3:6]):
        # Row splits so that (hidden chunks x splits) fills the GPU about four times over, within the partials' cap.
        num_splits = triton.cdiv(4 * num_sms, triton.cdiv(hidden, 32))
        num_splits = max(1, min(num_splits, triton.cdiv(rows, 64), _MAX_PARTIAL_ELEMENTS // (2 * hidden * width)))
        partial = torch.empty(num_splits, (2 * width + 1) * hidden, device=x.device, dtype=torch.float32)
        _side_ffn_bwd_dw_kernel[lambda config: (triton.cdiv(hidden, config["BLOCK_H"]), num_splits)](
            *inputs, partial, rows, width, hidden, **meta
        )
        dfc1_weight, dfc2_weight, dfc1_bias = partial.sum(0).to(x.dtype).split([hidden * width, hidden * width, hidden])
        grads[3:6] = dfc1_weight.view(hidden, width), dfc1_bias, dfc2_weight.view(width, hidden)
    return tuple(grad if need else None for grad, need in zip(grads, needs))


class SideFFNFunction(torch.autograd.Function):
    """Autograd wrapper: saves x, the weights and the fp32 row statistics; the backward recomputes the rest."""

    @staticmethod
    def forward(ctx, x, norm_weight, norm_bias, fc1_weight, fc1_bias, fc2_weight, fc2_bias, eps, branch_scale):
        params = (norm_weight, norm_bias, fc1_weight, fc1_bias, fc2_weight, fc2_bias)
        y, mean, rstd = side_ffn_fwd(x, *params, eps, branch_scale)
        ctx.save_for_backward(x, norm_weight, norm_bias, fc1_weight, fc1_bias, fc2_weight, mean, rstd, branch_scale)
        return y

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        return (*side_ffn_bwd(dy, *ctx.saved_tensors, needs=ctx.needs_input_grad[:7]), None, None)


def side_ffn(
    x: torch.Tensor, norm_weight: torch.Tensor, norm_bias: torch.Tensor,
    fc1_weight: torch.Tensor, fc1_bias: torch.Tensor, fc2_weight: torch.Tensor, fc2_bias: torch.Tensor,
    eps: float = 1e-6, branch_scale: torch.Tensor | None = None,
) -> torch.Tensor:  # fmt: skip
    """Fused ``x + branch_scale[b] * FC2(GELU(FC1(LayerNorm(x))))`` with exact (erf) GELU (HST.md §3, step 3).

    x: [B, N, C] (or [..., C] without ``branch_scale``), C <= ``MAX_WIDTH``; norm_weight, norm_bias: [C];
    fc1_weight: [H, C]; fc1_bias: [H]; fc2_weight: [C, H]; fc2_bias: [C] (H = 4C in HST, any H works);
    branch_scale: optional [B] (or [B, 1, 1]) per-sample drop-path scale, applied to the whole branch.
    x and the weights: one dtype of float32, float16, bfloat16, contiguous, one device; LayerNorm statistics,
    matmul accumulation and weight-gradient sums in fp32. Returns [..., C] in x's dtype. Differentiable in x and
    all weights; ``branch_scale`` gets no gradient (it must not require one). Same signature and result as
    ``reference.side_ffn_reference``.

    The [..., H] hidden activation never reaches global memory, in the forward or the backward.
    Raises ``ValueError`` for inconsistent shapes and ``UnsupportedInput`` (a ``ValueError``) for inputs the kernels
    do not handle (dtype, layout, device, width, a branch_scale that requires grad).
    """
    if branch_scale is not None and branch_scale.requires_grad and torch.is_grad_enabled():
        # Checked here: inside SideFFNFunction.forward grad mode is off.
        raise UnsupportedInput("side_ffn: branch_scale is a drop-path mask and gets no gradient here")
    params = (norm_weight, norm_bias, fc1_weight, fc1_bias, fc2_weight, fc2_bias)
    return SideFFNFunction.apply(x, *params, eps, branch_scale)
