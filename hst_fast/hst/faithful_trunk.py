"""The paper-faithful trunk (``backbone_grad='full'``, HST.md §1, §4b): meta tokens (MetaT) and LN-tuning.

- MetaT: one learnable [G, D] tensor m_k per ViT block (``create_meta_tokens``). Before block k the
  sequence is [m_k, prefix tokens, patches] (prefix: the family's class / register tokens, or none); the block's
  first G outputs are its meta outputs M_k, which go to the side network and are dropped from the trunk. Meta
  tokens are extra prefix tokens: the family's ``run_block`` keeps position-dependent logic (EVA's RoPE) on the
  image tokens exactly as timm has it.
- LN-tuning: the affine params of every block's pre-norm LayerNorms train (the family's ``ln_tuned_norms``,
  norm1 / norm2 in every family; ``apply_ln_tuning``, ``is_ln_tuned``).

Both sit inside the frozen ViT, so activation gradients flow through it. Frozen weights get no gradient and
autograd saves no tensor only a weight gradient would need (PyTorch already skips inputs of Linear layers
whose weight is frozen; the test suite checks this). Block k+1's meta tokens are written over block k's
meta outputs in place, so the token sequence is not copied per block.
"""
from __future__ import annotations

from typing import Iterator

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from hst_fast.backend import KernelOps
from hst_fast.hst.block_features import BlockFeatures
from hst_fast.hst.layers import OpsLayerNorm
from hst_fast.vit.families import ViTEmbedding, ViTFamily


def create_meta_tokens(depth: int, num_tokens: int, dim: int) -> nn.ParameterList:
    """``depth`` meta-token tensors [G, D], xavier-uniform with the fans of the released [1, G, D] layout."""

    def xavier(tensor: torch.Tensor) -> torch.Tensor:
        nn.init.xavier_uniform_(tensor)
        return tensor[0]

    return nn.ParameterList([nn.Parameter(xavier(torch.empty(1, num_tokens, dim))) for _ in range(depth)])


def apply_ln_tuning(vit: nn.Module, family: ViTFamily, ops: KernelOps) -> None:
    """Makes every block's LN-tuned norms an ``OpsLayerNorm`` over the same parameters (state-dict names
    unchanged), so they run through the chosen kernel backend."""
    for block in vit.blocks:
        for name in family.ln_tuned_norms:
            norm = getattr(block, name)
            if not isinstance(norm, nn.LayerNorm) or not norm.elementwise_affine or norm.bias is None:
                raise ValueError(f"LN-tuning needs affine nn.LayerNorm in every ViT block, found {norm!r}")
            replacement = OpsLayerNorm(norm.normalized_shape[0], norm.eps, ops)
            replacement.weight, replacement.bias = norm.weight, norm.bias
            setattr(block, name, replacement)


def is_ln_tuned(vit_param_name: str, family: ViTFamily) -> bool:
    """Whether a parameter of the ViT (name relative to the ViT, e.g. ``blocks.3.norm1.weight``) is LN-tuned."""
    parts = vit_param_name.split(".")
    return len(parts) == 4 and parts[0] == "blocks" and parts[2] in family.ln_tuned_norms


class FaithfulTrunk:
    """Runs the ViT with meta tokens inserted before each block; yields each block's meta outputs and patches."""

    def __init__(
        self, vit: nn.Module, family: ViTFamily, meta_tokens: nn.ParameterList, grad_checkpointing: bool = False
    ):
        """vit: the timm ViT (LN-tuned); family: how to run it; meta_tokens: one [G, D] per block;
        grad_checkpointing: recompute each block in backward instead of keeping its activations."""
        self.vit, self.family, self.meta_tokens = vit, family, meta_tokens
        self.grad_checkpointing = grad_checkpointing

    def _run_block(self, block_id: int, tokens: torch.Tensor, embedding: ViTEmbedding) -> torch.Tensor:
        args = (self.vit, block_id, tokens, embedding, self.meta_tokens[0].shape[0])
        if self.grad_checkpointing and torch.is_grad_enabled():
            return checkpoint(self.family.run_block, *args, use_reentrant=False)
        return self.family.run_block(*args)

    def __call__(self, images: torch.Tensor) -> Iterator[BlockFeatures]:
        """[B, 3, H, W] -> one ``BlockFeatures`` (M_k [B, G, D], P_k [B, Hv, Wv, D]) per block."""
        embedding = self.family.embed(self.vit, images)
        batch, num_meta = embedding.tokens.shape[0], self.meta_tokens[0].shape[0]
        sequence = torch.cat([self.meta_tokens[0].expand(batch, -1, -1), embedding.tokens], dim=1)
        embedding = embedding._replace(tokens=None)  # the sequence holds them now
        leading = num_meta + embedding.num_prefix_tokens
        last = len(self.vit.blocks) - 1
        for block_id in range(len(self.vit.blocks)):
            out = self._run_block(block_id, sequence, embedding)
            meta = out[:, :num_meta]
            if block_id < last:
                # [m_{k+1}, prefix_k, patches_k]: overwrite the meta outputs instead of concatenating.
                # The meta outputs are cloned first (autograd saves them for the bridge) and the
                # patch view is taken after the write, so no saved tensor sees the in-place change.
                meta = meta.clone()
                out[:, :num_meta] = self.meta_tokens[block_id + 1].expand(batch, -1, -1)
            sequence = out
            yield BlockFeatures(meta, self.family.patch_tokens(out, leading, embedding.grid))
