"""The timm ViT families hst_fast adapts: one adapter class per family, in a small registry.

Each adapter holds what differs between families, for one timm class:

- ``create_kwargs``: the ``timm.create_model`` arguments that make the ViT take any image size;
- ``checkpoint_filter``: timm's own conversion of the family's original checkpoints;
- ``embed``: image -> the token sequence the first block sees ([prefix tokens, patches]), as timm embeds it
  (class / register tokens, absolute position embedding, the rotary embedding of the patches);
- ``run_block``: one block on ``[meta tokens, prefix tokens, patches]``, with the meta tokens treated as extra
  prefix tokens: whatever depends on position (RoPE) applies to the image tokens exactly as in timm (HST.md §4b);
- ``ln_tuned_norms``: the norms LN-tuning trains;
- ``key_token``: frozen mode's global token (the class token, else the mean patch token);
- ``meta_token_error``: why the faithful mode (meta tokens) is not defined, for a family where it is not.

Families: ``vit`` (timm ``VisionTransformer``: AugReg / original ImageNet-21k ViTs, MAE, DeiT-III, CLIP / OpenCLIP,
DINOv2 with and without registers, SigLIP and global-average-pool ViTs), ``eva`` (timm ``Eva``: EVA-02) and
``sam`` (timm ``VisionTransformerSAM``, frozen mode only).
"""
from __future__ import annotations

import re
from abc import ABC, abstractmethod
from functools import partial
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Tuple

import timm
import torch
import torch.nn as nn
from timm.layers import resample_abs_pos_embed_nhwc
from timm.models import eva, vision_transformer, vision_transformer_sam

from hst_fast.constants import ATTN_BACKENDS


class ViTEmbedding(NamedTuple):
    """An image embedded for the first ViT block."""

    tokens: Optional[torch.Tensor]  # [B, P + Hv*Wv, D]: P prefix tokens (class, registers), then patches; SAM: NHWC
    grid: Tuple[int, int]  # (Hv, Wv), the patch grid (padded up to a patch multiple where the ViT pads)
    num_prefix_tokens: int  # P
    has_class_token: bool  # whether the first prefix token is a class token
    rope: Optional[torch.Tensor] = None  # EVA: rotary embedding of the patch tokens, [Hv*Wv, 2 * head_dim]


CheckpointFilter = Callable[[Dict[str, torch.Tensor], nn.Module], Dict[str, torch.Tensor]]


class ViTFamily(ABC):
    """How HST runs the ViTs of one timm class (a family); subclasses fill in what differs."""

    name: str = ""
    vit_class: type = nn.Module
    examples: Tuple[str, ...] = ()  # timm model names, for messages and docs
    create_kwargs: Dict[str, Any] = {}
    attn_backends: Tuple[str, ...] = ("sdpa", "eager")
    # LN-tuning (HST.md §1, §4b): every block's pre-norm LayerNorms, the norms that feed its attention and MLP
    # from the residual stream. Norms elsewhere (CLIP's norm_pre before the blocks, EVA-02's norm inside the
    # SwiGLU MLP, attention-internal norms) stay frozen: the trainable set is the same two norms per block in
    # every family, as the paper's count of ``4 D`` LN parameters per block assumes.
    ln_tuned_norms: Tuple[str, ...] = ("norm1", "norm2")
    checkpoint_signature: Tuple[str, ...] = ()  # key fragments that mark this family's checkpoints
    checkpoint_filter: CheckpointFilter  # timm's ``checkpoint_filter_fn`` of the family (original -> timm names)

    def check(self, vit: nn.Module) -> None:
        """Raises ``ValueError`` when ``vit`` uses an option HST cannot run."""
        if not isinstance(vit, self.vit_class):
            raise ValueError(f"the {self.name!r} family expects a timm {self.vit_class.__name__}, "
                             f"got {type(vit).__name__}")
        drop = getattr(vit, "patch_drop", None)
        if drop is not None and not isinstance(drop, nn.Identity):
            raise ValueError("HST feeds every patch token to the side network: patch_drop_rate must be 0")

    def meta_token_error(self, vit: nn.Module) -> Optional[str]:
        """Why meta tokens (backbone_grad='full') cannot enter this ViT, or None when they can."""
        return None

    @abstractmethod
    def embed(self, vit: nn.Module, images: torch.Tensor) -> ViTEmbedding:
        """[B, C, H, W] -> the first block's input, as timm's ``forward_intermediates`` embeds it."""

    def run_block(
        self, vit: nn.Module, block_id: int, tokens: torch.Tensor, embedding: ViTEmbedding, num_meta: int
    ) -> torch.Tensor:
        """Block ``block_id`` on ``tokens`` [B, G + P + Hv*Wv, D] whose first ``num_meta`` (G) are meta tokens."""
        return vit.blocks[block_id](tokens)

    def patch_tokens(self, tokens: torch.Tensor, num_leading: int, grid: Tuple[int, int]) -> torch.Tensor:
        """A block's output -> its patch tokens [B, Hv, Wv, D] (a view); ``num_leading`` = meta + prefix tokens."""
        return tokens[:, num_leading:].unflatten(1, grid)

    def key_token(self, tokens: torch.Tensor, patches: torch.Tensor, embedding: ViTEmbedding) -> torch.Tensor:
        """Frozen mode's global token of one block [B, 1, D] (HST.md §4b): its class token when the family has
        one; otherwise the mean patch token, the feature timm's 'avg' pooling of these models reads (register
        tokens are not image summaries the pretrained models were trained to pool)."""
        if embedding.has_class_token:
            return tokens[:, :1]
        return patches.mean(dim=(1, 2)).unsqueeze(1)

    def describe(self) -> str:
        return f"{self.name} (timm {self.vit_class.__name__}, e.g. {', '.join(self.examples)})"


