"""LoRA (Hu et al., 2021) on the linear layers of a frozen timm ViT: W x + (alpha / r) B A x."""
from __future__ import annotations

import math
from typing import Iterator, List, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer

TARGET_PATHS = {"qkv": "attn.qkv", "proj": "attn.proj", "fc1": "mlp.fc1", "fc2": "mlp.fc2"}


class LoRALinear(nn.Linear):
    """An ``nn.Linear`` with a rank-r update: ``y = x W^T + b + scale * dropout(x) A^T B^T``.

    Takes over the parameters of the layer it replaces, so the frozen weight keeps its
    state-dict name (``...qkv.weight``) beside ``...qkv.lora_A`` [r, in] and ``...qkv.lora_B`` [out, r].
    A is Kaiming-uniform (as ``nn.Linear`` and the LoRA reference code), B is zero: the model
    starts as the pretrained one. ``merge()`` folds the update into W for inference.
    """

    def __init__(self, base: nn.Linear, rank: int, scale: float, dropout: float = 0.0):
        """base: the layer to adapt (its weight and bias are reused, not copied); rank: r;
        scale: alpha / r; dropout: on the LoRA branch's input only."""
        super().__init__(base.in_features, base.out_features, bias=base.bias is not None, device="meta")
        self.weight, self.bias = base.weight, base.bias
        self.rank = rank
        self.scale = scale
        factory = dict(device=base.weight.device, dtype=base.weight.dtype)
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, **factory))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, **factory))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False
        # the weight as it was before merge(), so that unmerge() restores it bit for bit (not in state_dict)
        self.register_buffer("weight_before_merge", None, persistent=False)

    def delta_weight(self) -> torch.Tensor:
        """scale * B A: [out, in]."""
        return self.scale * (self.lora_B @ self.lora_A)

    @torch.no_grad()
    def merge(self) -> None:
        """W <- W + scale * B A; forward then costs one matmul. Keeps a copy of W for ``unmerge``."""
        if self.merged:
            return
        self.weight_before_merge = self.weight.detach().clone()
        self.weight.add_(self.delta_weight().to(self.weight.dtype))
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Restores the weight saved by ``merge`` exactly (not W - scale * B A, which would round)."""
        if not self.merged:
            return
        self.weight.copy_(self.weight_before_merge)
        self.weight_before_merge = None
        self.merged = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(x, self.weight, self.bias)
        if self.merged:
            return out
        return out + self.scale * F.linear(F.linear(self.lora_dropout(x), self.lora_A), self.lora_B)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.rank}, scale={self.scale:g}, merged={self.merged}"


def inject_lora(vit: VisionTransformer, targets: List[str], rank: int, scale: float, dropout: float = 0.0) -> None:
    """Replaces each block's ``targets`` (names of ``TARGET_PATHS``) with ``LoRALinear`` in place."""
    for index, block in enumerate(vit.blocks):
        for target in targets:
            parent_name, child_name = TARGET_PATHS[target].split(".")
            parent = getattr(block, parent_name, None)
            layer = getattr(parent, child_name, None)
            if not isinstance(layer, nn.Linear):
                raise ValueError(
                    f"LoRA target {target!r}: blocks.{index}.{TARGET_PATHS[target]} is "
                    f"{type(layer).__name__}, not nn.Linear"
                )
            if min(layer.in_features, layer.out_features) < rank:
                raise ValueError(
                    f"lora_rank={rank} exceeds blocks.{index}.{TARGET_PATHS[target]}'s "
                    f"{layer.in_features} -> {layer.out_features} (a rank above min(in, out) adds nothing)"
                )
            setattr(parent, child_name, LoRALinear(layer, rank, scale, dropout))


def lora_layers(module: nn.Module) -> Iterator[Tuple[str, LoRALinear]]:
    """Every ``LoRALinear`` under ``module`` with its name."""
    for name, child in module.named_modules():
        if isinstance(child, LoRALinear):
            yield name, child
