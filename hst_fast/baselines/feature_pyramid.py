"""ViTDet's simple feature pyramid (Li et al., 2022): strides 4/8/16/32 from one stride-16 ViT map."""
from __future__ import annotations

from typing import List, Sequence

import torch
import torch.nn as nn
from timm.layers import LayerNorm2d

from hst_fast.constants import TASK_PRESETS


class SimpleFeaturePyramid(nn.Module):
    """[B, D, H/16, W/16] -> four maps [B, C_s, H/2^(s+1), W/2^(s+1)], s = 1..4.

    Stride 4: two stride-2 transposed convs (D -> D/2 -> D/4, LayerNorm2d and GELU between);
    stride 8: one (D -> D/2); stride 16: the map itself; stride 32: 2x2 max pool. Each level then
    gets a 1x1 conv to C_s and a 3x3 conv, both bias-free and followed by LayerNorm2d (ViTDet's "LN").
    Only for patch size 16 (the transposed convs and pool assume a stride-16 input).
    """

    def __init__(self, embed_dim: int, out_channels: Sequence[int] = tuple(TASK_PRESETS["det"]["side_dims"])):
        """embed_dim: ViT width D; out_channels: C_1..C_4 for strides 4, 8, 16, 32."""
        super().__init__()
        half, quarter = embed_dim // 2, embed_dim // 4
        self.scales = nn.ModuleList([
            nn.Sequential(
                nn.ConvTranspose2d(embed_dim, half, kernel_size=2, stride=2), LayerNorm2d(half), nn.GELU(),
                nn.ConvTranspose2d(half, quarter, kernel_size=2, stride=2),
            ),
            nn.ConvTranspose2d(embed_dim, half, kernel_size=2, stride=2),
            nn.Identity(),
            nn.MaxPool2d(kernel_size=2, stride=2),
        ])
        self.outputs = nn.ModuleList([
            nn.Sequential(
                nn.Conv2d(in_dim, out_dim, kernel_size=1, bias=False), LayerNorm2d(out_dim),
                nn.Conv2d(out_dim, out_dim, kernel_size=3, padding=1, bias=False), LayerNorm2d(out_dim),
            )
            for in_dim, out_dim in zip([quarter, half, embed_dim, embed_dim], out_channels, strict=True)
        ])
        for module in self.outputs.modules():
            if isinstance(module, nn.Conv2d):  # ViTDet's c2_msra_fill
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        return [output(scale(x)) for scale, output in zip(self.scales, self.outputs, strict=True)]
