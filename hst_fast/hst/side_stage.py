"""A side stage of the hierarchical side network (HST.md §3): embedding, one side block per paired ViT
block (each fed through the stage's bridge), stage norm."""
from __future__ import annotations

from typing import Iterator, List, Sequence, Tuple

import torch
import torch.nn as nn

from hst_fast.backend import KernelOps
from hst_fast.hst.block_features import BlockFeatures
from hst_fast.hst.bridge import Bridge
from hst_fast.hst.layers import OpsLayerNorm, init_side_weights, map_to_tokens
from hst_fast.hst.side_block import SideBlock


class ConvStem(nn.Module):
    """Stage-1 embedding: Conv3x3/s2 (no bias), BN, ReLU, Conv2x2/s2, LayerNorm -> tokens at H/4 x W/4."""

    def __init__(self, dim: int, ops: KernelOps, in_chans: int = 3):
        """dim: stage-1 width d_1; ops: the kernel backend; in_chans: image channels."""
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, dim, kernel_size=3, stride=2, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(dim)
        self.act = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(dim, dim, kernel_size=2, stride=2)
        self.norm = OpsLayerNorm(dim, 1e-5, ops)

    def forward(self, images: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int]]:
        """[B, 3, H, W] -> ([B, H/4*W/4, d_1], (H/4, W/4))."""
        x = self.conv2(self.act(self.bn(self.conv1(images))))
        return self.norm(map_to_tokens(x)), (x.shape[2], x.shape[3])


class StageEmbed(nn.Module):
    """Stage s > 1 embedding: Conv3x3/s2 on the previous stage map, LayerNorm -> tokens."""

    def __init__(self, in_dim: int, dim: int, ops: KernelOps):
        """in_dim: previous stage width d_{s-1}; dim: this stage's width d_s; ops: the kernel backend."""
        super().__init__()
        self.proj = nn.Conv2d(in_dim, dim, kernel_size=3, stride=2, padding=1)
        self.norm = OpsLayerNorm(dim, 1e-5, ops)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int]]:
        """[B, d_{s-1}, H, W] -> ([B, H/2*W/2, d_s], (H/2, W/2))."""
        x = self.proj(x)
        return self.norm(map_to_tokens(x)), (x.shape[2], x.shape[3])


class SideStage(nn.Module):
    """Side stage s: embedding, bridge T_Bridge_s, one meta norm LNp_k + side block per paired ViT block,
    stage norm LNs_s."""

    def __init__(
        self, embed: nn.Module, vit_dim: int, dim: int, num_heads: int, drop_paths: Sequence[float], ops: KernelOps
    ):
        """embed: ConvStem or StageEmbed; vit_dim: D; dim: d_s; num_heads: h_s; drop_paths: one rate per side
        block; ops: the kernel backend."""
        super().__init__()
        self.embed = embed
        self.bridge = Bridge(vit_dim, dim)
        self.meta_norms = nn.ModuleList([OpsLayerNorm(dim, 1e-5, ops) for _ in drop_paths])
        self.blocks = nn.ModuleList([SideBlock(dim, num_heads, rate, ops) for rate in drop_paths])
        self.norm = OpsLayerNorm(dim, 1e-6, ops)

    def forward(
        self, x: torch.Tensor, features: Iterator[BlockFeatures]
    ) -> Tuple[torch.Tensor, Tuple[int, int]]:
        """x: images [B, 3, H, W] (stage 1) or the previous stage map [B, d_{s-1}, H_{s-1}, W_{s-1}];
        features: the ViT's per-block features, of which this stage takes one per side block, as they come.
        Returns ([B, H_s*W_s, d_s] tokens, (H_s, W_s))."""
        x, hw = self.embed(x)
        for meta_norm, block in zip(self.meta_norms, self.blocks):
            meta, patches = next(features)
            kv, fg = self.bridge(meta, patches, meta_norm, hw)
            x = block(x, kv, fg, hw)
        return self.norm(x), hw


def build_side_stages(
    vit_dim: int, dims: List[int], heads: List[int], depths: List[int], drop_path_rate: float, ops: KernelOps,
    in_chans: int = 3,
) -> nn.ModuleList:
    """The four side stages, drop-path rates linear over all side blocks, initialized per HST.md §3."""
    rates = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
    stages, first = [], 0
    for s, (dim, num_heads, depth) in enumerate(zip(dims, heads, depths)):
        embed = ConvStem(dim, ops, in_chans) if s == 0 else StageEmbed(dims[s - 1], dim, ops)
        stages.append(SideStage(embed, vit_dim, dim, num_heads, rates[first:first + depth], ops))
        first += depth
    stages = nn.ModuleList(stages)
    stages.apply(init_side_weights)
    return stages
