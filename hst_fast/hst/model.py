"""The HST model (HST.md): a frozen timm ViT with meta tokens and LN-tuning, plus the side network.

The ViT may be of any family ``hst_fast.vit.families`` supports (ViT, DINOv2, CLIP, SigLIP, DeiT-III, MAE, EVA-02,
SAM); the family adapter says how its blocks run, the rest of HST is the same for all.
"""
from __future__ import annotations

from typing import Dict, Iterable, List, Optional, Tuple, Union

import torch
import torch.nn as nn

from hst_fast.backend import KernelOps
from hst_fast.constants import ATTN_BACKENDS, GRAD_CHECKPOINTING, STRIDE
from hst_fast.hst import official
from hst_fast.hst.block_features import BlockFeatures
from hst_fast.hst.config import HSTConfig
from hst_fast.hst.faithful_trunk import FaithfulTrunk, apply_ln_tuning, create_meta_tokens, is_ln_tuned
from hst_fast.hst.frozen_trunk import FrozenTrunk
from hst_fast.hst.layers import tokens_to_map
from hst_fast.hst.side_stage import build_side_stages
from hst_fast.recompute import lean_ops
from hst_fast.vit.attention import set_attn_backend
from hst_fast.vit.families import family_of
from hst_fast.vit.inputs import check_images
from hst_fast.vit.lean_block import use_lean_blocks
from hst_fast.vit.peft import TrainableSubsetMixin, classifier_head


