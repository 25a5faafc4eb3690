"""Building the frozen timm ViT that HST and the baselines adapt, and loading local pretrained weights.

Which timm class a model name builds, the arguments that let it take any image size and the filter that converts
its original checkpoints are the family's (``hst_fast.vit.families``).
"""
from __future__ import annotations

import os
import re
from typing import Any, Dict, Optional

import numpy as np
import timm
import torch
import torch.nn as nn
from timm.models import load_pretrained, load_state_dict

from hst_fast.vit.families import ViTFamily, describe_checkpoint, family_for_model, family_of

PRETRAINED_SUFFIXES = (".pth", ".pt", ".bin", ".npz", ".safetensors")
# What a pretrained file of each suffix must be, for the error when it cannot be read.
PRETRAINED_FORMATS = {".npz": ".npz archive", ".safetensors": ".safetensors file"}  # others: torch.save files


def build_vit(
    vit_name: str, timm_kwargs: Dict[str, Any], drop_path_rate: float, pretrained: Optional[str] = None
) -> nn.Module:
    """The timm ViT ``vit_name`` without head, accepting any input size; weights from ``pretrained``.

    vit_name: a timm model of a supported family (``hst_fast.vit.families``); timm_kwargs: extra
    ``timm.create_model`` arguments; drop_path_rate: the ViT blocks' stochastic depth (the released code drops
    paths in ViT blocks too) unless timm_kwargs sets it.
    """
    if not timm.is_model(vit_name):
        raise ValueError(f"unknown timm model {vit_name!r}")
    family = family_for_model(vit_name, timm_kwargs)
    kwargs = _create_kwargs(family, timm_kwargs)
    kwargs.setdefault("drop_path_rate", drop_path_rate)
    vit = timm.create_model(vit_name, pretrained=False, num_classes=0, **kwargs)
    family.check(vit)
    if pretrained is not None:
        load_local_pretrained(vit, pretrained, vit_name)
    return vit


def _create_kwargs(family: ViTFamily, timm_kwargs: Dict[str, Any]) -> Dict[str, Any]:
    """``timm_kwargs`` plus the family's ``create_kwargs``; ``ValueError`` if the caller sets one of those."""
    clash = sorted(set(family.create_kwargs) & set(timm_kwargs))
    if clash:
        raise ValueError(f"timm arguments {clash} are set by hst_fast (the ViT takes any image size)")
    return {**timm_kwargs, **family.create_kwargs}


