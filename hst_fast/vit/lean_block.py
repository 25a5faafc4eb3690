"""Frozen ViT blocks whose MLP branch keeps [B, N, D] for backward instead of [B, N, 4D] (paper-faithful mode,
``grad_checkpointing='mlp'``).

Gradients flow through the frozen ViT in the paper-faithful model. In a timm ``Block``'s MLP branch
``MLP(LN2(x))`` (fc1 -> GELU -> fc2) GELU's backward needs its [B, N, 4D] pre-activation, which autograd keeps:
the largest tensor a ViT block saves. A ``LeanBlock`` runs LN2 + fc1 + GELU through ``hst_fast.recompute``, which
keeps the branch's input x (and LN2's weight and bias) and reruns the three in backward: one more fc1, 4 D^2
multiply-adds per token (8-15% of a faithful train step, CPU time), for D floats kept per token instead of 5 D (LN2's
input and GELU's pre-activation). fc2's weight is frozen, so autograd keeps nothing for it, and no input of a
frozen Linear is kept. Values and gradients are those of the plain block: the same ops run in the same order.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import Mlp
from timm.layers.activations import GELU, GELUTanh
from timm.models.vision_transformer import Block

from hst_fast.recompute import recompute

GELUS = (nn.GELU, GELU, GELUTanh)


class LeanBlock(nn.Module):
    """A timm ``Block`` (the same submodules, so the same state-dict names) whose MLP branch is recomputed in
    backward while the MLP's weights are frozen (a weight gradient would need its activations anyway)."""

    def __init__(self, block: Block):
        """block: a timm ``Block`` whose MLP is a timm ``Mlp`` with GELU (``is_lean_compatible``)."""
        super().__init__()
        for name, module in block.named_children():
            self.add_module(name, module)

    def _hidden(self, x: torch.Tensor, norm_weight: torch.Tensor, norm_bias: torch.Tensor) -> torch.Tensor:
        """GELU(fc1(LN2(x))): [B, N, D] -> [B, N, 4D]."""
        normed = F.layer_norm(x, self.norm2.normalized_shape, norm_weight, norm_bias, self.norm2.eps)
        return self.mlp.act(self.mlp.fc1(normed))

    def _mlp_branch(self, x: torch.Tensor) -> torch.Tensor:
        """MLP(LN2(x)): [B, N, D] -> [B, N, D]."""
        mlp = self.mlp
        if any(p.requires_grad for p in mlp.parameters()):
            return mlp(self.norm2(x))
        hidden = recompute(self._hidden, x, self.norm2.weight, self.norm2.bias)
        return mlp.drop2(mlp.fc2(mlp.norm(mlp.drop1(hidden))))

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """[B, N, D] -> [B, N, D]; extra arguments (attention mask) go to the attention, as in timm's ``Block``."""
        x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x), *args, **kwargs)))
        return x + self.drop_path2(self.ls2(self._mlp_branch(x)))


def is_lean_compatible(block: nn.Module) -> bool:
    """Whether ``block`` is a timm ``Block`` with a LayerNorm LN2 and a timm ``Mlp`` of Linear layers with GELU."""
    mlp = getattr(block, "mlp", None)
    return (type(block) is Block and isinstance(block.norm2, nn.LayerNorm) and type(mlp) is Mlp
            and isinstance(mlp.fc1, nn.Linear) and isinstance(mlp.act, GELUS))


def use_lean_blocks(vit: nn.Module) -> int:
    """Replaces every lean-compatible block of ``vit`` by a ``LeanBlock`` over the same modules; other blocks (EVA,
    SwiGLU MLPs, ...) stay as they are. Returns how many were replaced."""
    replaced = 0
    for index, block in enumerate(vit.blocks):
        if is_lean_compatible(block):
            vit.blocks[index] = LeanBlock(block)
            replaced += 1
    return replaced
