"""Pure-PyTorch references for every fused op in ``hst_fast.kernels``.

Each function here has the same signature as the public Triton op of the same name
(``kernels/<op>.py``) and is the answer key its tests compare against. The reference model
(``kernel_backend='torch'``) runs these functions, so they also define what HST computes
(``HST.md`` §2-3). This module imports no Triton.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F

__all__ = [
    "layer_norm_reference",
    "side_attention_reference",
    "side_ffn_reference",
    "fg_injection_reference",
    "bilinear_weights",
    "fg_global_token",
]


def layer_norm_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    """LayerNorm over the last dim with a trainable affine.

    x: [..., C]; weight, bias: [C]. Returns [..., C] in x's dtype.
    """
    return F.layer_norm(x, (x.shape[-1],), weight, bias, eps)


def _scale_branch(branch: torch.Tensor, branch_scale: Optional[torch.Tensor]) -> torch.Tensor:
    """Multiplies a residual branch [B, N, C] by a per-sample scale [B] (drop-path), if given."""
    if branch_scale is None:
        return branch
    return branch * branch_scale.to(branch.dtype).view(-1, 1, 1)


def side_attention_reference(
    x: torch.Tensor,
    kv: torch.Tensor,
    norm_weight: torch.Tensor,
    norm_bias: torch.Tensor,
    q_weight: torch.Tensor,
    q_bias: torch.Tensor,
    k_weight: torch.Tensor,
    k_bias: torch.Tensor,
    v_weight: torch.Tensor,
    v_bias: torch.Tensor,
    proj_weight: torch.Tensor,
    proj_bias: torch.Tensor,
    num_heads: int,
    eps: float = 1e-6,
    branch_scale: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """MetaT cross-attention of a side block with its residual (HST.md §3, step 1).

    ``x + Proj(MultiHead(q=Wq LN(x), k=Wk kv, v=Wv kv))``, softmax over the M keys,
    scale (C / num_heads) ** -0.5.

    x: [B, N, C] side tokens; kv: [B, M, C] meta tokens + GlobalT (not normalized here);
    norm_*: [C]; *_weight: [C, C]; *_bias: [C]; branch_scale: optional [B] drop-path scale.
    Returns [B, N, C].
    """
    batch, num_queries, width = x.shape
    head_dim = width // num_heads
    q = F.linear(F.layer_norm(x, (width,), norm_weight, norm_bias, eps), q_weight, q_bias)
    k = F.linear(kv, k_weight, k_bias)
    v = F.linear(kv, v_weight, v_bias)
    q = q.view(batch, num_queries, num_heads, head_dim).transpose(1, 2)
    k = k.view(batch, -1, num_heads, head_dim).transpose(1, 2)
    v = v.view(batch, -1, num_heads, head_dim).transpose(1, 2)
    attn = (q @ k.transpose(-2, -1)) * head_dim**-0.5
    out = (attn.softmax(dim=-1) @ v).transpose(1, 2).reshape(batch, num_queries, width)
    return x + _scale_branch(F.linear(out, proj_weight, proj_bias), branch_scale)


def side_ffn_reference(
    x: torch.Tensor,
    norm_weight: torch.Tensor,
    norm_bias: torch.Tensor,
    fc1_weight: torch.Tensor,
    fc1_bias: torch.Tensor,
    fc2_weight: torch.Tensor,
    fc2_bias: torch.Tensor,
    eps: float = 1e-6,
    branch_scale: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Side-block feed-forward with its residual (HST.md §3, step 3).

    ``x + FC2(GELU(FC1(LN(x))))`` with exact (erf) GELU.
    x: [B, N, C]; fc1_weight: [4C, C]; fc1_bias: [4C]; fc2_weight: [C, 4C]; fc2_bias: [C];
    branch_scale: optional [B] drop-path scale. Returns [B, N, C].
    """
    hidden = F.gelu(F.linear(F.layer_norm(x, (x.shape[-1],), norm_weight, norm_bias, eps), fc1_weight, fc1_bias))
    return x + _scale_branch(F.linear(hidden, fc2_weight, fc2_bias), branch_scale)


def fg_injection_reference(
    x: torch.Tensor,
    patches: torch.Tensor,
    bridge_weight: torch.Tensor,
    bridge_bias: torch.Tensor,
    out_hw: Tuple[int, int],
) -> torch.Tensor:
    """Fine-grained injection (HST.md §2): ``x + flatten(resize(Bridge(P), out_hw))``.

    The bridge runs at ViT resolution and the bilinear resize (align_corners=False) second;
    the two commute because bilinear weights sum to one.
    x: [B, Hs*Ws, C] side tokens; patches: [B, Hv, Wv, D] ViT patch tokens;
    bridge_weight: [C, D]; bridge_bias: [C]; out_hw: (Hs, Ws). Returns [B, Hs*Ws, C].
    """
    bridged = F.linear(patches, bridge_weight, bridge_bias).permute(0, 3, 1, 2)
    resized = F.interpolate(bridged, size=tuple(out_hw), mode="bilinear", align_corners=False)
    return x + resized.flatten(2).transpose(1, 2)


def bilinear_weights(in_size: int, out_size: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """How much each input row contributes to the mean of a 1-d bilinear resize.

    Returns [in_size] weights summing to one: mean_over_out(resize(v)) == weights @ v.
    """
    eye = torch.eye(in_size, device=device, dtype=torch.float32).unsqueeze(0)
    rows = F.interpolate(eye, size=out_size, mode="linear", align_corners=False)
    return rows[0].mean(dim=1).to(dtype)


def fg_global_token(
    patches: torch.Tensor, bridge_weight: torch.Tensor, bridge_bias: torch.Tensor, out_hw: Tuple[int, int]
) -> torch.Tensor:
    """GlobalT (HST.md §2): the mean over tokens of the FG features, without materializing them.

    patches: [B, Hv, Wv, D]. Returns [B, 1, C], equal to ``mean_tokens(resize(Bridge(P)))``.
    """
    _, in_h, in_w, _ = patches.shape
    weight_h = bilinear_weights(in_h, out_hw[0], patches.device, patches.dtype)
    weight_w = bilinear_weights(in_w, out_hw[1], patches.device, patches.dtype)
    pooled = torch.einsum("bhwd,h,w->bd", patches, weight_h, weight_w)
    return F.linear(pooled, bridge_weight, bridge_bias).unsqueeze(1)
