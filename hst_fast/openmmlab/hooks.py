"""Runner hooks for what a run leaves on disk.

- ``AdapterCheckpointHook``: the adapter-only files (``<work_dir>/adapter/``), written next to every full
  checkpoint, for every adaptation method (HST or a baseline) and every task model around it.
- ``ResumableCheckpointHook``: mmengine's ``CheckpointHook`` made crash-safe, so that a run killed at any
  moment and restarted with ``--resume`` ends with the same weights, bit for bit, as an unbroken run.
"""
from __future__ import annotations

import os
import os.path as osp
from typing import Optional, Tuple

import torch.nn as nn
from mmengine.dist import is_main_process
from mmengine.fileio import LocalBackend
from mmengine.hooks import CheckpointHook, Hook
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS
from mmengine.runner.utils import set_random_seed
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

import hst_fast
from hst_fast.adapter import AdapterError, read_adapter_config
from hst_fast.openmmlab.model_args import trainable_line
from hst_fast.vit.peft import TrainableSubsetMixin

HEADS_NAME = "task_heads.safetensors"
ADAPTER_SHA_KEY = "adapter_weights_sha256"  # heads metadata: the adapter weights they were saved with


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if is_model_wrapper(model) else model


def find_adapted_model(model: nn.Module) -> Tuple[str, TrainableSubsetMixin]:
    """(prefix, module) of the single adapted model inside ``model`` (a detector, segmentor or
    ``HSTClassifier``): the module that trains a subset of its own parameters and saves them as an adapter
    (``TrainableSubsetMixin``: ``HST``, or ``BaselineViT`` for 'full' | 'linear' | 'lora' | 'convpass')."""
    model = _unwrap(model)
    found = [(name, module) for name, module in model.named_modules() if isinstance(module, TrainableSubsetMixin)]
    if len(found) != 1:
        raise ValueError(f"expected exactly one adapted model (HST or BaselineViT) in {type(model).__name__}, "
                         f"found {[name or '<root>' for name, _ in found]}")
    return found[0]


def task_heads_state(model: nn.Module, prefix: str) -> dict:
    """Everything of ``model``'s state dict outside the adapted model at ``prefix`` (a detector's neck and heads),
    on CPU; nothing when ``model`` is the adapted model itself (``prefix`` '')."""
    if not prefix:
        return {}
    return {k: v.detach().cpu().contiguous() for k, v in _unwrap(model).state_dict().items()
            if not k.startswith(prefix + ".")}


def save_task_adapter(model: nn.Module, directory: str) -> None:
    """The adapted model's adapter (``save_adapter``: what its method trains, safetensors + JSON) plus, when
    ``model`` holds weights outside it (a detector's neck and heads), ``task_heads.safetensors``.

    Each file is written under a temporary name and renamed; the heads record the SHA-256 of the adapter
    weights they belong with, so an adapter and heads from two different saves are refused on loading.
    """
    prefix, adapted = find_adapted_model(model)
    adapted.save_adapter(directory)
    heads = task_heads_state(model, prefix)
    if heads:
        sha = read_adapter_config(directory)["weights_sha256"]
        tmp = osp.join(directory, HEADS_NAME + ".tmp")
        save_file(heads, tmp, metadata={"format": "pt", ADAPTER_SHA_KEY: sha})
        os.replace(tmp, osp.join(directory, HEADS_NAME))


def _read_heads(path: str, adapter_sha: str) -> dict:
    """The tensors of a heads file, checked to belong with the adapter weights of SHA-256 ``adapter_sha``."""
    try:
        with safe_open(path, framework="pt") as handle:
            saved_with = (handle.metadata() or {}).get(ADAPTER_SHA_KEY)
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except (SafetensorError, OSError) as err:
        raise AdapterError(f"task heads {path} cannot be read (truncated or corrupted?): {err}") from err
    if saved_with != adapter_sha:
        raise AdapterError(f"task heads {path} were saved with other adapter weights than {osp.dirname(path)}'s "
                           "adapter_model.safetensors (an interrupted save?); save the adapter again")
    return tensors


def load_task_adapter(model: nn.Module, directory: str, force: bool = False) -> None:
    """Inverse of ``save_task_adapter`` onto a freshly built model (same config, same pretrained ViT).

    Everything is checked before anything is copied: the adapter (``hst_fast.load_adapter``: architecture,
    frozen-ViT fingerprint unless ``force``, file integrity) and the heads (present exactly when the model has
    weights outside the adapted model, every key and shape matching). Raises ``AdapterError`` (or
    ``FileNotFoundError`` for a missing adapter) and leaves the model untouched on any mismatch.
    """
    prefix, adapted = find_adapted_model(model)
    expected = task_heads_state(model, prefix)
    path = osp.join(directory, HEADS_NAME)
    heads = {}
    if expected or osp.isfile(path):
        if not osp.isfile(path):
            raise AdapterError(f"{directory} has no {HEADS_NAME}, but {type(_unwrap(model)).__name__} has weights "
                               f"outside its adapted model: {sorted(expected)[:5]}...")
        heads = _read_heads(path, read_adapter_config(directory)["weights_sha256"])
        missing, unexpected = sorted(set(expected) - set(heads)), sorted(set(heads) - set(expected))
        misshaped = sorted(k for k in set(expected) & set(heads) if expected[k].shape != heads[k].shape)
        if missing or unexpected or misshaped:
            raise AdapterError(f"{path} does not fit {type(_unwrap(model)).__name__}: missing {missing}, "
                               f"unexpected {unexpected}, mis-shaped {misshaped}")
    hst_fast.load_adapter(adapted, directory, force=force)
    _unwrap(model).load_state_dict(heads, strict=False)


