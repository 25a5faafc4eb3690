"""Fine-grained (FG) injection: ``x + flatten(resize(Bridge(P), out_hw))`` (HST.md §2, §3 step 2).

The bridge Linear(D -> C) runs first, at ViT resolution, as one torch matmul (cuBLAS; it is a
plain GEMM over ``B*Hv*Wv`` rows and gains nothing from fusion). Because bilinear weights sum
to one, bridging before resizing is exact and moves only C/D of the bytes through the resize.
The fused part is the resize + residual add: each program takes a tile of output tokens, gathers
the 4 bilinear neighbours of every token from the bridged low-resolution map (channels-last, so
each gather is a contiguous C-vector) and writes ``x + sum_k w_k * bridged[neighbour_k]``; the
full-resolution FG features never exist in memory.

Backward: ``grad_x = grad_out``. The adjoint of the resize scatters each output token's gradient
with its 4 weights into the low-resolution map, by fp32 atomics into a ``[B, Hv, Wv, C]`` buffer:
an input pixel receives at most a few dozen adds (4x upsampling), spread over the whole map, so
there is no hot spot. Patches, bridge weight and bias get their gradients from that map through
the bridge (torch matmuls).

Source indices follow PyTorch's ``F.interpolate(mode='bilinear', align_corners=False)`` exactly:
``src = max((dst + 0.5) * in / out - 0.5, 0)``, ``i0 = floor(src)``, ``i1 = min(i0 + 1, in - 1)``,
``lambda1 = src - i0``, computed in fp32 as PyTorch does for fp32/fp16/bf16 inputs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from ._compat import INTERPRET, UnsupportedInput, check_tensors

__all__ = ["FGInjectionFunction", "fg_injection", "fg_injection_bwd", "fg_injection_fwd"]

_MAX_BLOCK_C = 128


@triton.jit
def _bilinear_taps(offs_t, out_w, in_h, in_w, scale_h, scale_w):
    """For output tokens ``offs_t`` (row-major over [out_h, out_w]): the 4 neighbour indices into
    the flattened [in_h * in_w] map and their weights, as PyTorch's align_corners=False bilinear."""
    oy = offs_t // out_w
    ox = offs_t % out_w
    src_y = tl.maximum((oy.to(tl.float32) + 0.5) * scale_h - 0.5, 0.0)
    src_x = tl.maximum((ox.to(tl.float32) + 0.5) * scale_w - 0.5, 0.0)
    # src >= 0, so truncation is floor; src < in - 0.5 always, the clamp only guards rounding.
    y0 = tl.minimum(src_y.to(tl.int32), in_h - 1)
    x0 = tl.minimum(src_x.to(tl.int32), in_w - 1)
    ly1 = src_y - y0.to(tl.float32)
    lx1 = src_x - x0.to(tl.float32)
    ly0 = 1.0 - ly1
    lx0 = 1.0 - lx1
    y1 = tl.where(y0 < in_h - 1, y0 + 1, y0)
    x1 = tl.where(x0 < in_w - 1, x0 + 1, x0)
    return (
        y0 * in_w + x0,
        y0 * in_w + x1,
        y1 * in_w + x0,
        y1 * in_w + x1,
        ly0 * lx0,
        ly0 * lx1,
        ly1 * lx0,
        ly1 * lx1,
    )


@triton.jit
def _token_tile(MAP, C, in_h, in_w, out_h, out_w, BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr):
    """This program's tile: output tokens ``program_id(0) * BLOCK_T + [0, BLOCK_T)``, channels
    ``program_id(1) * BLOCK_C + [0, BLOCK_C)``, of batch element ``program_id(2)``.

    Returns (offs_t [BLOCK_T] token indices; tok [BLOCK_T, BLOCK_C] offsets into the [B, out_h * out_w, C]
    tokens; mask; map [1, BLOCK_C] pointers to the tile's channels of this batch element's [in_h * in_w, C]
    rows of MAP, the [B, in_h * in_w, C] low-resolution map)."""
    pid_b = tl.program_id(2).to(tl.int64)
    offs_t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_t = offs_t < out_h * out_w
    mask = mask_t[:, None] & (offs_c < C)[None, :]
    tok = pid_b * out_h * out_w * C + offs_t[:, None] * C + offs_c[None, :]
    return offs_t, tok, mask, MAP + pid_b * in_h * in_w * C + offs_c[None, :]


