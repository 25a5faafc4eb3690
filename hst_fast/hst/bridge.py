"""The bridge between a ViT block and its side block (HST.md §2): T_Bridge, the meta LayerNorm and GlobalT.

For ViT block k of stage s, ``Bridge`` (T_Bridge_s, one Linear(D -> d_s) shared by the stage's blocks) gives

- the FG input ``T_Bridge_s(P_k)`` at ViT resolution [B, Hv, Wv, d_s]; the side block's FG injection resizes it
  to the stage's grid (bridging first and resizing second is exact, bilinear weights sum to one);
- the attention keys ``kv = [LNp_k(T_Bridge_s(M_k)), g_k]`` [B, G+1, d_s], where GlobalT ``g_k`` is the mean over
  the stage's tokens of the resized FG features, computed from the ViT-resolution map without resizing it.
"""
from __future__ import annotations

from typing import NamedTuple, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F


class BridgeOutput(NamedTuple):
    """What a side block takes from its ViT block, in the side stage's width d."""

    kv: torch.Tensor  # [B, G+1, d]: bridged, meta-normed meta outputs, then GlobalT
    fg: torch.Tensor  # [B, Hv, Wv, d]: bridged patch tokens, at ViT resolution


def bilinear_mean_weights(in_size: int, out_size: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """How much each input row contributes to the mean of a 1-d bilinear resize (align_corners=False).

    Returns [in_size] weights summing to one: ``mean_over_out(resize(v)) == weights @ v``.
    """
    eye = torch.eye(in_size, device=device, dtype=torch.float32).unsqueeze(0)
    rows = F.interpolate(eye, size=out_size, mode="linear", align_corners=False)
    return rows[0].mean(dim=1).to(dtype)


def global_token(fg: torch.Tensor, out_hw: Tuple[int, int]) -> torch.Tensor:
    """GlobalT: [B, Hv, Wv, d] bridged patches -> [B, 1, d], the token mean of their resize to ``out_hw``."""
    _, in_h, in_w, _ = fg.shape
    weight_h = bilinear_mean_weights(in_h, out_hw[0], fg.device, fg.dtype)
    weight_w = bilinear_mean_weights(in_w, out_hw[1], fg.device, fg.dtype)
    return torch.einsum("bhwd,h,w->bd", fg, weight_h, weight_w).unsqueeze(1)


class Bridge(nn.Linear):
    """T_Bridge_s: Linear(D -> d_s) whose forward turns one ViT block's features into a side block's inputs.

    The per-block meta LayerNorm LNp_k is passed in: it lives in the stage's ``meta_norms`` (the released
    code's parameter layout), one per ViT block.
    """

    def __init__(self, vit_dim: int, dim: int):
        """vit_dim: ViT width D; dim: side stage width d_s."""
        super().__init__(vit_dim, dim)

    def forward(
        self, meta: torch.Tensor, patches: torch.Tensor, meta_norm: nn.Module, out_hw: Tuple[int, int]
    ) -> BridgeOutput:
        """meta: [B, G, D] M_k; patches: [B, Hv, Wv, D] P_k; out_hw: the stage grid (H_s, W_s)."""
        fg = F.linear(patches, self.weight, self.bias)
        meta = meta.contiguous()  # a view (frozen mode's class token) would keep the whole block output for backward
        kv = torch.cat([meta_norm(F.linear(meta, self.weight, self.bias)), global_token(fg, out_hw)], dim=1)
        return BridgeOutput(kv, fg)