@HOOKS.register_module()
class AdapterCheckpointHook(Hook):
    """Whenever the runner saves a checkpoint, writes ``<work_dir>/adapter/`` (``save_task_adapter``): what the
    method trains (HST: side network, meta tokens, ViT LayerNorms, head; a baseline: its own set) and, for a
    detector or segmentor, ``task_heads.safetensors`` with the neck and heads, which a deployment needs as well.
    The frozen ViT is not saved: it is the pretrained file. Also logs the whole model's trainable-parameter
    line when training starts.
    """

    priority = "VERY_LOW"

    def __init__(self, out_dir: Optional[str] = None):
        """out_dir: where ``adapter/`` goes (default: the runner's work dir, beside the checkpoints)."""
        self.out_dir = out_dir

    def before_train(self, runner) -> None:
        model = _unwrap(runner.model)
        find_adapted_model(model)  # fail now, not at the first checkpoint
        print_log(trainable_line(model, type(model).__name__), logger="current")

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        if not is_main_process():
            return
        directory = osp.join(self.out_dir or runner.work_dir, "adapter")
        save_task_adapter(runner.model, directory)
        meta = checkpoint.get("meta", {})
        print_log(f"adapter saved to {directory} (epoch {meta.get('epoch')}, iter {meta.get('iter')})",
                  logger="current")


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish_file(tmp: str, path: str) -> None:
    """Makes the complete file ``tmp`` appear as ``path`` at once: flushed to disk, renamed over ``path``
    (``os.replace`` is atomic on one file system), and the rename itself flushed."""
    _fsync(tmp)
    os.replace(tmp, path)
    _fsync(osp.dirname(osp.abspath(path)))


@HOOKS.register_module()
class ResumableCheckpointHook(CheckpointHook):
    """mmengine's ``CheckpointHook`` (same arguments), made safe to kill at any moment:

    - a checkpoint is written as a hidden ``.NAME.tmp`` in the same folder and renamed into place once
      complete (``publish_file``), so a file named ``epoch_N.pth`` is always whole;
    - ``last_checkpoint``, which ``--resume`` reads, is replaced the same way, only after the checkpoint it
      names is in place (mmengine rewrites it in place: a kill there leaves it empty);
    - checkpoints beyond ``max_keep_ckpts`` are deleted only after that (mmengine deletes first: with
      ``max_keep_ckpts=1`` a kill during the save left ``last_checkpoint`` naming a deleted file);
    - python's, numpy's and torch's random generators are seeded at the start of every training epoch from
      the run's seed and the epoch (``set_random_seed(seed + epoch)``; the rank is added with ``diff_rank_seed``).
      A resumed run of an epoch-based loop starts at the beginning of an epoch, so it draws exactly the random
      numbers (flips, RoI samples, drop-path) the unbroken run drew there; the samplers are seeded by epoch
      already. (Iteration-based loops, ``by_epoch=False``, get the atomic saves only.)
      Data-loader workers seed themselves (mmengine's ``worker_init_fn``): with ``persistent_workers=True``
      their generators run on across epochs, which a resumed run cannot replay, so bit-identical resumes of
      randomly augmented data need ``persistent_workers=False`` (or ``num_workers=0``).

    Local folders only. Best-checkpoint saves (``save_best``) are mmengine's, not used by ``--resume``.
    """

    def before_train(self, runner) -> None:
        super().before_train(runner)
        if not isinstance(self.file_backend, LocalBackend):
            raise ValueError(f"{type(self).__name__} writes local folders only; out_dir {self.out_dir!r} is "
                             f"{type(self.file_backend).__name__} storage (use mmengine's CheckpointHook there)")

    def before_train_epoch(self, runner) -> None:
        if self.by_epoch:  # runner.seed has the rank added already with diff_rank_seed
            set_random_seed(runner.seed + runner.epoch)

    def _save_checkpoint_with_step(self, runner, step: int, meta: dict) -> None:
        """mmengine's bookkeeping (``keep_ckpt_ids`` in the message hub, saved with the checkpoint), in the
        crash-safe order of the class docstring."""
        stale = None
        if self.max_keep_ckpts > 0 and not (self.keep_ckpt_ids and self.keep_ckpt_ids[-1] == step):
            if len(self.keep_ckpt_ids) == self.max_keep_ckpts:
                stale = self.keep_ckpt_ids.popleft()
            self.keep_ckpt_ids.append(step)
            runner.message_hub.update_info("keep_ckpt_ids", list(self.keep_ckpt_ids))
        filename = self.filename_tmpl.format(step)
        self.last_ckpt = osp.join(self.out_dir, filename)
        runner.message_hub.update_info("last_ckpt", self.last_ckpt)
        tmp_name = f".{filename}.tmp"
        runner.save_checkpoint(self.out_dir, tmp_name, save_optimizer=self.save_optimizer,
                               save_param_scheduler=self.save_param_scheduler, meta=meta, by_epoch=self.by_epoch,
                               backend_args=self.backend_args, **self.args)
        if not is_main_process():  # runner.save_checkpoint writes on the main process only
            return
        publish_file(osp.join(self.out_dir, tmp_name), self.last_ckpt)
        last = osp.join(runner.work_dir, "last_checkpoint")
        with open(last + ".tmp", "w") as handle:
            handle.write(self.last_ckpt)
        publish_file(last + ".tmp", last)
        if stale is not None:
            path = osp.join(self.out_dir, self.filename_tmpl.format(stale))
            if osp.isfile(path):
                os.remove(path)
