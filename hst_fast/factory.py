"""``create_model``: HST or a baseline around a timm ViT, with local-only pretrained loading (the top layer)."""
from __future__ import annotations

from typing import Any, Optional, Union

import torch.nn as nn

from hst_fast.backend import resolve_ops
from hst_fast.baselines import create_baseline
from hst_fast.hst import HST, HSTConfig
from hst_fast.vit.build import build_vit


def create_model(
    vit_name: str,
    task: str = "cls",
    num_classes: Optional[int] = None,
    pretrained: Optional[str] = None,
    kernel_backend: str = "auto",
    attn_backend: str = "sdpa",
    grad_checkpointing: Union[bool, str, None] = None,
    method: str = "hst",
    **overrides: Any,
) -> nn.Module:
    """Builds an HST model.

    vit_name: any timm ViT (``vit_base_patch16_224``, ...); task: 'cls' | 'det' (HST.md §4 preset);
    num_classes: head size (default 1000 for 'cls', 0 = no head for 'det'); pretrained: a local
    ViT checkpoint (.pth/.npz/.safetensors) loaded through timm, never downloaded;
    kernel_backend: 'auto' | 'triton' | 'torch' (``hst_fast.backend``); attn_backend: ViT attention,
    'sdpa' | 'xformers' | 'eager' (eager = the released code's); grad_checkpointing: what of each ViT block
    to recompute in backward instead of keeping (faithful mode): None (default) the method's default, which for
    HST is 'mlp': its LN2 + fc1 + GELU (4D fewer floats kept per token and block for one more fc1, ~8-15% of a
    step); False nothing (fastest); True the whole block (large inputs). Baselines run timm's attention ('sdpa') and
    recompute nothing: another attn_backend, or any grad_checkpointing, is a ``ValueError`` naming the method;
    overrides: ``side_dims``, ``side_heads``, ``num_meta_tokens``, ``block_indices``, ``drop_path_rate``,
    ``backbone_grad`` ('full': paper-faithful; 'none': frozen streaming ViT, no MetaT/LN-tuning);
    anything else (``embed_dim``, ``depth``, ``img_size``...) goes to timm;
    method: 'hst' (default) or a baseline, 'full' | 'linear' | 'lora' | 'convpass'
    (``hst_fast.baselines.create_baseline``, which documents the baselines' options).
    """
    if method != "hst":
        hst_only = {"attn_backend": attn_backend != "sdpa", "grad_checkpointing": grad_checkpointing is not None}
        given = [name for name, is_set in hst_only.items() if is_set]
        if given:
            raise ValueError(f"{given} apply to method='hst' only, not {method!r}: baselines run timm's attention "
                             "('sdpa') and recompute nothing")
        return create_baseline(vit_name, method, task, num_classes, pretrained, kernel_backend, **overrides)
    config = HSTConfig.from_task(vit_name, task, num_classes, **overrides)
    ops = resolve_ops(kernel_backend)
    vit = build_vit(config.vit_name, config.timm_kwargs, config.drop_path_rate, pretrained)
    recompute = {} if grad_checkpointing is None else dict(grad_checkpointing=grad_checkpointing)  # None: HST's default
    return HST(vit, config, ops, attn_backend=attn_backend, **recompute)


