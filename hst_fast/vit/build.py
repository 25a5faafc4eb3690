"""Building the frozen timm ViT that HST and the baselines adapt, and loading local pretrained weights."""
from __future__ import annotations

import os
import re
from typing import Any, Dict, Optional

import numpy as np
import timm
import torch.nn as nn
from timm.models import load_pretrained
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn

PRETRAINED_SUFFIXES = (".pth", ".pt", ".bin", ".npz", ".safetensors")


def build_vit(
    vit_name: str, timm_kwargs: Dict[str, Any], drop_path_rate: float, pretrained: Optional[str] = None
) -> VisionTransformer:
    """The timm ViT ``vit_name`` without head, accepting any input size; weights from ``pretrained``.

    timm_kwargs: extra ``timm.create_model`` arguments; drop_path_rate: the ViT blocks' stochastic depth (the
    released code drops paths in ViT blocks too) unless timm_kwargs sets it.
    """
    if vit_name not in timm.list_models():
        raise ValueError(f"unknown timm model {vit_name!r}")
    kwargs = dict(timm_kwargs)
    kwargs.setdefault("drop_path_rate", drop_path_rate)
    vit = timm.create_model(vit_name, pretrained=False, num_classes=0, dynamic_img_size=True, **kwargs)
    if not isinstance(vit, VisionTransformer):
        raise ValueError(f"{vit_name!r} is a {type(vit).__name__}, not a timm VisionTransformer")
    if pretrained is not None:
        load_local_pretrained(vit, pretrained)
    return vit


def load_local_pretrained(vit: VisionTransformer, path: str) -> None:
    """Loads a local ViT checkpoint through timm's ``load_pretrained`` (file override, no hub).

    The classifier head is dropped (HST has its own); any other missing, unexpected or mis-shaped
    tensor is an error naming the file. ``.npz`` files are JAX/Flax checkpoints (the released code's
    ``ViT-B_16.npz``), read by timm's npz loader, which copies tensor by tensor: their block count is
    checked first, since that loader would silently skip a checkpoint's extra blocks.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"pretrained ViT checkpoint not found: {path}")
    if not path.endswith(PRETRAINED_SUFFIXES):
        raise ValueError(f"pretrained checkpoint {path} must end with one of {PRETRAINED_SUFFIXES}")
    model_desc = f"{type(vit).__name__} (embed_dim {vit.embed_dim}, depth {len(vit.blocks)})"
    if path.endswith(".npz"):
        depth = _npz_block_count(path)
        if depth is not None and depth != len(vit.blocks):
            raise KeyError(f"pretrained checkpoint {path} has {depth} ViT blocks; the model is {model_desc}")
    cfg = dict(vit.pretrained_cfg)
    cfg.update(file=path, source="", state_dict=None, hf_hub_id=None, url="", custom_load=path.endswith(".npz"))
    mismatch = {}

    def record(module: nn.Module, incompatible) -> None:
        mismatch["missing"] = list(incompatible.missing_keys)
        mismatch["unexpected"] = [k for k in incompatible.unexpected_keys if not k.startswith("head.")]

    handle = vit.register_load_state_dict_post_hook(record)
    try:
        load_pretrained(vit, pretrained_cfg=cfg, num_classes=0, in_chans=vit.patch_embed.proj.in_channels,
                        filter_fn=checkpoint_filter_fn)
    except (KeyError, RuntimeError) as err:  # a tensor the file lacks, or one of another shape: name the file
        raise type(err)(f"pretrained checkpoint {path} does not match {model_desc}: {err}") from err
    finally:
        handle.remove()
    if mismatch.get("missing") or mismatch.get("unexpected"):
        raise KeyError(
            f"pretrained checkpoint {path} does not match {model_desc}: "
            f"missing keys {mismatch['missing']}, unexpected keys {mismatch['unexpected']}"
        )


def _npz_block_count(path: str) -> Optional[int]:
    """Encoder blocks in a JAX/Flax ViT ``.npz``: per-block (``encoderblock_<i>/``) or stacked
    (``encoderblock/``, leading axis) layout; None when it names no blocks (timm then says what is wrong)."""
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise ValueError(f"pretrained checkpoint {path} is not a readable .npz archive: {err}") from err
    with archive:
        names = archive.files
        stacked = [name for name in names if name.endswith("Transformer/encoderblock/LayerNorm_0/scale")]
        if stacked:
            return int(archive[stacked[0]].shape[0])
    indices = {match.group(1) for match in map(re.compile(r"Transformer/encoderblock_(\d+)/").search, names) if match}
    return len(indices) or None
