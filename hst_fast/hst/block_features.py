"""What each side block receives from its ViT block."""
from __future__ import annotations

from typing import NamedTuple

import torch


class BlockFeatures(NamedTuple):
    """What side block k receives from ViT block k."""

    meta: torch.Tensor  # [B, G, D]: the block's meta outputs M_k (faithful) or its key token, G = 1 (frozen)
    patches: torch.Tensor  # [B, Hv, Wv, D]: patch tokens P_k, possibly batch-strided