@triton.jit
def _fg_injection_fwd_kernel(
    X,  # [B, out_h * out_w, C] side tokens
    BR,  # [B, in_h * in_w, C] bridged ViT patch map (channels-last)
    Y,  # [B, out_h * out_w, C] output, x's dtype
    C, in_h, in_w, out_h, out_w,
    scale_h, scale_w,  # in_h / out_h, in_w / out_w (fp32)
    BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    offs_t, tok, mask, br = _token_tile(BR, C, in_h, in_w, out_h, out_w, BLOCK_T, BLOCK_C)
    i00, i01, i10, i11, w00, w01, w10, w11 = _bilinear_taps(offs_t, out_w, in_h, in_w, scale_h, scale_w)

    acc = w00[:, None] * tl.load(br + i00[:, None] * C, mask=mask, other=0.0).to(tl.float32)
    acc += w01[:, None] * tl.load(br + i01[:, None] * C, mask=mask, other=0.0).to(tl.float32)
    acc += w10[:, None] * tl.load(br + i10[:, None] * C, mask=mask, other=0.0).to(tl.float32)
    acc += w11[:, None] * tl.load(br + i11[:, None] * C, mask=mask, other=0.0).to(tl.float32)

    x = tl.load(X + tok, mask=mask, other=0.0).to(tl.float32)
    tl.store(Y + tok, (x + acc).to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _fg_injection_bwd_kernel(
    DY,  # [B, out_h * out_w, C] upstream gradient
    DBR,  # [B, in_h * in_w, C] fp32, zero-initialized: gradient of the bridged map (atomics)
    C, in_h, in_w, out_h, out_w, scale_h, scale_w,  # as in the forward kernel
    BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    offs_t, tok, mask, dbr = _token_tile(DBR, C, in_h, in_w, out_h, out_w, BLOCK_T, BLOCK_C)
    i00, i01, i10, i11, w00, w01, w10, w11 = _bilinear_taps(offs_t, out_w, in_h, in_w, scale_h, scale_w)

    dy = tl.load(DY + tok, mask=mask, other=0.0).to(tl.float32)
    tl.atomic_add(dbr + i00[:, None] * C, w00[:, None] * dy, mask=mask, sem="relaxed")
    tl.atomic_add(dbr + i01[:, None] * C, w01[:, None] * dy, mask=mask, sem="relaxed")
    tl.atomic_add(dbr + i10[:, None] * C, w10[:, None] * dy, mask=mask, sem="relaxed")
    tl.atomic_add(dbr + i11[:, None] * C, w11[:, None] * dy, mask=mask, sem="relaxed")


def _block_sizes(num_tokens: int, width: int) -> tuple[int, int, int]:
    """(BLOCK_T, BLOCK_C, num_warps): about 4K elements per program, channel tiles of at most 128."""
    block_c = min(triton.next_power_of_2(width), _MAX_BLOCK_C)
    block_t = max(16, min(4096 // block_c, triton.next_power_of_2(num_tokens)))
    if INTERPRET:  # the interpreter runs one numpy op per block: fewer, larger programs are faster
        block_t = max(block_t, min(256, triton.next_power_of_2(num_tokens)))
    return block_t, block_c, 4


def _check_inputs(x, patches, bridge_weight, bridge_bias, out_hw) -> tuple[int, int]:
    """Validates shapes (ValueError) and dtype/device/layout (UnsupportedInput); returns out_hw."""
    if x.dim() != 3 or patches.dim() != 4:
        raise ValueError(
            f"fg_injection: expected x [B, Hs*Ws, C] and patches [B, Hv, Wv, D], got {tuple(x.shape)} and "
            f"{tuple(patches.shape)}"
        )
    out_h, out_w = (int(s) for s in out_hw)
    batch, num_tokens, width = x.shape
    if patches.shape[0] != batch:
        raise ValueError(f"fg_injection: batch of x {tuple(x.shape)} and patches {tuple(patches.shape)} differ")
    if out_h <= 0 or out_w <= 0 or out_h * out_w != num_tokens:
        raise ValueError(f"fg_injection: out_hw {(out_h, out_w)} does not match the {num_tokens} tokens of x")
    if bridge_weight.shape != (width, patches.shape[3]) or bridge_bias.shape != (width,):
        raise ValueError(
            f"fg_injection: bridge weight {tuple(bridge_weight.shape)} / bias {tuple(bridge_bias.shape)} do not "
            f"map patches of width {patches.shape[3]} to x's width {width} (expected [{width}, {patches.shape[3]}])"
        )
    if patches.shape[1] == 0 or patches.shape[2] == 0:
        raise ValueError(f"fg_injection: empty patch grid {tuple(patches.shape)}")
    # patches only feed the bridge matmul, so any strides work: a ViT block's output sliced past
    # its meta and class tokens is batch-strided.
    check_tensors("fg_injection", x, bridge_weight, bridge_bias)
    if patches.dtype != x.dtype or patches.device != x.device:
        raise UnsupportedInput(
            f"fg_injection: patches are {patches.dtype} on {patches.device}, x is {x.dtype} on {x.device}"
        )
    return out_h, out_w


def _launch_args(x: torch.Tensor, bridged: torch.Tensor, out_h: int, out_w: int):
    batch, num_tokens, width = x.shape
    in_h, in_w = bridged.shape[1], bridged.shape[2]
    block_t, block_c, num_warps = _block_sizes(num_tokens, width)
    grid = (triton.cdiv(num_tokens, block_t), triton.cdiv(width, block_c), batch)
    scalars = (width, in_h, in_w, out_h, out_w, in_h / out_h, in_w / out_w)
    return grid, scalars, {"BLOCK_T": block_t, "BLOCK_C": block_c, "num_warps": num_warps}


def fg_injection_fwd(
    x: torch.Tensor, patches: torch.Tensor, bridge_weight: torch.Tensor, bridge_bias: torch.Tensor, out_hw
) -> torch.Tensor:
    """Forward launcher. x: [B, Hs*Ws, C]; patches: [B, Hv, Wv, D]. Returns [B, Hs*Ws, C] in x's dtype."""
    out_h, out_w = _check_inputs(x, patches, bridge_weight, bridge_bias, out_hw)
    # Bridge at ViT resolution: cuBLAS accumulates in fp32 and rounds to the input dtype.
    bridged = F.linear(patches, bridge_weight, bridge_bias).contiguous()  # [B, Hv, Wv, C]
    y = torch.empty_like(x)
    if x.numel() == 0:
        return y
    grid, scalars, meta = _launch_args(x, bridged, out_h, out_w)
    _fg_injection_fwd_kernel[grid](x, bridged, y, *scalars, **meta)
    return y


def fg_injection_bwd(
    grad_out: torch.Tensor, patches: torch.Tensor, bridge_weight: torch.Tensor, out_hw
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Backward launcher. Returns grads for (x, patches, bridge_weight, bridge_bias)."""
    grad_out = grad_out.contiguous()
    out_h, out_w = out_hw
    batch, in_h, in_w, depth = patches.shape
    width = grad_out.shape[2]
    grad_bridged = torch.zeros(batch, in_h, in_w, width, device=grad_out.device, dtype=torch.float32)
    if grad_out.numel() > 0:
        grid, scalars, meta = _launch_args(grad_out, grad_bridged, out_h, out_w)
        _fg_injection_bwd_kernel[grid](grad_out, grad_bridged, *scalars, **meta)
    grad_bridged = grad_bridged.view(-1, width)
    grad_bias = grad_bridged.sum(0).to(bridge_weight.dtype)
    # Matmuls in the input dtype (fp32 accumulation inside cuBLAS), as autograd of F.linear would run them.
    grad_bridged = grad_bridged.to(patches.dtype)
    grad_patches = (grad_bridged @ bridge_weight).view(batch, in_h, in_w, depth)
    grad_weight = grad_bridged.t() @ patches.reshape(-1, depth)
    return grad_out, grad_patches, grad_weight, grad_bias


class FGInjectionFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, patches, bridge_weight, bridge_bias, out_hw):
        y = fg_injection_fwd(x, patches, bridge_weight, bridge_bias, out_hw)
        ctx.save_for_backward(patches, bridge_weight)
        ctx.out_hw = (int(out_hw[0]), int(out_hw[1]))
        return y

    @staticmethod
    def backward(ctx, grad_out):
        patches, bridge_weight = ctx.saved_tensors
        grad_x, grad_patches, grad_weight, grad_bias = fg_injection_bwd(grad_out, patches, bridge_weight, ctx.out_hw)
        return grad_x, grad_patches, grad_weight, grad_bias, None


def fg_injection(
    x: torch.Tensor,
    patches: torch.Tensor,
    bridge_weight: torch.Tensor,
    bridge_bias: torch.Tensor,
    out_hw: tuple[int, int],
) -> torch.Tensor:
    """Fine-grained injection ``x + flatten(bilinear_resize(Bridge(patches), out_hw))`` (HST.md §2).

    x: [B, Hs*Ws, C] side tokens; patches: [B, Hv, Wv, D] ViT patch tokens; bridge_weight: [C, D];
    bridge_bias: [C]; out_hw: (Hs, Ws), any up-, down- or non-uniform resize (align_corners=False).
    fp32 / fp16 / bf16, one dtype for all tensors; resize accumulated in fp32. Returns [B, Hs*Ws, C]
    in x's dtype. Same signature and result as ``reference.fg_injection_reference``.

    Raises ``UnsupportedInput`` for mixed dtypes/devices or non-contiguous x/weights (patches may
    have any strides), ``ValueError``
    for inconsistent shapes.
    """
    return FGInjectionFunction.apply(x, patches, bridge_weight, bridge_bias, out_hw)
