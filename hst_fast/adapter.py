"""Adapters: what a user keeps per task (PEFT-style), saved alone as safetensors + JSON.

An adapter holds the trainable parameters and the BatchNorm running statistics outside the
frozen ViT. Its JSON config records the architecture, package versions, a SHA-256 of the
weights file (so a truncated or corrupted file is refused, never partially loaded) and a
fingerprint of the frozen backbone (so loading onto a different ViT is refused unless forced).
No pickle is used anywhere on this path.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Dict

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

WEIGHTS_NAME = "adapter_model.safetensors"
CONFIG_NAME = "adapter_config.json"
FORMAT_VERSION = 1


class AdapterError(ValueError):
    """An adapter that cannot be loaded onto this model; the message says why."""


def adapter_state_dict(model) -> Dict[str, torch.Tensor]:
    """Trainable parameters plus BatchNorm running statistics outside the frozen ViT."""
    state = {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}
    for name, buffer in model.named_buffers():
        if not name.startswith("vit.") and ("running_" in name or "num_batches_tracked" in name):
            state[name] = buffer.detach()
    return state


def backbone_fingerprint(model) -> str:
    """SHA-256 over the frozen parameters (names, shapes, dtypes, bytes), in name order."""
    digest = hashlib.sha256()
    for name, param in sorted(model.named_parameters()):
        if param.requires_grad:
            continue
        tensor = param.detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _package_versions() -> Dict[str, str]:
    import timm

    from hst_fast.version import __version__

    return {"hst_fast": __version__, "torch": torch.__version__, "timm": timm.__version__}


def save_adapter(model, directory: str) -> None:
    """Writes ``adapter_model.safetensors`` and ``adapter_config.json`` into ``directory``.

    Both are written to temporary names and renamed, so an interrupted save never leaves a
    half-written adapter under the final names.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {name: t.cpu().contiguous() for name, t in adapter_state_dict(model).items()}
    weights_tmp = directory / (WEIGHTS_NAME + ".tmp")
    save_file(tensors, str(weights_tmp), metadata={"format": "pt"})
    config = {
        "format_version": FORMAT_VERSION,
        "model": model.config.to_dict(),
        "versions": _package_versions(),
        "backbone_fingerprint": backbone_fingerprint(model),
        "weights_sha256": _file_sha256(weights_tmp),
    }
    config_tmp = directory / (CONFIG_NAME + ".tmp")
    config_tmp.write_text(json.dumps(config, indent=2, sort_keys=True))
    os.replace(weights_tmp, directory / WEIGHTS_NAME)
    os.replace(config_tmp, directory / CONFIG_NAME)


def read_adapter_config(directory: str) -> dict:
    """The adapter's JSON config; raises ``FileNotFoundError``/``AdapterError`` if absent or malformed."""
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no adapter config at {path}")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise AdapterError(f"adapter config {path} is not valid JSON: {err}") from err
    for key in ("format_version", "model", "backbone_fingerprint", "weights_sha256"):
        if key not in config:
            raise AdapterError(f"adapter config {path} lacks {key!r}")
    if config["format_version"] != FORMAT_VERSION:
        raise AdapterError(f"adapter format {config['format_version']} is not supported (expected {FORMAT_VERSION})")
    return config


def load_adapter(model, directory: str, force: bool = False) -> None:
    """Puts an adapter saved by ``save_adapter`` back onto a freshly created ``model``.

    Raises ``AdapterError`` when the architecture differs, when the backbone fingerprint
    differs (unless ``force``), or when the weights file is truncated or corrupted; in every
    such case the model is left untouched.
    """
    directory = Path(directory)
    config = read_adapter_config(directory)
    weights_path = directory / WEIGHTS_NAME
    if not weights_path.is_file():
        raise FileNotFoundError(f"no adapter weights at {weights_path}")
    if _file_sha256(weights_path) != config["weights_sha256"]:
        raise AdapterError(f"adapter weights {weights_path} are corrupted or truncated (SHA-256 mismatch)")
    ours = model.config.to_dict()
    differing = sorted(k for k in set(ours) | set(config["model"]) if ours.get(k) != config["model"].get(k))
    if differing:
        raise AdapterError(f"adapter was saved for a different architecture; differing fields: {differing}")
    if not force and backbone_fingerprint(model) != config["backbone_fingerprint"]:
        raise AdapterError(
            "adapter was trained on a different frozen backbone (fingerprint mismatch); "
            "load the same pretrained ViT, or pass force=True to load anyway"
        )
    try:
        tensors = load_file(str(weights_path))
    except SafetensorError as err:
        raise AdapterError(f"adapter weights {weights_path} cannot be read: {err}") from err
    target = adapter_state_dict(model)
    missing, unexpected = sorted(set(target) - set(tensors)), sorted(set(tensors) - set(target))
    misshaped = [k for k in set(target) & set(tensors) if target[k].shape != tensors[k].shape]
    if missing or unexpected or misshaped:
        raise AdapterError(f"adapter does not fit: missing {missing}, unexpected {unexpected}, mis-shaped {misshaped}")
    with torch.no_grad():
        for name, tensor in tensors.items():
            target[name].copy_(tensor)
