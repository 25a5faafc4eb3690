"""The paper-faithful trunk (``backbone_grad='full'``, HST.md §1): meta tokens (MetaT) and LN-tuning.

- MetaT: one learnable [G, D] tensor m_k per ViT block (``create_meta_tokens``). Before block k the
  sequence is [m_k, cls, patches]; the block's first G outputs are its meta outputs M_k, which go to the
  side network and are dropped from the trunk.
- LN-tuning: the affine params of every block's norm1 / norm2 train (``apply_ln_tuning``, ``is_ln_tuned``).

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
from hst_fast.hst.block_features import BlockFeatures, embed_tokens
from hst_fast.hst.layers import OpsLayerNorm

LN_TUNED_NORMS = ("norm1", "norm2")  # the pre-norm LayerNorms of every ViT block


def create_meta_tokens(depth: int, num_tokens: int, dim: int) -> nn.ParameterList:
    """``depth`` meta-token tensors [G, D], xavier-uniform with the fans of the released [1, G, D] layout."""

    def xavier(tensor: torch.Tensor) -> torch.Tensor:
        nn.init.xavier_uniform_(tensor)
        return tensor[0]

    return nn.ParameterList([nn.Parameter(xavier(torch.empty(1, num_tokens, dim))) for _ in range(depth)])


def apply_ln_tuning(vit: nn.Module, ops: KernelOps) -> None:
    """Makes every block's norm1 / norm2 an ``OpsLayerNorm`` over the same parameters (state-dict names
    unchanged), so the LN-tuned norms run through the chosen kernel backend."""
    for block in vit.blocks:
        for name in LN_TUNED_NORMS:
            norm = getattr(block, name)
            if not isinstance(norm, nn.LayerNorm) or not norm.elementwise_affine:
                raise ValueError(f"LN-tuning needs affine nn.LayerNorm in every ViT block, found {type(norm).__name__}")
            replacement = OpsLayerNorm(norm.normalized_shape[0], norm.eps, ops)
            replacement.weight, replacement.bias = norm.weight, norm.bias
            setattr(block, name, replacement)


def is_ln_tuned(vit_param_name: str) -> bool:
    """Whether a parameter of the ViT (name relative to the ViT, e.g. ``blocks.3.norm1.weight``) is LN-tuned."""
    parts = vit_param_name.split(".")
    return len(parts) == 4 and parts[0] == "blocks" and parts[2] in LN_TUNED_NORMS


class FaithfulTrunk:
    """Runs the ViT with meta tokens inserted before each block; yields each block's meta outputs and patches."""

    def __init__(self, vit: nn.Module, meta_tokens: nn.ParameterList, grad_checkpointing: bool = False):
        """vit: the timm ViT (LN-tuned); meta_tokens: one [G, D] per block; grad_checkpointing: recompute each
        block in backward instead of keeping its activations."""
        self.vit, self.meta_tokens, self.grad_checkpointing = vit, meta_tokens, grad_checkpointing

    def _run_block(self, block: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and torch.is_grad_enabled():
            return checkpoint(block, tokens, use_reentrant=False)
        return block(tokens)

    def __call__(self, images: torch.Tensor) -> Iterator[BlockFeatures]:
        """[B, 3, H, W] -> one ``BlockFeatures`` (M_k [B, G, D], P_k [B, Hv, Wv, D]) per block."""
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
