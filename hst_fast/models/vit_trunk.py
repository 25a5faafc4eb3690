"""Running the frozen timm ViT for HST: which features each side block receives, and at what cost.

Two modes (``HSTConfig.backbone_grad``):

- ``'full'`` (paper-faithful, ``MetaTrunk``): before block k the sequence is [m_k, cls, patches];
  meta tokens and the blocks' LayerNorm affines train, so activation gradients flow through the
  frozen ViT. Frozen weights get no gradient and autograd saves no tensor only a weight gradient
  would need (PyTorch already skips inputs of Linear layers whose weight is frozen; the test suite
  checks this). Block k+1's meta tokens are written over block k's meta outputs in place, so the
  token sequence is not copied per block.
- ``'none'`` (``FrozenTrunk``): the ViT runs without autograd, no meta tokens, no LN-tuning; the
  side attention's keys come from the paired block's class token.

Both yield, block by block, ``BlockFeatures`` as soon as a block has run, so a side stage consumes
its blocks' features before the next ViT blocks run.
"""
from __future__ import annotations

from typing import Iterator, NamedTuple, Tuple

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

ATTN_BACKENDS = ("sdpa", "xformers", "eager")


class BlockFeatures(NamedTuple):
    """What side block k receives from ViT block k."""

    keys: torch.Tensor  # [B, G, D]: meta outputs (faithful) or the class token (frozen)
    patches: torch.Tensor  # [B, Hv, Wv, D]: patch tokens, possibly batch-strided


def embed_tokens(vit: nn.Module, images: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int]]:
    """Patch embedding, class token and (resampled) position embedding: ([B, 1 + Hv*Wv, D], (Hv, Wv))."""
    patches = vit.patch_embed(images)  # [B, Hv, Wv, D] (timm dynamic_img_size)
    tokens = vit.norm_pre(vit.patch_drop(vit._pos_embed(patches)))
    return tokens, (patches.shape[1], patches.shape[2])


class MetaTrunk:
    """Paper-faithful trunk: meta tokens and LN-tuning inside the ViT, gradients through it."""

    def __init__(self, vit: nn.Module, meta_tokens: nn.ParameterList, grad_checkpointing: bool = False):
        self.vit, self.meta_tokens, self.grad_checkpointing = vit, meta_tokens, grad_checkpointing

    def _run_block(self, block: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and torch.is_grad_enabled():
            return checkpoint(block, tokens, use_reentrant=False)
        return block(tokens)

    def __call__(self, images: torch.Tensor) -> Iterator[BlockFeatures]:
        tokens, vit_hw = embed_tokens(self.vit, images)
        batch, num_meta = tokens.shape[0], self.meta_tokens[0].shape[0]
        sequence = torch.cat([self.meta_tokens[0].expand(batch, -1, -1), tokens], dim=1)
        last = len(self.vit.blocks) - 1
        for block_id, block in enumerate(self.vit.blocks):
            out = self._run_block(block, sequence)
            meta = out[:, :num_meta]
            if block_id < last:
                # [m_{k+1}, cls_k, patches_k]: overwrite the meta outputs instead of concatenating.
                # The meta outputs are cloned first (autograd saves them for the bridge) and the
                # patch view is taken after the write, so no saved tensor sees the in-place change.
                meta = meta.clone()
                out[:, :num_meta] = self.meta_tokens[block_id + 1].expand(batch, -1, -1)
            sequence = out
            yield BlockFeatures(meta, out[:, num_meta + 1:].unflatten(1, vit_hw))


class FrozenTrunk:
    """Frozen streaming trunk: the plain ViT without autograd; keys from each block's class token."""

    def __init__(self, vit: nn.Module):
        self.vit = vit

    def __call__(self, images: torch.Tensor) -> Iterator[BlockFeatures]:
        with torch.no_grad():
            tokens, vit_hw = embed_tokens(self.vit, images)
        for block in self.vit.blocks:
            with torch.no_grad():
                tokens = block(tokens)
            yield BlockFeatures(tokens[:, :1], tokens[:, 1:].unflatten(1, vit_hw))


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

