"""Baselines in the same harness as HST: full fine-tuning, linear probe, LoRA and Convpass on a timm ViT.

    model = create_baseline("vit_base_patch16_224", "lora", num_classes=100, pretrained="vit_b16.npz")
    model.print_trainable_parameters()  # trainable params: 371,812 || all params: ... (294,912 LoRA + head)
"""
from __future__ import annotations

from typing import Any, Optional

from hst_fast.baselines.config import METHODS, BaselineConfig
from hst_fast.baselines.convpass import Convpass, ConvpassPair, QuickGELU
from hst_fast.baselines.feature_pyramid import SimpleFeaturePyramid
from hst_fast.baselines.lora import LoRALinear, inject_lora
from hst_fast.baselines.model import BaselineViT
from hst_fast.constants import KERNEL_BACKENDS
from hst_fast.vit.build import build_vit


def create_baseline(
    vit_name: str,
    method: str,
    task: str = "cls",
    num_classes: Optional[int] = None,
    pretrained: Optional[str] = None,
    kernel_backend: str = "auto",
    **overrides: Any,
) -> BaselineViT:
    """Builds a baseline with ``hst_fast.create_model``'s arguments plus ``method``.

    vit_name: any timm ViT; method: 'full' | 'linear' | 'lora' | 'convpass'; task: 'cls' | 'det'
    (the latter adds a ViTDet simple feature pyramid for ``forward_features``); num_classes: head size
    (default 1000 for 'cls', 0 = no head for 'det'); pretrained: a local ViT checkpoint, never downloaded;
    kernel_backend: accepted for the same call signature (no baseline has custom kernels), checked, unused;
    overrides: method options (``lora_rank``, ``lora_alpha``, ``lora_targets``, ``lora_dropout``;
    ``convpass_dim``, ``convpass_scale``, ``convpass_targets``, ``convpass_dropout``), ``pyramid_channels``,
    ``drop_path_rate``; anything else (``embed_dim``, ``depth``, ``global_pool``...) goes to timm.
    """
    if kernel_backend not in KERNEL_BACKENDS:
        raise ValueError(f"kernel_backend must be one of {list(KERNEL_BACKENDS)}, got {kernel_backend!r}")
    config = BaselineConfig.from_args(vit_name, method, task, num_classes, **overrides)
    vit = build_vit(config.vit_name, config.timm_kwargs, config.drop_path_rate, pretrained)
    return BaselineViT(vit, config)


__all__ = [
    "METHODS", "BaselineConfig", "BaselineViT", "Convpass", "ConvpassPair", "LoRALinear", "QuickGELU",
    "SimpleFeaturePyramid", "create_baseline", "inject_lora",
]
