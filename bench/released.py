"""The authors' released HST (GitHub ``AFeng-x/HST``, ``models/vit_hsn.py``, class ``ViT_HSN``) for side-by-side
benchmarks. Its code is not part of this repository: the user passes the path of its ``models/`` folder.

What is instantiated: ``ViT_HSN(img_size, patch_size=16, embed_dim=768, depth=12, num_heads=12, num_classes,
m_embed_dims=side_dims, m_c_num_heads=side_heads, m_depths=[3, 3, 3, 3], block_indices=[2, 5, 8, 11],
metaG_num=G)`` with side_dims / side_heads / G of hst_fast's task preset (``TASK_PRESETS``: 'cls' [32, 48, 64, 72],
G 1; 'det' [64, 128, 256, 384], G 8), then ``freeze_vit()``, the released training set-up (side network, meta
tokens, ViT block LayerNorms, bridges and head train). The released code builds its detection-size variant the same
way: only the constructor arguments differ from classification; ``img_size`` sizes its fixed position embedding
(512 -> a 32 x 32 grid). Its ``forward_features`` returns the pooled stage-4 feature; ``stage_tokens`` collects the
four stage norms' outputs [B, H_s*W_s, d_s], the tensors hst_fast's ``forward_stage_tokens`` returns.

Importing it under today's timm needs three stand-ins, present only while it is imported: ``thop`` and ``ipdb``
(imported at the top of ``vit_hsn.py``, unused by the model) when not installed; ``timm.models.layers.helpers``
(``to_2tuple``, moved to ``timm.layers`` by timm 0.9) when missing; and timm's ``register_model`` as a no-op, since
the file registers ``vit_base_patch16_224`` and others under its own class, which would replace timm's models
(hst_fast's included) for the rest of the process.
"""
from __future__ import annotations

import contextlib
import importlib
import sys
import types
import warnings
from pathlib import Path
from typing import Iterator, List

import torch
import torch.nn as nn

from hst_fast.constants import TASK_PRESETS

PACKAGE = "hst_released_models"  # the name the released models/ folder is imported under
REQUIRED_FILES = ("vit_hsn.py", "vit_custom_modules.py")


def _not_installed(*args, **kwargs):
    raise RuntimeError("thop is not installed (a stand-in from bench/released.py)")


STAND_INS = {  # module -> the names the released code takes from it
    "thop": dict(profile=_not_installed),  # FLOP counting in vit_hsn.py's __main__ only
    "ipdb": dict(),  # imported, never used
    "timm.models.layers.helpers": None,  # to_2tuple, moved to timm.layers by timm 0.9 (filled in below)
}


@contextlib.contextmanager
def _import_stand_ins() -> Iterator[None]:
    """Stand-ins for what the released code imports but today's environment lacks, and timm's ``register_model`` as a
    no-op; all undone afterwards. timm's notices about the deprecated module paths it imports are silenced."""
    import timm.layers

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        import timm.models.registry as registry

        added = []
        for name, attributes in STAND_INS.items():
            try:
                importlib.import_module(name)
            except ImportError:
                module = types.ModuleType(name)
                module.__dict__.update(attributes or dict(to_2tuple=timm.layers.to_2tuple))
                sys.modules[name] = module
                added.append(name)
        register_model = registry.register_model
        registry.register_model = lambda fn: fn
        try:
            yield
        finally:
            registry.register_model = register_model
            for name in added:
                sys.modules.pop(name, None)


class ReleasedCodeError(ValueError):
    """The released code's folder is missing, incomplete, or its code fails to import."""


def check_folder(folder: str) -> Path:
    """The resolved path of ``folder`` if it holds the released ``models/`` files; ``ReleasedCodeError`` otherwise."""
    path = Path(folder).expanduser().resolve()
    missing = [name for name in REQUIRED_FILES if not (path / name).is_file()]
    if missing:
        raise ReleasedCodeError(f"{folder} is not the released code's models/ folder (AFeng-x/HST): "
                                f"no {', '.join(missing)}")
    return path


def load_released(folder: str) -> types.ModuleType:
    """Imports ``folder``/vit_hsn.py (the released ``models/`` folder) as a package; ``ReleasedCodeError`` naming what
    is missing or failed."""
    path = check_folder(folder)
    if PACKAGE not in sys.modules:
        package = types.ModuleType(PACKAGE)
        package.__path__ = [str(path)]
        sys.modules[PACKAGE] = package
    elif list(sys.modules[PACKAGE].__path__) != [str(path)]:
        raise ReleasedCodeError(f"the released code is already imported from {sys.modules[PACKAGE].__path__[0]}")
    try:
        with _import_stand_ins():
            return importlib.import_module(f"{PACKAGE}.vit_hsn")
    except Exception as error:  # whatever its import raises, reported with the folder
        raise ReleasedCodeError(f"cannot import the released code from {path}: {error!r}") from error


def build_released(vit_hsn: types.ModuleType, task: str, image_size: int, num_classes: int) -> nn.Module:
    """The released ``ViT_HSN`` (ViT-B/16) with ``task``'s preset at ``image_size``, frozen as its training does."""
    preset = TASK_PRESETS[task]
    model = vit_hsn.ViT_HSN(
        img_size=image_size, patch_size=16, embed_dim=768, depth=12, num_heads=12, num_classes=num_classes,
        m_embed_dims=list(preset["side_dims"]), m_c_num_heads=list(preset["side_heads"]), m_depths=[3, 3, 3, 3],
        block_indices=[2, 5, 8, 11], metaG_num=preset["num_meta_tokens"],
    )
    model.freeze_vit()
    return model


def stage_tokens(model: nn.Module, images: torch.Tensor) -> List[torch.Tensor]:
    """Runs ``model.forward_features(images)``; returns the outputs of its stage norms ``m_norm1..4``,
    [B, H_s*W_s, d_s] each."""
    outputs: List[torch.Tensor] = []
    handles = [getattr(model, f"m_norm{s}").register_forward_hook(lambda m, args, out: outputs.append(out))
               for s in range(1, 5)]
    try:
        model.forward_features(images)
    finally:
        for handle in handles:
            handle.remove()
    return outputs
