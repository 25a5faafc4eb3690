"""``BaselineViT``: a timm ViT adapted by full fine-tuning, a linear probe, LoRA or Convpass.

The same harness as ``hst_fast.hst.HST``: ``forward(images)`` -> logits, ``forward_features(images)``
-> four maps at strides 4/8/16/32 for dense prediction, ``print_trainable_parameters()``,
freezing decided in one place and re-applied by ``train()``, adapters through ``hst_fast.adapter``.
"""
from __future__ import annotations

from typing import List, Tuple

import torch
import torch.nn as nn
from timm.models.vision_transformer import Block, VisionTransformer

from hst_fast.baselines.config import BaselineConfig
from hst_fast.baselines.convpass import ConvpassPair
from hst_fast.baselines.feature_pyramid import SimpleFeaturePyramid
from hst_fast.baselines.lora import inject_lora, lora_layers
from hst_fast.constants import STRIDE
from hst_fast.vit.inputs import check_images
from hst_fast.vit.peft import TrainableSubsetMixin, classifier_head


class BaselineViT(TrainableSubsetMixin, nn.Module):
    """A timm ``VisionTransformer`` with a task head, adapted by ``config.method``.

    Trainable sets (``trainable_named_parameters``), the pyramid and head training in every method:
    - 'full': everything;
    - 'linear': the head only, on the ViT's own pooled feature (``global_pool``: the class token for
      the supervised ``vit_*_patch16_224`` models, whose pretrained head read exactly that feature);
      pass ``global_pool='avg'`` for mean pooling;
    - 'lora': ``lora_A``/``lora_B`` of the ``LoRALinear`` layers in ``config.lora_targets``;
    - 'convpass': the bypasses (``convpass.*``, outside ``vit.``, so the ViT's state dict is unchanged).
    The ViT's final norm is applied before pooling and before the pyramid and is frozen except in 'full'.
    """

    def __init__(self, vit: VisionTransformer, config: BaselineConfig):
        """vit: a headless timm ViT built with ``dynamic_img_size=True`` (``hst_fast.vit.build.build_vit``),
        pretrained weights already loaded; config: method, task and options."""
        super().__init__()
        if not isinstance(vit, VisionTransformer):
            raise ValueError(f"the baselines run timm VisionTransformer models only (ViT, DeiT-III, CLIP, DINOv2, "
                             f"SigLIP, MAE); {config.vit_name} is a timm {type(vit).__name__}")
        self.config = config
        self.vit = vit
        self.patch_size = tuple(vit.patch_embed.patch_size)
        self.num_prefix_tokens = vit.num_prefix_tokens
        embed_dim = vit.embed_dim
        if config.method == "lora":
            inject_lora(vit, config.lora_targets, config.lora_rank, config.lora_scale, config.lora_dropout)
        if config.method == "convpass":
            if not all(type(block) is Block for block in vit.blocks):
                raise ValueError("Convpass runs timm's standard ViT Block (norm1/attn/ls1, norm2/mlp/ls2) only")
            attn, mlp = "attn" in config.convpass_targets, "mlp" in config.convpass_targets
            self.convpass = nn.ModuleList(
                ConvpassPair(embed_dim, config.convpass_dim, config.convpass_scale, attn, mlp, config.convpass_dropout)
                for _ in vit.blocks
            )
        else:
            self.convpass = None
        if config.task == "det":
            if self.patch_size != (16, 16):
                raise ValueError(f"the feature pyramid needs patch size 16; {config.vit_name} has {self.patch_size}")
            self.pyramid = SimpleFeaturePyramid(embed_dim, config.pyramid_channels)
        else:
            self.pyramid = None
        head_dim = getattr(vit, "head_hidden_size", embed_dim)
        self.head = classifier_head(head_dim, config.num_classes)
        self.freeze()

    # ----------------------------------------------------------------------------- freezing
    def is_trainable(self, name: str) -> bool:
        """The parameters ``config.method`` trains (class docstring)."""
        method = self.config.method
        if method == "full" or name.startswith(("head.", "pyramid.")):
            return True
        if method == "lora":
            return name.startswith("vit.") and name.endswith((".lora_A", ".lora_B"))
        if method == "convpass":
            return name.startswith("convpass.")
        return False  # 'linear': the head (and pyramid) only

    def train(self, mode: bool = True) -> "BaselineViT":
        if mode and self.merged:
            raise RuntimeError("the LoRA weights are merged into the ViT (inference only); call unmerge() to train")
        return super().train(mode)

    # ----------------------------------------------------------------------------- LoRA merging
    @property
    def merged(self) -> bool:
        """Whether LoRA updates are folded into the ViT weights."""
        return any(layer.merged for _, layer in lora_layers(self))

    def merge(self) -> "BaselineViT":
        """Folds every LoRA update into its frozen weight (W <- W + alpha/r B A): inference at the plain ViT's cost.

        Outputs equal the unmerged model's up to float rounding; ``unmerge()`` restores W bit for bit.
        """
        self._require_lora("merge")
        for _, layer in lora_layers(self):
            layer.merge()
        return self

    def unmerge(self) -> "BaselineViT":
        """Undoes ``merge()`` exactly."""
        self._require_lora("unmerge")
        for _, layer in lora_layers(self):
            layer.unmerge()
        return self

    def _require_lora(self, what: str) -> None:
        if self.config.method != "lora":
            raise ValueError(f"{what}() applies to method 'lora' only, this model is {self.config.method!r}")

    # ----------------------------------------------------------------------------- checkpoints
    def save_adapter(self, directory: str) -> None:
        """Writes only what this method trains (``hst_fast.adapter.save_adapter``); for 'full' that is everything."""
        if self.merged:  # the merged weights would change the backbone fingerprint and be saved nowhere
            raise RuntimeError("unmerge() before saving an adapter: merged LoRA weights are not an adapter")
        super().save_adapter(directory)

    # ----------------------------------------------------------------------------- forward
    @property
    def out_channels(self) -> List[int]:
        """Channels of the four ``forward_features`` maps (task 'det': the simple pyramid's)."""
        return list(self.config.pyramid_channels)

    def check_input(self, images: torch.Tensor) -> None:
        """Raises ``ValueError`` for anything but [B, C, H, W] floats with H, W multiples of the patch size
        (and, for task 'det', of 32, the pyramid's coarsest stride: HST's rule)."""
        in_chans, stride = self.vit.patch_embed.proj.in_channels, None if self.pyramid is None else STRIDE
        check_images(images, f"{self.config.method} ViT", in_chans, self.patch_size, stride)

    def forward_tokens(self, images: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int]]:
        """[B, C, H, W] -> (final-normed tokens [B, P + Hv*Wv, D], (Hv, Wv)), P prefix tokens first."""
        self.check_input(images)
        vit = self.vit
        patches = vit.patch_embed(images)  # [B, Hv, Wv, D] (timm dynamic_img_size)
        grid = (patches.shape[1], patches.shape[2])
        x = vit.norm_pre(vit.patch_drop(vit._pos_embed(patches)))
        if self.convpass is None:
            x = vit.blocks(x)
        else:
            for block, bypasses in zip(vit.blocks, self.convpass, strict=True):
                x = bypasses(block, x, grid, self.num_prefix_tokens)
        return vit.norm(x), grid

    def forward_features(self, images: torch.Tensor) -> List[torch.Tensor]:
        """[B, 3, H, W] -> four contiguous NCHW maps [B, C_s, H/2^(s+1), W/2^(s+1)] (task 'det'; C_s =
        ``pyramid_channels``); contiguous for the reason ``HST.forward_features`` gives."""
        if self.pyramid is None:
            raise ValueError("forward_features gives the feature pyramid of task 'det'; this model is task 'cls'")
        tokens, grid = self.forward_tokens(images)
        patches = tokens[:, self.num_prefix_tokens:].transpose(1, 2).unflatten(2, grid)  # [B, D, Hv, Wv]
        return [level.contiguous() for level in self.pyramid(patches)]

    def forward_head(self, tokens: torch.Tensor) -> torch.Tensor:
        """[B, P + N, D] -> the ViT's pooling (``global_pool``, ``fc_norm``) -> head: [B, num_classes] (or [B, D])."""
        return self.head(self.vit.forward_head(tokens, pre_logits=True))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_tokens(images)[0])