class HST(TrainableSubsetMixin, nn.Module):
    """Hierarchical Side-Tuning around a timm ViT of a supported family (``hst_fast.vit.families``).

    ``forward(images)`` returns logits [B, num_classes] (the BatchNorm-normalized pooled
    stage-4 feature when num_classes is 0); ``forward_features(images)`` returns the four stage
    maps [B, d_s, H/2^(s+1), W/2^(s+1)].
    """

    def __init__(
        self, vit: nn.Module, config: HSTConfig, ops: KernelOps, attn_backend: str = "sdpa",
        grad_checkpointing: Union[bool, str] = "mlp",
    ):
        """vit: a timm ViT of a supported family built by ``hst_fast.vit.build.build_vit`` (its final norm and head
        are unused); config: architecture; ops: the kernel backend (``hst_fast.backend.resolve_ops``); attn_backend:
        'sdpa' | 'xformers' | 'eager' for the ViT blocks; grad_checkpointing: what of each ViT block to recompute in
        backward instead of keeping (faithful mode): 'mlp' its LN2 + fc1 + GELU (``hst_fast.vit.lean_block``), False
        nothing, True all of it."""
        super().__init__()
        if grad_checkpointing not in GRAD_CHECKPOINTING:
            raise ValueError(f"grad_checkpointing must be one of {GRAD_CHECKPOINTING}, got {grad_checkpointing!r}")
        self.family = family_of(vit)
        self.family.check(vit)
        self.config = config
        self.ops = ops
        self.vit = vit
        self.stage_blocks = config.stage_blocks(len(vit.blocks))
        self.patch_size = vit.patch_embed.patch_size
        self.pads_to_patch = bool(getattr(vit.patch_embed, "dynamic_img_pad", False))
        self.faithful = config.backbone_grad == "full"
        meta_token_error = self.family.meta_token_error(vit) if self.faithful else None
        if meta_token_error:
            raise ValueError(meta_token_error)
        if attn_backend in ATTN_BACKENDS and attn_backend not in self.family.attn_backends:
            raise ValueError(f"attn_backend {attn_backend!r} does not run {type(vit).__name__} blocks; "
                             f"use one of {self.family.attn_backends}")
        set_attn_backend(vit, attn_backend)
        if self.faithful:
            apply_ln_tuning(vit, self.family, ops)
            if grad_checkpointing == "mlp":
                use_lean_blocks(vit)
        self.meta_tokens = create_meta_tokens(len(vit.blocks) if self.faithful else 0, config.num_meta_tokens,
                                              vit.embed_dim)
        checkpoint_blocks = bool(grad_checkpointing) and grad_checkpointing != "mlp"
        self.trunk = (FaithfulTrunk(vit, self.family, self.meta_tokens, checkpoint_blocks) if self.faithful
                      else FrozenTrunk(vit, self.family))
        self.side_stages = build_side_stages(
            vit.embed_dim, config.side_dims, config.side_heads, [len(r) for r in self.stage_blocks],
            config.drop_path_rate, lean_ops(ops), in_chans=vit.patch_embed.proj.in_channels,
        )
        self.head_norm = nn.BatchNorm1d(config.side_dims[-1], affine=False, eps=1e-6)
        self.head = classifier_head(config.side_dims[-1], config.num_classes)
        self.freeze()

    # ----------------------------------------------------------------------------- freezing
    def is_trainable(self, name: str) -> bool:
        """HST.md §4 trainable set: side network, meta tokens, ViT block LayerNorms (faithful mode), head."""
        if name.startswith(("side_stages.", "meta_tokens.", "head.")):
            return True
        return self.faithful and name.startswith("vit.") and is_ln_tuned(name[len("vit."):], self.family)

    def train(self, mode: bool = True) -> "HST":
        """Sets the mode and re-applies freezing; in frozen mode the ViT always runs in eval mode."""
        super().train(mode)
        if not self.faithful:
            self.vit.eval()
        return self

    # ----------------------------------------------------------------------------- checkpoints
    def official_names(self) -> Dict[str, str]:
        """{state-dict key: released-code key} for every tensor."""
        return official.to_official_names(self)

    def official_state_dict(self) -> Dict[str, torch.Tensor]:
        """The model's tensors under the released code's names (``hst_fast.hst.official``)."""
        return official.official_state_dict(self)

    def load_official_state_dict(self, state_dict: Dict[str, torch.Tensor]) -> None:
        """Loads a released-code state dict strictly, naming every mismatched key."""
        official.load_official_state_dict(self, state_dict)

    # ----------------------------------------------------------------------------- forward
    @property
    def out_channels(self) -> List[int]:
        """Channels of the four ``forward_features`` maps (the FPN's ``in_channels``)."""
        return list(self.config.side_dims)

    def check_input(self, images: torch.Tensor) -> None:
        """Raises ``ValueError`` for anything but [B, C, H, W] floats with H, W multiples of 32 (and of the patch,
        unless the ViT pads to it: patch 14)."""
        check_images(images, "HST", self.vit.patch_embed.proj.in_channels, self.patch_size, STRIDE,
                     pads_to_patch=self.pads_to_patch)

    def vit_grid(self, image_size: Tuple[int, int]) -> Tuple[int, int]:
        """The ViT's patch grid (Hv, Wv) for images of ``image_size`` (H, W), padding included."""
        return tuple(self.vit.patch_embed.dynamic_feat_size(tuple(image_size)))

    def forward_stage_tokens(
        self, images: torch.Tensor, vit_features: Optional[Iterable[BlockFeatures]] = None
    ) -> List[Tuple[torch.Tensor, Tuple[int, int]]]:
        """Image -> ViT blocks -> bridges -> side stages; per stage ([B, H_s*W_s, d_s] tokens, (H_s, W_s)).

        The trunk yields each ViT block's features as soon as the block has run, and each side stage takes
        its blocks' features from that stream. ``vit_features`` (frozen mode only) replaces the ViT run with
        stored per-block features (a feature cache).
        """
        self.check_input(images)
        if vit_features is not None and self.faithful:
            raise ValueError("stored ViT features need backbone_grad='none': the faithful model trains inside the ViT")
        block_features = iter(vit_features if vit_features is not None else self.trunk(images))
        outputs, side_input = [], images
        for stage in self.side_stages:
            tokens, hw = stage(side_input, block_features)
            outputs.append((tokens, hw))
            side_input = tokens_to_map(tokens, hw)
        return outputs

    def forward_features(self, images: torch.Tensor) -> List[torch.Tensor]:
        """[B, 3, H, W] -> four stage maps [B, d_s, H/2^(s+1), W/2^(s+1)], contiguous NCHW.

        Contiguous because consumers such as mmcv's RoIAlign index raw NCHW memory: the channels-last
        view ``tokens_to_map`` gives (and a conv's channels-last output after it) would be read wrongly.
        """
        return [tokens_to_map(x, hw).contiguous() for x, hw in self.forward_stage_tokens(images)]

    def forward_head(self, last_stage_tokens: torch.Tensor) -> torch.Tensor:
        """[B, N, d_4] -> mean over tokens -> BatchNorm1d -> head: [B, num_classes] (or [B, d_4])."""
        return self.head(self.head_norm(last_stage_tokens.mean(dim=1)))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_stage_tokens(images)[-1][0])

