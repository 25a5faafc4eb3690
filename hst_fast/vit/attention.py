"""How the ViT blocks compute attention: PyTorch SDPA, xformers, or eager (as the released code)."""
from __future__ import annotations

import torch
import torch.nn as nn

from hst_fast.constants import ATTN_BACKENDS


class XformersAttention(nn.Module):
    """timm ``Attention`` computed by xformers' ``memory_efficient_attention``; same parameters and
    state-dict names (``qkv``, ``proj``, ``q_norm``, ``k_norm``)."""

    def __init__(self, attention: nn.Module):
        super().__init__()
        from xformers.ops import memory_efficient_attention  # checked by set_attn_backend

        self._attend = memory_efficient_attention
        self.num_heads, self.head_dim, self.scale = attention.num_heads, attention.head_dim, attention.scale
        self.qkv, self.q_norm, self.k_norm = attention.qkv, attention.q_norm, attention.k_norm
        self.norm, self.proj, self.proj_drop = attention.norm, attention.proj, attention.proj_drop
        self.attn_drop_p = attention.attn_drop.p

    def forward(self, x: torch.Tensor, attn_mask=None) -> torch.Tensor:
        if attn_mask is not None:
            raise ValueError("attn_backend='xformers' does not take an attention mask")
        batch, num_tokens, _ = x.shape
        q, k, v = self.qkv(x).view(batch, num_tokens, 3, self.num_heads, self.head_dim).unbind(2)
        out = self._attend(self.q_norm(q), self.k_norm(k), v, p=self.attn_drop_p if self.training else 0.0,
                           scale=self.scale)
        return self.proj_drop(self.proj(self.norm(out.reshape(batch, num_tokens, -1))))


def set_attn_backend(vit: nn.Module, backend: str) -> None:
    """Selects how every ViT block computes attention: 'sdpa' (PyTorch flash / memory-efficient),
    'xformers' (``memory_efficient_attention``; needs xformers) or 'eager' (as the released code)."""
    if backend not in ATTN_BACKENDS:
        raise ValueError(f"attn_backend must be one of {ATTN_BACKENDS}, got {backend!r}")
    if backend == "xformers":
        try:
            import xformers.ops  # noqa: F401
        except ImportError as err:
            raise ImportError(
                "attn_backend='xformers' needs xformers (pip install 'hst_fast[xformers]', CUDA only); "
                "use attn_backend='sdpa'"
            ) from err
        for block in vit.blocks:
            block.attn = XformersAttention(block.attn)
        return
    for block in vit.blocks:
        if not hasattr(block.attn, "fused_attn"):
            raise ValueError(f"cannot select attention for {type(block.attn).__name__}")
        block.attn.fused_attn = backend == "sdpa"