class VisionTransformerFamily(ViTFamily):
    """timm ``VisionTransformer``: any prefix tokens (class, registers, none), position embedding with or without the
    class token (``no_embed_class``), LayerScale, pre-norm (``norm_pre``), patch 14 or 16. Its blocks hold no
    position-dependent logic, so meta tokens enter as plain extra prefix tokens."""

    name = "vit"
    vit_class = vision_transformer.VisionTransformer
    examples = ("vit_base_patch16_224", "deit3_base_patch16_224", "vit_base_patch16_clip_224",
                "vit_base_patch14_reg4_dinov2", "vit_base_patch16_siglip_224")
    create_kwargs = dict(dynamic_img_size=True, dynamic_img_pad=True)
    attn_backends = ATTN_BACKENDS
    checkpoint_signature = ("attn.qkv.weight", "Transformer/encoderblock")

    # adapt_layer_scale: DeiT-III's original ``gamma_1`` -> ``ls1.gamma``, as timm's deit.py loads them; no timm
    # VisionTransformer key holds ``gamma_``, so the rename touches DeiT-III originals only.
    checkpoint_filter = staticmethod(partial(vision_transformer.checkpoint_filter_fn, adapt_layer_scale=True))

    def embed(self, vit: nn.Module, images: torch.Tensor) -> ViTEmbedding:
        patches = vit.patch_embed(images)  # [B, Hv, Wv, D] (dynamic_img_size)
        tokens = vit.norm_pre(vit.patch_drop(vit._pos_embed(patches)))
        return ViTEmbedding(tokens, (patches.shape[1], patches.shape[2]), vit.num_prefix_tokens,
                            vit.cls_token is not None)


class EvaFamily(ViTFamily):
    """timm ``Eva`` (EVA-02): rotary position embedding on the patch tokens (after the prefix tokens), SwiGLU MLP
    with its own norm, absolute position embedding. Meta tokens join the prefix that RoPE skips: each attention's
    ``num_prefix_tokens`` (timm's own count of leading tokens without RoPE) is raised by G while the block runs."""

    name = "eva"
    vit_class = eva.Eva
    examples = ("eva02_base_patch14_224", "eva02_large_patch14_448", "eva02_base_patch16_clip_224")
    create_kwargs = dict(dynamic_img_size=True, dynamic_img_pad=True)
    checkpoint_signature = ("attn.q_bias", "attn.q_proj", "mlp.fc1_g", "mlp.w1", "mlp.ffn_ln")

    checkpoint_filter = staticmethod(eva.checkpoint_filter_fn)

    def check(self, vit: nn.Module) -> None:
        super().check(vit)
        if not all(isinstance(block, eva.EvaBlock) for block in vit.blocks):
            raise ValueError("HST runs pre-norm EVA blocks (EvaBlock); use_post_norm=True is not supported")

    def embed(self, vit: nn.Module, images: torch.Tensor) -> ViTEmbedding:
        patches = vit.patch_embed(images)  # [B, Hv, Wv, D] (dynamic_img_size)
        tokens, rope = vit._pos_embed(patches)
        return ViTEmbedding(vit.norm_pre(tokens), (patches.shape[1], patches.shape[2]), vit.num_prefix_tokens,
                            vit.cls_token is not None, rope)

    def run_block(
        self, vit: nn.Module, block_id: int, tokens: torch.Tensor, embedding: ViTEmbedding, num_meta: int
    ) -> torch.Tensor:
        block, rope = vit.blocks[block_id], embedding.rope
        if rope is not None and vit.rope_mixed:
            rope = rope[block_id]  # mixed-mode RoPE: one embedding per block
        if not num_meta:
            return block(tokens, rope=rope)
        attn = block.attn
        num_prefix = attn.num_prefix_tokens
        attn.num_prefix_tokens = num_prefix + num_meta  # inside this call, so checkpoint's recompute does it too
        try:
            return block(tokens, rope=rope)
        finally:
            attn.num_prefix_tokens = num_prefix


