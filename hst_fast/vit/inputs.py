"""Input validation shared by every model of the package."""
from __future__ import annotations

from typing import Optional, Tuple

import torch


def check_images(
    images: torch.Tensor, owner: str, in_chans: int, patch_size: Tuple[int, int], stride: Optional[int],
    pads_to_patch: bool = False,
) -> None:
    """Raises ``ValueError`` unless ``images`` is a float [B, in_chans, H, W] batch whose H and W are multiples of
    ``stride`` (a feature map's coarsest stride) when given, and of the ViT ``patch_size`` unless the ViT pads
    images to a patch multiple itself (``pads_to_patch``: timm's ``dynamic_img_pad``, e.g. patch 14 at 32 multiples).
    """
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != in_chans:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"{owner} expects images of shape [B, {in_chans}, H, W], got {shape}")
    if not images.is_floating_point():
        raise ValueError(f"{owner} expects floating-point images, got {images.dtype}")
    height, width = images.shape[-2:]
    multiples = [stride or 1] + ([] if pads_to_patch else list(patch_size))
    if any(size % multiple for size in (height, width) for multiple in multiples):
        coarsest = f"multiples of {stride} (the coarsest feature stride)" if stride else "multiples"
        if pads_to_patch:
            rule = (f"{coarsest}; the ViT's patch size {tuple(patch_size)} need not divide them: the ViT pads the "
                    "image at the bottom and right up to a multiple of its patch (timm dynamic_img_pad)")
        else:
            rule = f"{coarsest}{' and ' if stride else ' '}of the ViT patch size {tuple(patch_size)}"
        raise ValueError(f"image size {height}x{width} is not supported: height and width must be {rule}")
