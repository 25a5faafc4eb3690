"""What each side block receives from its ViT block, and the ViT's token embedding both trunks start from."""
from __future__ import annotations

from typing import NamedTuple, Tuple

import torch
import torch.nn as nn


class BlockFeatures(NamedTuple):
    """What side block k receives from ViT block k."""

    meta: torch.Tensor  # [B, G, D]: the block's meta outputs M_k (faithful) or its class token (frozen)
    patches: torch.Tensor  # [B, Hv, Wv, D]: patch tokens P_k, possibly batch-strided


def embed_tokens(vit: nn.Module, images: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int]]:
    """Patch embedding, class token and (resampled) position embedding: ([B, 1 + Hv*Wv, D], (Hv, Wv))."""
    patches = vit.patch_embed(images)  # [B, Hv, Wv, D] (timm dynamic_img_size)
    tokens = vit.norm_pre(vit.patch_drop(vit._pos_embed(patches)))
    return tokens, (patches.shape[1], patches.shape[2])
