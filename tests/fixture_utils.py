"""Test helpers: the released-code fixtures (``../shared/fixtures``) and well-conditioned comparisons."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Tuple

import torch
from safetensors import safe_open
from safetensors.torch import load_file

import hst_fast

FIXTURE_FILES = {"cls": "hst_official_cls_tiny.safetensors", "det": "hst_official_det_tiny.safetensors"}


def read_fixture(path: Path) -> Tuple[dict, Dict[str, torch.Tensor]]:
    """(metadata 'meta' JSON, all tensors) of one fixture file."""
    with safe_open(str(path), "pt") as handle:
        meta = json.loads(handle.metadata()["meta"])
    return meta, load_file(str(path))


def split_prefix(tensors: Dict[str, torch.Tensor], prefix: str) -> Dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def model_for_fixture(meta: dict, weights: Dict[str, torch.Tensor], kernel_backend: str = "torch"):
    """An hst_fast model with the fixture's architecture and released weights loaded."""
    cfg = meta["config"]
    task = "cls" if meta["name"].startswith("cls") else "det"
    side = dict(  # ViT_HSN's defaults where the fixture's kwargs leave them out
        side_dims=cfg.get("m_embed_dims", [32, 48, 64, 72]),
        side_heads=cfg.get("m_c_num_heads", [2, 4, 8, 12]),
        num_meta_tokens=cfg.get("metaG_num", 1),
    )
    model = hst_fast.create_model(
        "vit_base_patch16_224", task=task, num_classes=cfg["num_classes"], kernel_backend=kernel_backend,
        embed_dim=cfg["embed_dim"], depth=cfg["depth"], num_heads=cfg["num_heads"],
        patch_size=cfg["patch_size"], img_size=meta["img_size"], **side,
    )
    model.load_official_state_dict(weights)
    return model


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual - expected).abs().max() / expected.abs().max().clamp_min(1e-12)).item()


def well_conditioned_gradients(model, images, seed=0):
    """Gradients of a fixed random projection of every stage output and the logits, in eval mode.

    The fixtures' own loss runs through train-mode BatchNorm over a batch of two, which amplifies
    rounding ~1000x (see test_fixtures); this loss reaches every parameter without that."""
    generator = torch.Generator().manual_seed(seed)
    model.eval()
    model.zero_grad()
    stages = model.forward_stage_tokens(images)
    loss = model.forward_head(stages[-1][0]).mul(torch.randn(1, generator=generator)).sum()
    for x, _ in stages:
        loss = loss + (x * torch.randn(x.shape, generator=generator)).sum()
    loss.backward()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}
