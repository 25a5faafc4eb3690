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


def fg_injection_reference(x: torch.Tensor, bridged: torch.Tensor, out_hw: Tuple[int, int]) -> torch.Tensor:
    """Fine-grained injection (HST.md §2): ``x + flatten(bilinear_resize(bridged, out_hw))``, align_corners=False.

    ``bridged`` is T_Bridge(P), the bridge Linear applied to the ViT patches at ViT resolution (bridging first and
    resizing second is exact: bilinear weights sum to one). x: [B, Hs*Ws, C] side tokens; bridged: [B, Hv, Wv, C];
    out_hw: (Hs, Ws). Returns [B, Hs*Ws, C].
    """
    resized = F.interpolate(bridged.permute(0, 3, 1, 2), size=tuple(out_hw), mode="bilinear", align_corners=False)
    return x + resized.flatten(2).transpose(1, 2)
