"""Names of the authors' released implementation (``ViT_HSN``) for every tensor of an ``HST``.

``to_official_names(model)`` maps each of the model's state-dict keys to the released key;
the conversion functions below use it in both directions, so they are exact inverses.
"""
from __future__ import annotations

import re
from typing import Dict, List

import torch

# Rewrites from hst_fast names (after the stage prefix) to released names inside a stage.
_STEM_NAMES = {"conv1.": "conv.0.", "bn.": "conv.1.", "conv2.": "conv.3.", "norm.": "norm."}
_META_TOKEN = re.compile(r"^meta_tokens\.(\d+)$")
_STAGE_KEY = re.compile(r"^side_stages\.(\d+)\.(embed|bridge|meta_norms|blocks|norm)\.(.*)$")


def to_official_names(model) -> Dict[str, str]:
    """{hst_fast state-dict key: released key} for every tensor of ``model`` (an ``HST``)."""
    first_block = [blocks[0] for blocks in model.stage_blocks]
    names = {}
    for key in model.state_dict():
        names[key] = _official_name(key, first_block)
    return names


def _official_name(key: str, first_block: List[int]) -> str:
    if key.startswith("vit."):
        return key[len("vit."):]
    if key.startswith("head_norm."):
        return "fc_norm." + key[len("head_norm."):]
    if key.startswith("head."):
        return key
    match = _META_TOKEN.match(key)
    if match:
        return f"m_embeddings.{match.group(1)}"
    match = _STAGE_KEY.match(key)
    if not match:
        raise KeyError(f"no released-code name for {key!r}")
    stage, part, rest = int(match.group(1)), match.group(2), match.group(3)
    if part == "embed":
        if stage == 0:
            prefix = next(p for p in _STEM_NAMES if rest.startswith(p))
            rest = _STEM_NAMES[prefix] + rest[len(prefix):]
        return f"m_patch_embed{stage + 1}.{rest}"
    if part == "bridge":
        return f"T_Bridge_{stage + 1}.{rest}"
    if part == "norm":
        return f"m_norm{stage + 1}.{rest}"
    index, _, rest = rest.partition(".")
    if part == "blocks":
        return f"m_block{stage + 1}.{index}.{rest}"
    return f"m_proj_norm{first_block[stage] + int(index) + 1}.{rest}"  # meta_norms: one per ViT block, 1-based


def official_state_dict(model) -> Dict[str, torch.Tensor]:
    """The model's tensors under the released names (meta tokens as [1, G, D], as released)."""
    state = model.state_dict()
    out = {}
    for key, official in to_official_names(model).items():
        tensor = state[key]
        out[official] = tensor.unsqueeze(0) if _META_TOKEN.match(key) else tensor
    return out


def load_official_state_dict(model, official: Dict[str, torch.Tensor]) -> None:
    """Loads a released-code state dict strictly; raises ``KeyError`` naming every missing,
    unexpected or mis-shaped key (nothing is loaded then)."""
    names = to_official_names(model)
    expected = {official_key: key for key, official_key in names.items()}
    state = model.state_dict()
    missing = sorted(set(expected) - set(official))
    unexpected = sorted(set(official) - set(expected))
    converted, misshaped = {}, []
    for official_key, key in expected.items():
        if official_key not in official:
            continue
        tensor = official[official_key]
        if _META_TOKEN.match(key) and tensor.dim() == 3 and tensor.shape[0] == 1:
            tensor = tensor[0]
        if tuple(tensor.shape) != tuple(state[key].shape):
            misshaped.append(f"{official_key}: checkpoint {tuple(tensor.shape)} vs model {tuple(state[key].shape)}")
        converted[key] = tensor
    problems = []
    if missing:
        problems.append(f"missing keys: {missing}")
    if unexpected:
        problems.append(f"unexpected keys: {unexpected}")
    if misshaped:
        problems.append(f"mis-shaped keys: {misshaped}")
    if problems:
        raise KeyError("released-code state dict does not match this model; " + "; ".join(problems))
    model.load_state_dict(converted, strict=True)
