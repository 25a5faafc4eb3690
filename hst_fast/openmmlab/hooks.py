"""``AdapterCheckpointHook``: the adapter-only files, written next to every full checkpoint."""
from __future__ import annotations

import os
import os.path as osp
from typing import Optional

import torch.nn as nn
from mmengine.dist import is_main_process
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS
from safetensors.torch import load_file, save_file

import hst_fast
from hst_fast.hst import HST
from hst_fast.openmmlab.model_args import trainable_line

HEADS_NAME = "task_heads.safetensors"


def find_hst(model: nn.Module) -> tuple:
    """(prefix, HST module) of the single HST inside ``model`` (a detector or ``HSTClassifier``)."""
    if is_model_wrapper(model):
        model = model.module
    found = [(name, module) for name, module in model.named_modules() if isinstance(module, HST)]
    if len(found) != 1:
        raise ValueError(f"expected exactly one HST module in {type(model).__name__}, found {len(found)}")
    return found[0]


def task_heads_state(model: nn.Module, hst_prefix: str) -> dict:
    """Everything of ``model``'s state dict outside the HST (a detector's neck and heads), on CPU."""
    if is_model_wrapper(model):
        model = model.module
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()
            if not k.startswith(hst_prefix + ".")}


def save_task_adapter(model: nn.Module, directory: str) -> None:
    """The HST adapter plus, when ``model`` has parameters outside the HST (a detector's neck and
    heads), ``task_heads.safetensors`` with them (written under a temporary name, then renamed)."""
    prefix, hst = find_hst(model)
    hst.save_adapter(directory)
    heads = task_heads_state(model, prefix)
    if heads:
        tmp = osp.join(directory, HEADS_NAME + ".tmp")
        save_file(heads, tmp, metadata={"format": "pt"})
        os.replace(tmp, osp.join(directory, HEADS_NAME))


def load_task_adapter(model: nn.Module, directory: str, force: bool = False) -> None:
    """Inverse of ``save_task_adapter`` onto a freshly built model (same config, same pretrained ViT):
    ``hst_fast.load_adapter`` for the HST, then the heads, strictly (every key must match)."""
    prefix, hst = find_hst(model)
    hst_fast.load_adapter(hst, directory, force=force)
    path = osp.join(directory, HEADS_NAME)
    if osp.isfile(path):
        if is_model_wrapper(model):
            model = model.module
        heads = load_file(path)
        missing = sorted(set(task_heads_state(model, prefix)) - set(heads))
        unexpected = sorted(set(heads) - set(model.state_dict()))
        if missing or unexpected:
            raise KeyError(f"{path} does not fit {type(model).__name__}: missing {missing}, unexpected {unexpected}")
        model.load_state_dict(heads, strict=False)


@HOOKS.register_module()
class AdapterCheckpointHook(Hook):
    """Whenever the runner saves a checkpoint, writes ``<work_dir>/adapter/``: the HST adapter
    (``model.save_adapter``: side network, meta tokens, ViT LayerNorms, head; safetensors + JSON) and,
    for a detector, ``task_heads.safetensors`` with the neck and heads, which a deployment needs as well.
    The frozen ViT is not saved: it is the pretrained file. Also logs the whole model's trainable-parameter
    line when training starts.
    """

    priority = "VERY_LOW"

    def __init__(self, out_dir: Optional[str] = None):
        """out_dir: where ``adapter/`` goes (default: the runner's work dir, beside the checkpoints)."""
        self.out_dir = out_dir

    def before_train(self, runner) -> None:
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        print_log(trainable_line(model, type(model).__name__), logger="current")

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        if not is_main_process():
            return
        directory = osp.join(self.out_dir or runner.work_dir, "adapter")
        save_task_adapter(runner.model, directory)
        meta = checkpoint.get("meta", {})
        print_log(f"adapter saved to {directory} (epoch {meta.get('epoch')}, iter {meta.get('iter')})",
                  logger="current")