def load_local_pretrained(vit: nn.Module, path: str, vit_name: Optional[str] = None) -> None:
    """Loads a local ViT checkpoint through timm's ``load_pretrained`` (state-dict or file override, no hub),
    converting it with the family's timm ``checkpoint_filter_fn`` as timm does (DINOv2, EVA, SAM, CLIP originals...).

    The classifier head is dropped (HST has its own); any other missing, unexpected or mis-shaped
    tensor is an error naming the file, what it holds, and the model. ``.npz`` files are JAX/Flax checkpoints
    (the released code's ``ViT-B_16.npz``, ``VisionTransformer`` only), read by timm's npz loader, which copies
    tensor by tensor: their block count is checked first, since that loader would silently skip a checkpoint's
    extra blocks.

    A file that cannot be read (truncated, damaged, not a checkpoint) is a ``ValueError`` naming the file and its
    expected format, raised from the reader's error, before anything is loaded.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"pretrained ViT checkpoint not found: {path}")
    if not path.endswith(PRETRAINED_SUFFIXES):
        raise ValueError(f"pretrained checkpoint {path} must end with one of {PRETRAINED_SUFFIXES}")
    family = family_of(vit)
    model_desc = (f"{type(vit).__name__} (embed_dim {vit.embed_dim}, depth {len(vit.blocks)}), family {family.name!r}"
                  + (f", timm {vit_name}" if vit_name else ""))
    if path.endswith(".npz"):
        if family.name != "vit":
            raise ValueError(f"pretrained checkpoint {path}: .npz (JAX/Flax) files load into timm VisionTransformer "
                             f"models only; the model is {model_desc}")
        depth = _npz_block_count(path)
        if depth is not None and depth != len(vit.blocks):
            raise KeyError(f"pretrained checkpoint {path} has {depth} ViT blocks; the model is {model_desc}")
        state_dict = None  # timm's .npz loader reads the file itself (custom_load)
    else:
        state_dict = _read_state_dict(path)  # read here: an unreadable file is not reported as a mismatch
    cfg = dict(vit.pretrained_cfg)
    cfg.update(file=path, source="", state_dict=state_dict, hf_hub_id=None, url="", custom_load=path.endswith(".npz"))
    mismatch, held = {}, {}

    def convert(state_dict: Dict[str, torch.Tensor], model: nn.Module) -> Dict[str, torch.Tensor]:
        held["desc"] = describe_checkpoint(state_dict)
        return family.checkpoint_filter(state_dict, model)

    def record(module: nn.Module, incompatible) -> None:
        mismatch["missing"] = list(incompatible.missing_keys)
        mismatch["unexpected"] = [k for k in incompatible.unexpected_keys if not k.startswith("head.")]

    def problem() -> str:
        holds = f" (the file holds {held['desc']})" if held else ""
        return f"pretrained checkpoint {path} does not match {model_desc}{holds}"

    handle = vit.register_load_state_dict_post_hook(record)
    try:  # strict=False: the hook above decides what may differ (only the classifier head)
        load_pretrained(vit, pretrained_cfg=cfg, num_classes=0, in_chans=vit.patch_embed.proj.in_channels,
                        filter_fn=convert, strict=False)
    except (KeyError, RuntimeError) as err:  # a tensor the file lacks, or one of another shape: name the file
        raise type(err)(f"{problem()}: {err}") from err
    finally:
        handle.remove()
    if mismatch.get("missing") or mismatch.get("unexpected"):
        raise KeyError(f"{problem()}: missing keys {mismatch['missing']}, unexpected keys {mismatch['unexpected']}")


def _read_state_dict(path: str) -> Dict[str, torch.Tensor]:
    """The tensors of a ``torch.save`` or ``.safetensors`` checkpoint, read as timm's ``load_pretrained`` reads
    them (its EMA, ``state_dict`` or ``model`` entry; ``module.`` prefixes dropped); ``ValueError`` if unreadable."""
    try:
        return load_state_dict(path)
    except Exception as err:  # torch, pickle, zip and safetensors errors share no base class
        raise _unreadable(path, err) from err


def _npz_block_count(path: str) -> Optional[int]:
    """Encoder blocks in a JAX/Flax ViT ``.npz``: per-block (``encoderblock_<i>/``) or stacked
    (``encoderblock/``, leading axis) layout; None when it names no blocks (timm then says what is wrong).

    Reads every array (one at a time), so that a truncated or damaged archive is a ``ValueError`` here rather than
    whatever numpy or zipfile raise at the first bad array timm's loader, which takes only a path, reads again.
    """
    try:
        with np.load(path, allow_pickle=False) as archive:
            shapes = {name: archive[name].shape for name in archive.files}
    except Exception as err:  # zipfile, zlib, numpy's header parser: no common base class
        raise _unreadable(path, err) from err
    stacked = [shape for name, shape in shapes.items() if name.endswith("Transformer/encoderblock/LayerNorm_0/scale")]
    if stacked:
        return int(stacked[0][0])
    indices = {match.group(1) for match in map(re.compile(r"Transformer/encoderblock_(\d+)/").search, shapes) if match}
    return len(indices) or None


def _unreadable(path: str, err: Exception) -> ValueError:
    """The error for a pretrained file its reader failed on (``err``, which may have no message)."""
    expected = PRETRAINED_FORMATS.get(os.path.splitext(path)[1], "torch.save checkpoint")
    return ValueError(f"pretrained checkpoint {path} is not a readable {expected} (truncated or not a checkpoint?): "
                      f"{str(err) or type(err).__name__}")
