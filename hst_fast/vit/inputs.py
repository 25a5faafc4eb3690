"""Input validation shared by every model of the package."""
from __future__ import annotations

from typing import Optional, Tuple

import torch


def check_images(
    images: torch.Tensor, owner: str, in_chans: int, patch_size: Tuple[int, int], stride: Optional[int]
) -> None:
    """Raises ``ValueError`` unless ``images`` is a float [B, in_chans, H, W] batch whose H and W are
    multiples of the ViT ``patch_size`` and, when given, of ``stride`` (a feature map's coarsest stride)."""
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != in_chans:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"{owner} expects images of shape [B, {in_chans}, H, W], got {shape}")
    if not images.is_floating_point():
        raise ValueError(f"{owner} expects floating-point images, got {images.dtype}")
    height, width = images.shape[-2:]
    strides = (stride or 1, stride or 1)
    if any(size % multiple for size, multiple in zip((height, width, height, width), (*strides, *patch_size))):
        coarsest = f"multiples of {stride} (the coarsest feature stride) and " if stride else "multiples "
        raise ValueError(
            f"image size {height}x{width} is not supported: height and width must be {coarsest}"
            f"of the ViT patch size {tuple(patch_size)}"
        )
