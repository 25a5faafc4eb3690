"""The frozen streaming trunk (``backbone_grad='none'``): the plain ViT without autograd.

No meta tokens and no LN-tuning, so nothing inside the ViT trains and no activation of it is kept for
backward. The blocks run exactly as timm runs them (the family's ``embed`` and ``run_block``). The side
attention's keys come from each block's key token: its class token, or the mean patch token in families without
one (SigLIP, GAP ViTs, SAM; ``ViTFamily.key_token``, HST.md §4b). Features are yielded block by block, so a side
stage consumes them before the next ViT blocks run.
"""
from __future__ import annotations

from typing import Iterator

import torch
import torch.nn as nn

from hst_fast.hst.block_features import BlockFeatures
from hst_fast.vit.families import ViTFamily


class FrozenTrunk:
    """Runs the ViT's blocks under ``no_grad``; yields each block's key token and patch tokens."""

    def __init__(self, vit: nn.Module, family: ViTFamily):
        """vit: the timm ViT (kept in eval mode by ``HST.train``); family: how to run it."""
        self.vit, self.family = vit, family

    def __call__(self, images: torch.Tensor) -> Iterator[BlockFeatures]:
        """[B, 3, H, W] -> one ``BlockFeatures`` (key token [B, 1, D], patches [B, Hv, Wv, D]) per block."""
        with torch.no_grad():
            embedding = self.family.embed(self.vit, images)
        tokens = embedding.tokens
        embedding = embedding._replace(tokens=None)
        for block_id in range(len(self.vit.blocks)):
            with torch.no_grad():
                tokens = self.family.run_block(self.vit, block_id, tokens, embedding, num_meta=0)
                patches = self.family.patch_tokens(tokens, embedding.num_prefix_tokens, embedding.grid)
                key = self.family.key_token(tokens, patches, embedding)
            yield BlockFeatures(key, patches)
