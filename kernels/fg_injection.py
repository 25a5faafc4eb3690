"""Fine-grained (FG) injection: ``x + flatten(bilinear_resize(bridged, out_hw))`` (HST.md §2, §3 step 2).

``bridged`` is the stage's bridge Linear(D -> C) already applied to the ViT patches at ViT resolution (the model
computes T_Bridge(P) once per block; bilinear weights sum to one, so bridging before resizing is exact and moves
only C/D of the bytes through the resize). The kernels do the resize + residual add only: each forward program
takes a tile of output tokens, gathers the 4 bilinear neighbours of every token from ``bridged`` (channels-last,
any strides: each neighbour is a C-vector) and writes ``x + sum_k w_k * bridged[neighbour_k]``; the
full-resolution FG features never exist in memory.

Backward: ``grad_x = grad_out``; ``grad_bridged`` is the adjoint of the resize, computed only if ``bridged``
needs a gradient, in one of two ways:

- default, scatter: each output token adds its gradient times its 4 weights into a zeroed fp32 ``[B, Hv, Wv, C]``
  buffer with fp32 atomics. An input pixel receives a few dozen adds at most (4x upsampling), spread over the
  map, so there is no hot spot; but the order of the adds varies from run to run.
- under ``torch.use_deterministic_algorithms(True)``, gather: each program owns a tile of input pixels and sums,
  in a fixed order, the gradients of the output tokens whose bilinear taps touch them (a window of output rows
  and columns per pixel, with the forward's own weights, zero outside the taps), then writes each element once, in
  bridged's dtype. Equal to the scatter within fp32 rounding and bitwise identical run to run. It reads each output
  gradient about 4 times (from L1/L2) and scans a window of ~(2.5 in/out + 4)^2 candidates per pixel, so the
  scatter stays the default until a GPU benchmark shows the gather as fast.

Source indices follow PyTorch's ``F.interpolate(mode='bilinear', align_corners=False)`` exactly:
``src = max((dst + 0.5) * in / out - 0.5, 0)``, ``i0 = floor(src)``, ``i1 = min(i0 + 1, in - 1)``,
``lambda1 = src - i0``, computed in fp32 as PyTorch does for fp32/fp16/bf16 inputs.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._compat import INTERPRET, UnsupportedInput, check_tensors

__all__ = ["FGInjectionFunction", "fg_injection", "fg_injection_bwd", "fg_injection_fwd"]

_MAX_BLOCK_C = 128


@triton.jit
def _source_taps(dst, scale, in_size):
    """1-d bilinear taps of output indices ``dst`` (int32, any shape): (i0, i1, lambda0, lambda1), as PyTorch's
    align_corners=False. ``scale`` = in / out (fp32)."""
    src = tl.maximum((dst.to(tl.float32) + 0.5) * scale - 0.5, 0.0)
    # src >= 0, so truncation is floor; src < in - 0.5 always, the clamp only guards rounding.
    i0 = tl.minimum(src.to(tl.int32), in_size - 1)
    lambda1 = src - i0.to(tl.float32)
    return i0, tl.where(i0 < in_size - 1, i0 + 1, i0), 1.0 - lambda1, lambda1


@triton.jit
def _token_tile(out_h, out_w, C, BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr):
    """This program's tile: output tokens ``program_id(0) * BLOCK_T + [0, BLOCK_T)``, channels
    ``program_id(1) * BLOCK_C + [0, BLOCK_C)``, of batch element ``program_id(2)``.

    Returns (batch index int64, channels [BLOCK_C], offsets [BLOCK_T, BLOCK_C] into the contiguous
    [B, out_h * out_w, C] tokens, their mask, and the tokens' output rows and columns [BLOCK_T])."""
    pid_b = tl.program_id(2).to(tl.int64)
    offs_t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask = (offs_t < out_h * out_w)[:, None] & (offs_c < C)[None, :]
    tok = pid_b * out_h * out_w * C + offs_t[:, None] * C + offs_c[None, :]
    return pid_b, offs_c, tok, mask, offs_t // out_w, offs_t % out_w


@triton.jit
def _fg_injection_fwd_kernel(
    X,  # [B, out_h * out_w, C] side tokens, contiguous
    BR,  # [B, in_h, in_w, C] bridged ViT patches, (b, y, x, c) at b*stride_b + y*stride_h + x*stride_w + c*stride_c
    Y,  # [B, out_h * out_w, C] output, x's dtype
    C, in_h, in_w, out_h, out_w,
    scale_h, scale_w,  # in_h / out_h, in_w / out_w (fp32)
    stride_b, stride_h, stride_w, stride_c,
    BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    pid_b, offs_c, tok, mask, oy, ox = _token_tile(out_h, out_w, C, BLOCK_T, BLOCK_C)
    y0, y1, wy0, wy1 = _source_taps(oy, scale_h, in_h)
    x0, x1, wx0, wx1 = _source_taps(ox, scale_w, in_w)
    br = BR + pid_b * stride_b + offs_c[None, :] * stride_c
    row0 = br + (y0 * stride_h)[:, None]
    row1 = br + (y1 * stride_h)[:, None]
    col0 = (x0 * stride_w)[:, None]
    col1 = (x1 * stride_w)[:, None]
    acc = (wy0 * wx0)[:, None] * tl.load(row0 + col0, mask=mask, other=0.0).to(tl.float32)
    acc += (wy0 * wx1)[:, None] * tl.load(row0 + col1, mask=mask, other=0.0).to(tl.float32)
    acc += (wy1 * wx0)[:, None] * tl.load(row1 + col0, mask=mask, other=0.0).to(tl.float32)
    acc += (wy1 * wx1)[:, None] * tl.load(row1 + col1, mask=mask, other=0.0).to(tl.float32)

    x = tl.load(X + tok, mask=mask, other=0.0).to(tl.float32)
    tl.store(Y + tok, (x + acc).to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _fg_injection_bwd_scatter_kernel(
    DY,  # [B, out_h * out_w, C] upstream gradient, contiguous
    DBR,  # [B, in_h, in_w, C] fp32, contiguous, zeroed: gradient of bridged (atomics)
    C, in_h, in_w, out_h, out_w, scale_h, scale_w,  # as in the forward kernel
    BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    pid_b, offs_c, tok, mask, oy, ox = _token_tile(out_h, out_w, C, BLOCK_T, BLOCK_C)
    y0, y1, wy0, wy1 = _source_taps(oy, scale_h, in_h)
    x0, x1, wx0, wx1 = _source_taps(ox, scale_w, in_w)
    dbr = DBR + pid_b * in_h * in_w * C + offs_c[None, :]
    dy = tl.load(DY + tok, mask=mask, other=0.0).to(tl.float32)
    tl.atomic_add(dbr + ((y0 * in_w + x0) * C)[:, None], (wy0 * wx0)[:, None] * dy, mask=mask, sem="relaxed")
    tl.atomic_add(dbr + ((y0 * in_w + x1) * C)[:, None], (wy0 * wx1)[:, None] * dy, mask=mask, sem="relaxed")
    tl.atomic_add(dbr + ((y1 * in_w + x0) * C)[:, None], (wy1 * wx0)[:, None] * dy, mask=mask, sem="relaxed")
    tl.atomic_add(dbr + ((y1 * in_w + x1) * C)[:, None], (wy1 * wx1)[:, None] * dy, mask=mask, sem="relaxed")


@triton.jit
def _adjoint_weights(i, first, k, scale, in_size, out_size):
    """Output index ``first + k`` along one axis and its bilinear weight on input index ``i`` (0 if its taps miss i
    or it is out of range; both taps' weights where they coincide at the border)."""
    o = first + k
    i0, i1, lambda0, lambda1 = _source_taps(o, scale, in_size)
    weight = tl.where(i0 == i, lambda0, 0.0) + tl.where(i1 == i, lambda1, 0.0)
    return o, tl.where(o < out_size, weight, 0.0)


@triton.jit
def _first_output(i, scale):
    """A lower bound on the first output index whose taps touch input index ``i``: src(o) >= i - 1 from
    o >= (i - 0.5) / scale - 0.5, one lower for fp32 rounding, clamped at 0."""
    return tl.maximum(tl.ceil((i.to(tl.float32) - 0.5) / scale - 0.5).to(tl.int32) - 1, 0)


@triton.jit
def _fg_injection_bwd_gather_kernel(
    DY,  # [B, out_h * out_w, C] upstream gradient, contiguous
    DBR,  # [B, in_h * in_w, C] gradient of bridged, bridged's dtype, contiguous: every element written once
    C, in_h, in_w, out_h, out_w, scale_h, scale_w,  # as in the forward kernel
    window_h, window_w,  # output rows / columns scanned per input pixel, from its _first_output on
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    pid_b = tl.program_id(2).to(tl.int64)
    offs_p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)  # input pixels, row-major over [in_h, in_w]
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_p = offs_p < in_h * in_w
    mask_c = offs_c < C
    iy = offs_p // in_w
    ix = offs_p % in_w
    first_y = _first_output(iy, scale_h)
    first_x = _first_output(ix, scale_w)
    dy = DY + pid_b * out_h * out_w * C + offs_c[None, :]

    acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
    for ky in range(window_h):
        oy, wy = _adjoint_weights(iy, first_y, ky, scale_h, in_h, out_h)
        for kx in range(window_w):
            ox, wx = _adjoint_weights(ix, first_x, kx, scale_w, in_w, out_w)
            weight = wy * wx
            mask = ((weight != 0.0) & mask_p)[:, None] & mask_c[None, :]
            grad = tl.load(dy + ((oy * out_w + ox) * C)[:, None], mask=mask, other=0.0).to(tl.float32)
            acc += weight[:, None] * grad

    dbr = DBR + pid_b * in_h * in_w * C + offs_p[:, None] * C + offs_c[None, :]
    tl.store(dbr, acc.to(DBR.dtype.element_ty), mask=mask_p[:, None] & mask_c[None, :])


def _block_sizes(num_tokens: int, width: int) -> tuple[int, int, int]:
    """(BLOCK_T, BLOCK_C, num_warps): about 4K elements per program, channel tiles of at most 128."""
    block_c = min(triton.next_power_of_2(width), _MAX_BLOCK_C)
    block_t = max(16, min(4096 // block_c, triton.next_power_of_2(num_tokens)))
    if INTERPRET:  # the interpreter runs one numpy op per block: fewer, larger programs are faster
        block_t = max(block_t, min(256, triton.next_power_of_2(num_tokens)))
    return block_t, block_c, 4


def _gather_window(in_size: int, out_size: int) -> int:
    """How many output indices from ``_first_output`` on cover all whose taps give an input index a nonzero weight:
    one range of at most 2.5 out/in + 1 (src in [i - 1, i + 1): 2 out/in + 1; up to 2.5 out/in + 1 next to the
    clamp at 0), after up to 2 below it. An exhaustive fp32 emulation (in < 70, out < 300) needs int(2.5 out/in) + 2
    at most; +4 leaves room for the GPU's division rounding."""
    return int(2.5 * out_size / in_size) + 4


def _check_inputs(x, bridged, out_hw) -> tuple[int, int]:
    """Validates shapes (ValueError) and dtype/device/layout (UnsupportedInput); returns out_hw."""
    if x.dim() != 3 or bridged.dim() != 4:
        raise ValueError(
            f"fg_injection: expected x [B, Hs*Ws, C] and bridged [B, Hv, Wv, C], got {tuple(x.shape)} and "
            f"{tuple(bridged.shape)}"
        )
    out_h, out_w = (int(s) for s in out_hw)
    batch, num_tokens, width = x.shape
    if bridged.shape[0] != batch or bridged.shape[3] != width:
        raise ValueError(
            f"fg_injection: bridged {tuple(bridged.shape)} does not match x {tuple(x.shape)} "
            f"(expected [{batch}, Hv, Wv, {width}])"
        )
    if out_h <= 0 or out_w <= 0 or out_h * out_w != num_tokens:
        raise ValueError(f"fg_injection: out_hw {(out_h, out_w)} does not match the {num_tokens} tokens of x")
    if bridged.shape[1] == 0 or bridged.shape[2] == 0:
        raise ValueError(f"fg_injection: empty patch grid {tuple(bridged.shape)}")
    check_tensors("fg_injection", x)  # bridged may have any strides (the kernel takes them)
    if bridged.dtype != x.dtype or bridged.device != x.device:
        raise UnsupportedInput(
            f"fg_injection: bridged is {bridged.dtype} on {bridged.device}, x is {x.dtype} on {x.device}"
        )
    return out_h, out_w


def _launch_args(batch: int, width: int, in_hw, out_hw):
    """The token-tile kernels' grid, scalar arguments and block sizes."""
    (in_h, in_w), (out_h, out_w) = in_hw, out_hw
    block_t, block_c, num_warps = _block_sizes(out_h * out_w, width)
    grid = (triton.cdiv(out_h * out_w, block_t), triton.cdiv(width, block_c), batch)
    scalars = (width, in_h, in_w, out_h, out_w, in_h / out_h, in_w / out_w)
    return grid, scalars, {"BLOCK_T": block_t, "BLOCK_C": block_c, "num_warps": num_warps}


def fg_injection_fwd(x: torch.Tensor, bridged: torch.Tensor, out_hw) -> torch.Tensor:
    """Forward launcher. x: [B, Hs*Ws, C]; bridged: [B, Hv, Wv, C], any strides. Returns [B, Hs*Ws, C], x's dtype."""
    out_h, out_w = _check_inputs(x, bridged, out_hw)
    y = torch.empty_like(x)
    if x.numel() == 0:
        return y
    grid, scalars, meta = _launch_args(x.shape[0], x.shape[2], bridged.shape[1:3], (out_h, out_w))
    _fg_injection_fwd_kernel[grid](x, bridged, y, *scalars, *bridged.stride(), **meta)
    return y


def fg_injection_bwd(grad_out: torch.Tensor, bridged_shape, dtype: torch.dtype, out_hw) -> torch.Tensor:
    """The resize's adjoint. grad_out: [B, Hs*Ws, C]; bridged_shape: (B, Hv, Wv, C). Returns grad_bridged
    [B, Hv, Wv, C] in ``dtype``, contiguous: atomics, or the gather under deterministic algorithms."""
    grad_out = grad_out.contiguous()
    batch, in_h, in_w, width = bridged_shape
    out_h, out_w = out_hw
    if torch.are_deterministic_algorithms_enabled():
        grad_bridged = torch.empty(bridged_shape, device=grad_out.device, dtype=dtype)
        if grad_bridged.numel() > 0:
            block_p, block_c, num_warps = _block_sizes(in_h * in_w, width)
            grid = (triton.cdiv(in_h * in_w, block_p), triton.cdiv(width, block_c), batch)
            _fg_injection_bwd_gather_kernel[grid](
                grad_out, grad_bridged, width, in_h, in_w, out_h, out_w, in_h / out_h, in_w / out_w,
                _gather_window(in_h, out_h), _gather_window(in_w, out_w),
                BLOCK_P=block_p, BLOCK_C=block_c, num_warps=num_warps,
            )  # fmt: skip
        return grad_bridged
    grad_bridged = torch.zeros(bridged_shape, device=grad_out.device, dtype=torch.float32)
    if grad_out.numel() > 0:
        grid, scalars, meta = _launch_args(batch, width, (in_h, in_w), out_hw)
        _fg_injection_bwd_scatter_kernel[grid](grad_out, grad_bridged, *scalars, **meta)
    return grad_bridged.to(dtype)


class FGInjectionFunction(torch.autograd.Function):
    """Resize + add on the already-bridged map: ``apply(x, bridged, out_hw)``. The backward passes grad_out through
    to x and runs the resize's adjoint only if bridged needs a gradient."""

    @staticmethod
    def forward(ctx, x, bridged, out_hw):
        y = fg_injection_fwd(x, bridged, out_hw)
        ctx.bridged_shape, ctx.bridged_dtype = tuple(bridged.shape), bridged.dtype
        ctx.out_hw = (int(out_hw[0]), int(out_hw[1]))
        return y

    @staticmethod
    def backward(ctx, grad_out):
        needs_x, needs_bridged, _ = ctx.needs_input_grad
        grad_bridged = None
        if needs_bridged:
            grad_bridged = fg_injection_bwd(grad_out, ctx.bridged_shape, ctx.bridged_dtype, ctx.out_hw)
        return (grad_out if needs_x else None), grad_bridged, None


def fg_injection(x: torch.Tensor, bridged: torch.Tensor, out_hw: tuple[int, int]) -> torch.Tensor:
    """Fine-grained injection ``x + flatten(bilinear_resize(bridged, out_hw))`` (HST.md §2).

    x: [B, Hs*Ws, C] side tokens, contiguous; bridged: [B, Hv, Wv, C], the bridge Linear already applied to the
    ViT patches (any strides, e.g. a slice of a bridged ViT block output); out_hw: (Hs, Ws), any up-, down- or
    non-uniform resize (align_corners=False). fp32 / fp16 / bf16, one dtype for both; resize accumulated in fp32.
    Returns [B, Hs*Ws, C] in x's dtype, differentiable in x and bridged. Same signature and result as
    ``reference.fg_injection_reference``.

    Raises ``UnsupportedInput`` for mixed dtypes/devices or a non-contiguous x, ``ValueError`` for inconsistent
    shapes.
    """
    return FGInjectionFunction.apply(x, bridged, out_hw)
