"""The side block of HST.md §3: MetaT cross-attention, FG injection, feed-forward, each with its residual.

Modules hold parameters under the names the released code uses inside a block (``norm1``, ``attn.q``,
``mlp.fc1``, ...) and run their math through the ``KernelOps`` chosen once at build time
(``hst_fast.backend``), so the same module runs the PyTorch reference or the Triton kernels.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn as nn

from hst_fast.backend import KernelOps


class SideAttention(nn.Module):
    """MetaT cross-attention: ``x + Proj(MultiHead(q=Wq LN1(x), k=Wk kv, v=Wv kv))`` over the G+1 keys."""

    def __init__(self, dim: int, num_heads: int, ops: KernelOps):
        """dim: stage width d_s; num_heads: h_s; ops: the kernel backend."""
        super().__init__()
        self.ops = ops
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(
        self, x: torch.Tensor, kv: torch.Tensor, norm: nn.LayerNorm, branch_scale: Optional[torch.Tensor]
    ) -> torch.Tensor:
        """x: [B, N, d]; kv: [B, G+1, d]; norm: the block's LN1; branch_scale: [B] drop-path or None."""
        return self.ops.side_attention(
            x, kv, norm.weight, norm.bias, self.q.weight, self.q.bias, self.k.weight, self.k.bias,
            self.v.weight, self.v.bias, self.proj.weight, self.proj.bias, self.num_heads, norm.eps, branch_scale,
        )  # fmt: skip


class SideMlp(nn.Module):
    """Feed-forward: ``x + FC2(GELU(FC1(LN2(x))))``, hidden 4d, exact GELU."""

    def __init__(self, dim: int, ops: KernelOps, mlp_ratio: float = 4.0):
        """dim: stage width d_s; ops: the kernel backend; mlp_ratio: hidden width over d_s."""
        super().__init__()
        self.ops = ops
        self.fc1 = nn.Linear(dim, int(dim * mlp_ratio))
        self.fc2 = nn.Linear(int(dim * mlp_ratio), dim)

    def forward(self, x: torch.Tensor, norm: nn.LayerNorm, branch_scale: Optional[torch.Tensor]) -> torch.Tensor:
        """x: [B, N, d]; norm: the block's LN2; branch_scale: [B] drop-path or None."""
        return self.ops.side_ffn(
            x, norm.weight, norm.bias, self.fc1.weight, self.fc1.bias, self.fc2.weight, self.fc2.bias, norm.eps,
            branch_scale,
        )


class SideBlock(nn.Module):
    """One side block: attention over the bridged keys, FG injection of the bridged patches, feed-forward."""

    def __init__(self, dim: int, num_heads: int, drop_path: float, ops: KernelOps):
        """dim: stage width d_s; num_heads: h_s; drop_path: stochastic-depth rate of this block."""
        super().__init__()
        self.ops = ops
        self.drop_path = drop_path
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = SideAttention(dim, num_heads, ops)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = SideMlp(dim, ops)

    def _branch_scale(self, x: torch.Tensor) -> Optional[torch.Tensor]:
        """Per-sample drop-path scale [B] (keep / keep_prob), or None when inactive."""
        if not self.training or self.drop_path == 0.0:
            return None
        keep_prob = 1.0 - self.drop_path
        return x.new_empty(x.shape[0]).bernoulli_(keep_prob).div_(keep_prob)

    def forward(self, x: torch.Tensor, kv: torch.Tensor, fg: torch.Tensor, hw: Tuple[int, int]) -> torch.Tensor:
        """x: [B, N, d] side tokens on grid hw; kv: [B, G+1, d] keys; fg: [B, Hv, Wv, d] bridged ViT patches."""
        x = self.attn(x, kv, self.norm1, self._branch_scale(x))
        x = self.ops.fg_injection(x, fg, hw)
        return self.mlp(x, self.norm2, self._branch_scale(x))
