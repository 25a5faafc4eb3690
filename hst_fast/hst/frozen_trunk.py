"""The frozen streaming trunk (``backbone_grad='none'``): the plain ViT without autograd.

No meta tokens and no LN-tuning, so nothing inside the ViT trains and no activation of it is kept for
backward. The side attention's keys come from each block's class token (HST.md §4b). Features are yielded
block by block, so a side stage consumes them before the next ViT blocks run.
"""
from __future__ import annotations

from typing import Iterator

import torch
import torch.nn as nn

from hst_fast.hst.block_features import BlockFeatures, embed_tokens


class FrozenTrunk:
    """Runs the ViT's blocks under ``no_grad``; yields each block's class token and patch tokens."""

    def __init__(self, vit: nn.Module):
        """vit: the timm ViT (kept in eval mode by ``HST.train``)."""
        self.vit = vit

    def __call__(self, images: torch.Tensor) -> Iterator[BlockFeatures]:
        """[B, 3, H, W] -> one ``BlockFeatures`` (class token [B, 1, D], patches [B, Hv, Wv, D]) per block."""
        with torch.no_grad():
            tokens, vit_hw = embed_tokens(self.vit, images)
        for block in self.vit.blocks:
            with torch.no_grad():
                tokens = block(tokens)
            yield BlockFeatures(tokens[:, :1], tokens[:, 1:].unflatten(1, vit_hw))