class SAMFamily(ViTFamily):
    """timm ``VisionTransformerSAM`` (``samvit_*``): NHWC blocks, windowed attention on the 2-D grid with relative
    position bias, a few global blocks, no class token. Frozen mode only (``meta_token_error``)."""

    name = "sam"
    vit_class = vision_transformer_sam.VisionTransformerSAM
    examples = ("samvit_base_patch16", "samvit_large_patch16", "samvit_huge_patch16")
    create_kwargs: Dict[str, Any] = {}  # its patch embedding takes any multiple of the patch already
    checkpoint_signature = ("attn.rel_pos_h", "image_encoder.", "neck.0.weight")

    checkpoint_filter = staticmethod(vision_transformer_sam.checkpoint_filter_fn)

    def meta_token_error(self, vit: nn.Module) -> Optional[str]:
        window = max(block.window_size for block in vit.blocks)
        return (
            f"backbone_grad='full' (meta tokens) is not defined for SAM's ViT: its blocks attend within {window}x"
            f"{window} windows of the 2-D patch grid (a few global blocks excepted), with a relative position bias "
            "between grid positions. Meta tokens have no grid position: they would have to be copied into every "
            "window (giving one meta output per window, not one M_k) and be given a position bias the pretrained "
            "model never learned, which changes how the pretrained blocks attend. Use backbone_grad='none' (frozen "
            "streaming mode)"
        )

    def embed(self, vit: nn.Module, images: torch.Tensor) -> ViTEmbedding:
        """Tokens stay a [B, Hv, Wv, D] grid (SAM's blocks take NHWC); no prefix tokens."""
        x = vit.patch_embed(images)
        if vit.pos_embed is not None:
            x = x + resample_abs_pos_embed_nhwc(vit.pos_embed, x.shape[1:3])
        x = vit.norm_pre(vit.patch_drop(vit.pos_drop(x)))
        return ViTEmbedding(x, (x.shape[1], x.shape[2]), 0, False)

    def patch_tokens(self, tokens: torch.Tensor, num_leading: int, grid: Tuple[int, int]) -> torch.Tensor:
        return tokens


FAMILIES: Tuple[ViTFamily, ...] = (VisionTransformerFamily(), EvaFamily(), SAMFamily())


def supported_families() -> str:
    """One line per family, for error messages."""
    return "; ".join(family.describe() for family in FAMILIES)


def family_for_model(vit_name: str, timm_kwargs: Dict[str, Any]) -> ViTFamily:
    """The family of the timm model ``vit_name`` with ``timm_kwargs``, found by building it on the meta device (no
    memory, no init); ``ValueError`` listing the supported families."""
    with torch.device("meta"):
        probe = timm.create_model(vit_name, pretrained=False, num_classes=0, **timm_kwargs)
    return family_of(probe, vit_name)


def family_of(vit: nn.Module, vit_name: Optional[str] = None) -> ViTFamily:
    """The family of a built ViT (its exact class); ``ValueError`` listing the supported ones."""
    for family in FAMILIES:
        if type(vit) is family.vit_class:
            return family
    what = f"timm model {vit_name!r} (a {type(vit).__name__})" if vit_name else type(vit).__name__
    raise ValueError(f"{what} is not of a ViT family hst_fast supports. Supported families: {supported_families()}")


def describe_checkpoint(state_dict: Dict[str, Any]) -> str:
    """What a checkpoint's keys say it holds: its likely family, block count and width (for error messages)."""
    for wrapper in ("model_ema", "model", "module", "state_dict"):  # the wrappers timm's filters unwrap
        if isinstance(state_dict.get(wrapper), dict):
            state_dict = state_dict[wrapper]
    keys = [key for key in state_dict if isinstance(key, str)]
    # From the most to the least distinctive signature: SAM and EVA files also hold ``attn.qkv.weight``.
    family = next((f for f in reversed(FAMILIES) if any(s in k for s in f.checkpoint_signature for k in keys)), None)
    blocks = {m.group(1) for m in map(re.compile(r"(?:^|\.)blocks\.(\d+)\.").search, keys) if m}
    widths: List[int] = [int(state_dict[k].shape[0]) for k in keys if k.endswith("patch_embed.proj.weight")
                         and hasattr(state_dict[k], "shape")]
    kind = f"a checkpoint of family {family.name!r} ({family.vit_class.__name__})" if family else "a checkpoint"
    width = f", width {widths[0]}" if widths else ""
    return f"{kind} with {len(blocks)} blocks{width}"
