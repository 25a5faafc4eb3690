"""LayerNorm over the last dim with a trainable affine, forward and backward in Triton.

HST normalizes everywhere: the ViT blocks' LN1/LN2 (whose affine is trained, "LN-tuning",
HST.md §1), every side block and stage (§2-3). Rows are independent, so the forward is one
pass over a ``[BLOCK_M, BLOCK_C]`` tile per program that keeps the per-row mean and 1/std
(fp32) for the backward. The backward is a persistent grid: each program walks a strided set
of row tiles, writes ``dx`` and accumulates its own fp32 partial ``dweight``/``dbias``, and the
``[num_programs, C]`` partials are summed once at the end (no global atomics, so the result is
deterministic), as in Liger-Kernel's ``ops/layer_norm.py``. It writes ``dx`` and the partials only
where autograd needs them (``ctx.needs_input_grad``).

Reference: ``hst_fast.kernels.reference.layer_norm_reference``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._compat import UnsupportedInput, check_tensors, sm_count
from ._tiles import layer_norm_tile, load_affine, row_tile, saved_layer_norm_tile

__all__ = ["MAX_WIDTH", "LayerNormFunction", "layer_norm", "layer_norm_bwd", "layer_norm_fwd"]

# Widest row a program holds in registers at once (one row per program there).
MAX_WIDTH = 8192


@triton.jit
def _layer_norm_fwd_kernel(
    x_ptr,  # [M, C] input, row-major
    y_ptr,  # [M, C] output, x's dtype
    weight_ptr,  # [C]
    bias_ptr,  # [C]
    mean_ptr,  # [M] fp32, saved for the backward
    rstd_ptr,  # [M] fp32, 1 / sqrt(var + eps), saved for the backward
    M,
    C,
    eps,
    BLOCK_M: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    cols = tl.arange(0, BLOCK_C)
    col_mask = cols < C
    rows, row_mask, mask, offsets = row_tile(tl.program_id(0), M, C, cols, col_mask, BLOCK_M)

    x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    mean, rstd, x_hat = layer_norm_tile(x, mask, C, eps)
    weight, bias = load_affine(weight_ptr, bias_ptr, cols, col_mask)
    y = x_hat * weight[None, :] + bias[None, :]

    tl.store(y_ptr + offsets, y.to(y_ptr.dtype.element_ty), mask=mask)
    tl.store(mean_ptr + rows, mean, mask=row_mask)
    tl.store(rstd_ptr + rows, rstd, mask=row_mask)


@triton.jit
def _layer_norm_bwd_kernel(
    x_ptr,  # [M, C] forward input
    dy_ptr,  # [M, C] gradient of the output
    weight_ptr,  # [C]
    mean_ptr,  # [M] fp32
    rstd_ptr,  # [M] fp32
    dx_ptr,  # [M, C] gradient of x, x's dtype; written only if DX
    dweight_partial_ptr,  # [num_programs, C] fp32, this program's sum over its rows; written only if DAFFINE
    dbias_partial_ptr,  # [num_programs, C] fp32; written only if DAFFINE
    M,
    C,
    DX: tl.constexpr,
    DAFFINE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    pid = tl.program_id(0)
    num_programs = tl.num_programs(0)
    cols = tl.arange(0, BLOCK_C)
    col_mask = cols < C
    weight = tl.load(weight_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)
    dweight = tl.zeros([BLOCK_C], dtype=tl.float32)
    dbias = tl.zeros([BLOCK_C], dtype=tl.float32)

    for tile in range(pid, tl.cdiv(M, BLOCK_M), num_programs):
        rows, row_mask, mask, offsets = row_tile(tile, M, C, cols, col_mask, BLOCK_M)
        rstd, x_hat = saved_layer_norm_tile(x_ptr, mean_ptr, rstd_ptr, rows, row_mask, offsets, mask, "")
        dy = tl.load(dy_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        if DX:
            weighted_dy = dy * weight[None, :]
            # dx = rstd * (w*dy - mean(w*dy) - x_hat * mean(w*dy * x_hat)); padded columns are zero in both sums.
            mean_wdy = tl.sum(weighted_dy, axis=1) / C
            mean_wdy_xhat = tl.sum(weighted_dy * x_hat, axis=1) / C
            dx = (weighted_dy - mean_wdy[:, None] - x_hat * mean_wdy_xhat[:, None]) * rstd[:, None]
            tl.store(dx_ptr + offsets, dx.to(dx_ptr.dtype.element_ty), mask=mask)
        if DAFFINE:
            dweight += tl.sum(dy * x_hat, axis=0)
            dbias += tl.sum(dy, axis=0)

    if DAFFINE:
        tl.store(dweight_partial_ptr + pid * C + cols, dweight, mask=col_mask)
        tl.store(dbias_partial_ptr + pid * C + cols, dbias, mask=col_mask)


def _block_sizes(width: int) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_C, num_warps): about 4096 elements per tile, whole rows only."""
    block_c = max(16, triton.next_power_of_2(width))
    block_m = max(1, min(64, 4096 // block_c))
    num_warps = min(16, max(4, block_m * block_c // 1024))
    return block_m, block_c, num_warps


def _check(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> None:
    if x.dim() < 1:
        raise ValueError("layer_norm: x must have at least one dim [..., C]")
    width = x.shape[-1]
    if tuple(weight.shape) != (width,) or tuple(bias.shape) != (width,):
        raise ValueError(
            f"layer_norm: weight {tuple(weight.shape)} and bias {tuple(bias.shape)} must both be [C] = [{width}] "
            f"for x of shape {tuple(x.shape)}"
        )
    check_tensors("layer_norm", x, weight, bias)
    if width > MAX_WIDTH:
        raise UnsupportedInput(f"layer_norm: C = {width} is wider than the kernel's limit of {MAX_WIDTH}")


def layer_norm_fwd(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Forward launcher. x: [..., C]; weight, bias: [C], same dtype and device, contiguous.

    Returns (y [..., C] in x's dtype, mean [M] fp32, rstd [M] fp32) with M = x.numel() // C.
    """
    _check(x, weight, bias)
    width = x.shape[-1]
    x2d = x.view(-1, width)
    rows = x2d.shape[0]
    y = torch.empty_like(x)
    mean = torch.empty(rows, device=x.device, dtype=torch.float32)
    rstd = torch.empty(rows, device=x.device, dtype=torch.float32)
    if rows == 0:
        return y, mean, rstd
    block_m, block_c, num_warps = _block_sizes(width)
    _layer_norm_fwd_kernel[(triton.cdiv(rows, block_m),)](
        x2d, y, weight, bias, mean, rstd, rows, width, eps, BLOCK_M=block_m, BLOCK_C=block_c, num_warps=num_warps
    )
    return y, mean, rstd


def layer_norm_bwd(
    dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, mean: torch.Tensor, rstd: torch.Tensor,
    dx: bool = True, daffine: bool = True,
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:  # fmt: skip
    """Backward launcher. dy, x: [..., C]; weight: [C]; mean, rstd: [M] fp32 from ``layer_norm_fwd``.

    Returns (dx [..., C] in x's dtype, dweight [C], dbias [C] in weight's dtype); dx is None unless ``dx``,
    dweight and dbias are None unless ``daffine`` (the kernel skips that work).
    """
    width = x.shape[-1]
    dy = dy.contiguous()
    x2d = x.view(-1, width)
    rows = x2d.shape[0]
    grad_x = torch.empty_like(x) if dx else None
    if rows == 0:
        return (grad_x, torch.zeros_like(weight), torch.zeros_like(weight)) if daffine else (grad_x, None, None)
    block_m, block_c, num_warps = _block_sizes(width)
    num_programs = min(triton.cdiv(rows, block_m), 4 * sm_count(x.device))
    partials = torch.empty(2, num_programs, width, device=x.device, dtype=torch.float32) if daffine else None
    _layer_norm_bwd_kernel[(num_programs,)](
        x2d, dy.view(-1, width), weight, mean, rstd,
        x2d if grad_x is None else grad_x,  # unused pointers when the flags are off
        *((x2d, x2d) if partials is None else partials),
        rows, width, DX=dx, DAFFINE=daffine, BLOCK_M=block_m, BLOCK_C=block_c, num_warps=num_warps,
    )  # fmt: skip
    if not daffine:
        return grad_x, None, None
    dweight, dbias = partials.sum(1).to(weight.dtype)
    return grad_x, dweight, dbias


class LayerNormFunction(torch.autograd.Function):
    """Autograd wrapper: saves x, weight and the fp32 row statistics; recomputes x_hat in the backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
        y, mean, rstd = layer_norm_fwd(x, weight, bias, eps)
        ctx.save_for_backward(x, weight, mean, rstd)
        return y

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        needs_x, needs_weight, needs_bias, _ = ctx.needs_input_grad
        dx, dweight, dbias = layer_norm_bwd(dy, *ctx.saved_tensors, dx=needs_x, daffine=needs_weight or needs_bias)
        return dx, (dweight if needs_weight else None), (dbias if needs_bias else None), None


def layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    """Fused LayerNorm over the last dim: ``(x - mean) / sqrt(var + eps) * weight + bias``.

    x: [..., C] (any leading dims, C <= ``MAX_WIDTH``); weight, bias: [C]. All float32, float16 or bfloat16 (one
    dtype), contiguous, on one device; statistics and gradient sums in fp32. Returns [..., C] in x's dtype.
    Differentiable in x, weight and bias.

    Raises ``ValueError`` for mismatched shapes and ``UnsupportedInput`` (a ``ValueError``) for inputs the kernel
    does not handle (dtype, layout, device, width).
    """
    return LayerNormFunction.apply(x, weight, bias, eps)
