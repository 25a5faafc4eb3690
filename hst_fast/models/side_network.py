"""The hierarchical side network (HSN) of HST.md §3: stage embeddings, side blocks, stages.

Modules hold parameters under the names the released code uses inside a block (``norm1``,
``attn.q``, ``mlp.fc1``, ...) and run their math through a ``KernelOps`` chosen once at build
time (``hst_fast.backend``), so the same module runs the PyTorch reference or the Triton kernels.
"""
from __future__ import annotations

import math
from typing import List, Sequence, Tuple

import torch
import torch.nn as nn
from timm.layers import trunc_normal_

from hst_fast.backend import KernelOps
from hst_fast.kernels.reference import fg_global_token


class OpsLayerNorm(nn.LayerNorm):
    """``nn.LayerNorm`` (same parameters and state-dict names) that runs ``ops.layer_norm``."""

    def __init__(self, dim: int, eps: float, ops: KernelOps):
        super().__init__(dim, eps=eps)
        self.ops = ops

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ops.layer_norm(x, self.weight, self.bias, self.eps)


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


def tokens_to_map(tokens: torch.Tensor, hw: Tuple[int, int]) -> torch.Tensor:
    """[B, H*W, C] tokens -> [B, C, H, W] feature map."""
    return tokens.transpose(1, 2).reshape(tokens.shape[0], -1, *hw)


def map_to_tokens(x: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] feature map -> contiguous [B, H*W, C] tokens (the fused kernels take contiguous rows)."""
    return x.flatten(2).transpose(1, 2).contiguous()


class ConvStem(nn.Module):
    """Stage-1 embedding: Conv3x3/s2 (no bias), BN, ReLU, Conv2x2/s2, LayerNorm -> tokens at H/4 x W/4."""

    def __init__(self, dim: int, ops: KernelOps, in_chans: int = 3):
        """dim: stage-1 width d_1; in_chans: image channels."""
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
        """in_dim: previous stage width d_{s-1}; dim: this stage's width d_s."""
        super().__init__()
        self.proj = nn.Conv2d(in_dim, dim, kernel_size=3, stride=2, padding=1)
        self.norm = OpsLayerNorm(dim, 1e-5, ops)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int]]:
        """[B, d_{s-1}, H, W] -> ([B, H/2*W/2, d_s], (H/2, W/2))."""
        x = self.proj(x)
        return self.norm(map_to_tokens(x)), (x.shape[2], x.shape[3])


class SideAttentionParams(nn.Module):
    """Parameters of a side block's MetaT cross-attention (q from side tokens, k/v from kv)."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)


class SideMlpParams(nn.Module):
    """Parameters of a side block's feed-forward (hidden 4d)."""

    def __init__(self, dim: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, int(dim * mlp_ratio))
        self.fc2 = nn.Linear(int(dim * mlp_ratio), dim)


class SideBlock(nn.Module):
    """One side block (HST.md §3): MetaT cross-attention, FG injection, feed-forward."""

    def __init__(self, dim: int, num_heads: int, drop_path: float, ops: KernelOps):
        """dim: stage width d_s; num_heads: h_s; drop_path: stochastic-depth rate of this block."""
        super().__init__()
        self.ops = ops
        self.drop_path = drop_path
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = SideAttentionParams(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = SideMlpParams(dim)

    def _branch_scale(self, x: torch.Tensor):
        """Per-sample drop-path scale [B] (keep / keep_prob), or None when inactive."""
        if not self.training or self.drop_path == 0.0:
            return None
        keep_prob = 1.0 - self.drop_path
        return x.new_empty(x.shape[0]).bernoulli_(keep_prob).div_(keep_prob)

    def forward(
        self, x: torch.Tensor, kv: torch.Tensor, patches: torch.Tensor, hw: Tuple[int, int], bridge: nn.Linear
    ) -> torch.Tensor:
        """x: [B, N, d] side tokens on grid hw; kv: [B, G+1, d]; patches: [B, Hv, Wv, D] ViT features."""
        a, m = self.attn, self.mlp
        x = self.ops.side_attention(
            x, kv, self.norm1.weight, self.norm1.bias, a.q.weight, a.q.bias, a.k.weight, a.k.bias,
            a.v.weight, a.v.bias, a.proj.weight, a.proj.bias, a.num_heads, self.norm1.eps, self._branch_scale(x),
        )
        x = self.ops.fg_injection(x, patches, bridge.weight, bridge.bias, hw)
        return self.ops.side_ffn(
            x, self.norm2.weight, self.norm2.bias, m.fc1.weight, m.fc1.bias, m.fc2.weight, m.fc2.bias,
            self.norm2.eps, self._branch_scale(x),
        )


class SideStage(nn.Module):
    """Side stage s: embedding, bridge, one meta norm + side block per paired ViT block, stage norm.

    The stage is driven one ViT block at a time (``embed``, ``step`` per block, ``finish``), so a
    caller can feed each block's features as soon as the ViT produces them.
    """

    def __init__(
        self, embed: nn.Module, vit_dim: int, dim: int, num_heads: int, drop_paths: Sequence[float], ops: KernelOps
    ):
        """embed: ConvStem or StageEmbed; vit_dim: D; dim: d_s; drop_paths: one rate per side block."""
        super().__init__()
        self.embed = embed
        self.bridge = nn.Linear(vit_dim, dim)
        self.meta_norms = nn.ModuleList([OpsLayerNorm(dim, 1e-5, ops) for _ in drop_paths])
        self.blocks = nn.ModuleList([SideBlock(dim, num_heads, rate, ops) for rate in drop_paths])
        self.norm = OpsLayerNorm(dim, 1e-6, ops)

    def step(
        self, index: int, x: torch.Tensor, hw: Tuple[int, int], meta: torch.Tensor, patches: torch.Tensor
    ) -> torch.Tensor:
        """Runs side block ``index`` on x [B, N, d] with its ViT block's meta output [B, G, D] and patches."""
        keys = self.meta_norms[index](self.bridge(meta))
        global_token = fg_global_token(patches, self.bridge.weight, self.bridge.bias, hw)
        kv = torch.cat([keys, global_token], dim=1)
        return self.blocks[index](x, kv, patches, hw, self.bridge)

    def finish(self, x: torch.Tensor) -> torch.Tensor:
        """Stage norm: [B, N, d] -> [B, N, d]."""
        return self.norm(x)


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
