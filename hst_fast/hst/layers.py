"""Small pieces the HST modules share: the backend-run LayerNorm, token/map layouts, side-network init."""
from __future__ import annotations

import math
from typing import Tuple

import torch
import torch.nn as nn
from timm.layers import trunc_normal_

from hst_fast.backend import KernelOps


class OpsLayerNorm(nn.LayerNorm):
    """``nn.LayerNorm`` (same parameters and state-dict names) that runs ``ops.layer_norm``."""

    def __init__(self, dim: int, eps: float, ops: KernelOps):
        """dim: normalized width; eps: variance epsilon; ops: the kernel backend."""
        super().__init__(dim, eps=eps)
        self.ops = ops

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[..., dim] -> [..., dim]."""
        return self.ops.layer_norm(x, self.weight, self.bias, self.eps)


def tokens_to_map(tokens: torch.Tensor, hw: Tuple[int, int]) -> torch.Tensor:
    """[B, H*W, C] tokens -> [B, C, H, W] feature map (a channels-last view)."""
    return tokens.transpose(1, 2).reshape(tokens.shape[0], -1, *hw)


def map_to_tokens(x: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] feature map -> contiguous [B, H*W, C] tokens (the fused kernels take contiguous rows)."""
    return x.flatten(2).transpose(1, 2).contiguous()


def init_side_weights(module: nn.Module) -> None:
    """HST.md §3 init: Linear trunc-normal(.02)/zero bias, LayerNorm 1/0, Conv normal(0, sqrt(2/fan_out))."""
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Conv2d):
        fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels // module.groups
        nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
        if module.bias is not None:
            nn.init.zeros_(module.bias)
