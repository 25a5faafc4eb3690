"""Helpers shared by the mmdet backbone and the mmengine classifier (no mmdet import here)."""
from __future__ import annotations

import difflib
import inspect
import os
from typing import Any, Dict, Optional

import torch

import hst_fast
from hst_fast.baselines.config import OPTION_KEYS as BASELINE_OPTION_KEYS
from hst_fast.hst.config import OVERRIDE_KEYS
from hst_fast.vit.families import FAMILIES
from hst_fast.vit.peft import trainable_summary

# What ``create_model(**overrides)`` accepts besides the arguments named here: its other keyword
# arguments, the HST overrides, and keyword arguments of timm's ViT.
TIMM_VIT_KEYS = tuple(dict.fromkeys(  # every supported family's timm class (ViT, Eva, SAM)
    p for family in FAMILIES for p in inspect.signature(family.vit_class.__init__).parameters if p != "self"))
CREATE_MODEL_KEYS = tuple(
    name for name, p in inspect.signature(hst_fast.create_model).parameters.items()
    if p.kind is inspect.Parameter.KEYWORD_ONLY or (p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD and name not in (
        "vit_name", "task", "num_classes", "pretrained", "kernel_backend"))
)
# Set by create_model itself (or meaningless for a backbone): refusing them gives a clear message
# instead of timm's "got multiple values for keyword argument".
RESERVED_KEYS = ("num_classes", "dynamic_img_size", "pretrained")


def check_overrides(owner: str, overrides: Dict[str, Any]) -> None:
    """Raises ``TypeError`` for keyword arguments neither HST nor timm's ViT take, with suggestions.

    mmengine passes every key of a model config through, so a typo (``side_dim=``) would otherwise
    reach timm as an unexpected keyword far from the config line that caused it.
    """
    known = CREATE_MODEL_KEYS + OVERRIDE_KEYS + BASELINE_OPTION_KEYS + TIMM_VIT_KEYS
    for key in overrides:
        if key in RESERVED_KEYS:
            raise TypeError(f"{owner}: {key!r} is set by hst_fast.create_model and cannot be overridden")
        if key not in known:
            close = difflib.get_close_matches(key, known, n=3)
            hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else ""
            raise TypeError(
                f"{owner} got an unknown argument {key!r}{hint} It accepts vit_name, task, num_classes, pretrained, "
                f"kernel_backend, init_cfg, {', '.join(CREATE_MODEL_KEYS) + ', ' if CREATE_MODEL_KEYS else ''}the HST "
                f"overrides {list(OVERRIDE_KEYS)}, the baselines' options (method=...: "
                f"{list(BASELINE_OPTION_KEYS)}) and timm ViT arguments "
                f"(embed_dim, depth, num_heads, img_size, patch_size, ...)."
            )


def pretrained_path(owner: str, pretrained: Optional[str], init_cfg: Optional[dict],
                    must_exist: bool = True) -> Optional[str]:
    """The local ViT checkpoint from ``pretrained=`` or ``init_cfg=dict(type='Pretrained', checkpoint=...)``.

    Raises ``FileNotFoundError`` (naming the path and how to change it) when ``must_exist`` and the file
    does not exist.
    """
    if init_cfg is not None:
        if not isinstance(init_cfg, dict) or init_cfg.get("type") != "Pretrained" or set(init_cfg) - {"type",
                                                                                                   "checkpoint"}:
            raise ValueError(
                f"{owner}: init_cfg must be None or dict(type='Pretrained', checkpoint=PATH) (the side network has "
                f"its own initialization, HST.md §3), got {init_cfg!r}"
            )
        if pretrained is not None and pretrained != init_cfg.get("checkpoint"):
            raise ValueError(f"{owner}: pretrained={pretrained!r} and init_cfg checkpoint "
                             f"{init_cfg.get('checkpoint')!r} disagree; set one of them")
        pretrained = init_cfg.get("checkpoint")
    if pretrained is None:
        return None
    pretrained = os.path.expanduser(os.fspath(pretrained))
    if must_exist and not os.path.isfile(pretrained):
        raise FileNotFoundError(
            f"{owner}: pretrained ViT checkpoint not found: {pretrained!r} (absolute: {os.path.abspath(pretrained)}). "
            "Download the timm weights (.safetensors/.pth/.npz) for the ViT and point the config at them, e.g. "
            "--cfg-options model.backbone.init_cfg.checkpoint=PATH, or train on a randomly initialized ViT with "
            "--cfg-options model.backbone.init_cfg=None."
        )
    return pretrained


def trainable_line(module: torch.nn.Module, name: str) -> str:
    """``NAME: trainable params: X || all params: Y || trainable%: Z`` (PEFT's line)."""
    return f"{name}: {trainable_summary(module)}"
