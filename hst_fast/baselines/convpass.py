"""Convpass (Jie & Deng, 2022, "Convolutional Bypasses Are Better Vision Transformer Adapters").

Each ViT block gets a convolutional bypass in parallel with its attention and (for "Convpass",
not "Convpass_attn") one in parallel with its MLP. A bypass reads the same normalized tokens as
the branch it parallels and its output is added with a scale s:

    h = norm1(x);  x = x + attn(h) + s * bypass_attn(h)
    h = norm2(x);  x = x + mlp(h)  + s * bypass_mlp(h)

Trainable parameters per bypass with ViT width D and hidden width d (default 8):
D*d + d (1x1 down) + d*d*9 + d (3x3 conv) + d*D + D (1x1 up). On ViT-B/16 (D=768, 12 blocks,
two bypasses each) that is 2 x 12 x 13,648 = 327,552, the paper's "0.33M"; the task head
(e.g. 76,900 for 100 classes) comes on top, as in the paper's count which excludes the head.
"""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn as nn
from timm.models.vision_transformer import Block


class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x): CLIP's GELU approximation, the activation of the Convpass paper."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class Convpass(nn.Module):
    """One bypass: 1x1 down (D -> d), QuickGELU, 3x3 conv on the patch grid (d -> d), QuickGELU, dropout, 1x1 up.

    The prefix tokens (class token, register tokens) are each convolved as their own 1x1 image,
    where the zero-padded 3x3 conv reduces to its centre tap.
    Init as the authors' code: down xavier-uniform, conv the identity at its centre tap, up zero;
    so the bypass outputs zero and training starts from the pretrained ViT.
    """

    def __init__(self, embed_dim: int, hidden_dim: int = 8, dropout: float = 0.1):
        """embed_dim: ViT width D; hidden_dim: bottleneck width d; dropout: on the hidden activations."""
        super().__init__()
        self.hidden_dim = hidden_dim
        self.down = nn.Linear(embed_dim, hidden_dim)  # a 1x1 conv over tokens
        self.conv = nn.Conv2d(hidden_dim, hidden_dim, kernel_size=3, padding=1)
        self.up = nn.Linear(hidden_dim, embed_dim)
        self.act = QuickGELU()
        self.dropout = nn.Dropout(dropout)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        nn.init.xavier_uniform_(self.down.weight)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.conv.weight)
        self.conv.weight[:, :, 1, 1] = torch.eye(self.hidden_dim, device=self.conv.weight.device)
        nn.init.zeros_(self.conv.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor, grid: Tuple[int, int], num_prefix_tokens: int) -> torch.Tensor:
        """x: [B, P + H*W, D] (P prefix tokens, then the H x W grid ``grid``) -> [B, P + H*W, D]."""
        batch = x.shape[0]
        hidden = self.act(self.down(x))
        prefix = hidden[:, :num_prefix_tokens].reshape(-1, self.hidden_dim, 1, 1)  # each a 1x1 image
        patches = hidden[:, num_prefix_tokens:].unflatten(1, grid).permute(0, 3, 1, 2)  # [B, d, H, W]
        prefix = self.conv(prefix).reshape(batch, num_prefix_tokens, self.hidden_dim)
        patches = self.conv(patches).flatten(2).transpose(1, 2)
        hidden = self.dropout(self.act(torch.cat([prefix, patches], dim=1)))
        return self.up(hidden)


class ConvpassPair(nn.Module):
    """The bypasses of one ViT block; ``forward`` runs that block with them."""

    def __init__(self, embed_dim: int, hidden_dim: int, scale: float, attn: bool = True, mlp: bool = True,
                 dropout: float = 0.1):
        """embed_dim: ViT width; hidden_dim: bypass width d; scale: s; attn / mlp: which branches get a bypass;
        dropout: inside each bypass."""
        super().__init__()
        self.scale = scale
        self.attn = Convpass(embed_dim, hidden_dim, dropout) if attn else None
        self.mlp = Convpass(embed_dim, hidden_dim, dropout) if mlp else None

    def forward(self, block: Block, x: torch.Tensor, grid: Tuple[int, int], num_prefix_tokens: int) -> torch.Tensor:
        """Runs the timm ``block`` on x [B, P + H*W, D] with the bypasses added."""
        h = block.norm1(x)
        x = x + block.drop_path1(block.ls1(block.attn(h)))
        if self.attn is not None:  # drop-path masks drawn apart from the branch's, as in the paper's code
            x = x + block.drop_path1(self.scale * self.attn(h, grid, num_prefix_tokens))
        h = block.norm2(x)
        x = x + block.drop_path2(block.ls2(block.mlp(h)))
        if self.mlp is not None:
            x = x + block.drop_path2(self.scale * self.mlp(h, grid, num_prefix_tokens))
        return x
