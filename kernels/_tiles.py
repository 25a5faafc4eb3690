"""Row-tile pieces shared by the kernels that LayerNorm whole rows in registers (``layer_norm``, ``side_ffn``,
``side_attention``).

``@triton.jit`` helpers, called from inside kernels (the compiler inlines them): no launchers, no op here.
Every tile is ``[BLOCK_M, BLOCK_C]`` of a row-major ``[M, C]`` matrix with whole rows (C <= BLOCK_C).
"""

from __future__ import annotations

import triton
import triton.language as tl

__all__ = ["layer_norm_tile", "load_affine", "row_tile", "saved_layer_norm_tile"]


@triton.jit
def row_tile(tile, M, C, cols, col_mask, BLOCK_M: tl.constexpr):
    """Rows ``tile * BLOCK_M + [0, BLOCK_M)``, columns ``cols`` [BLOCK_C] (``col_mask = cols < C``).

    Returns (rows [BLOCK_M] int64, row_mask [BLOCK_M], mask [BLOCK_M, BLOCK_C], offsets [BLOCK_M, BLOCK_C] int64).
    """
    rows = tile * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)  # int64: rows * C may pass 2**31
    row_mask = rows < M
    mask = row_mask[:, None] & col_mask[None, :]
    offsets = rows[:, None] * C + cols[None, :]
    return rows, row_mask, mask, offsets


@triton.jit
def load_affine(weight_ptr, bias_ptr, cols, col_mask):
    """A LayerNorm's weight and bias [C] as fp32 [BLOCK_C] vectors, 0 in padded columns."""
    weight = tl.load(weight_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)
    bias = tl.load(bias_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)
    return weight, bias


@triton.jit
def layer_norm_tile(x, mask, C, eps):
    """Normalizes the rows of an fp32 tile ``x`` [BLOCK_M, BLOCK_C] (0 where masked), no affine.

    Returns (mean [BLOCK_M], rstd [BLOCK_M] = 1 / sqrt(var + eps), x_hat [BLOCK_M, BLOCK_C], 0 where masked).
    """
    mean = tl.sum(x, axis=1) / C
    centered = tl.where(mask, x - mean[:, None], 0.0)
    rstd = tl.rsqrt(tl.sum(centered * centered, axis=1) / C + eps)
    return mean, rstd, centered * rstd[:, None]


@triton.jit
def saved_layer_norm_tile(x_ptr, mean_ptr, rstd_ptr, rows, row_mask, offsets, mask, EVICTION: tl.constexpr):
    """The backward's ``layer_norm_tile``: x_hat recomputed from the fp32 mean and rstd [M] the forward saved, x read
    with ``tl.load``'s eviction policy EVICTION ("" for the default; a second read of the same x with another policy
    is not merged into the first by the compiler). No default value: Triton 3.6 passes a jit helper's constexpr
    defaults on as plain Python values, which ``tl.load`` rejects.

    Returns (rstd [BLOCK_M], x_hat [BLOCK_M, BLOCK_C], 0 where masked).
    """
    x = tl.load(x_ptr + offsets, mask=mask, other=0.0, eviction_policy=EVICTION).to(tl.float32)
    mean = tl.load(mean_ptr + rows, mask=row_mask, other=0.0)
    rstd = tl.load(rstd_ptr + rows, mask=row_mask, other=0.0)
    return rstd, tl.where(mask, (x - mean[:, None]) * rstd[:, None], 0.0)
