"""Checks run on a config before anything is built, so a mistake stops the run at once with a
message that says what to change.

- ``check_config_keys``: mmengine's Runner reads a fixed set of top-level keys and silently ignores
  the rest, so a typo (``optim_wraper``), an mmdet 2.x key (``optimizer``, ``lr_config``) or a
  ``--cfg-options`` override of a variable only read while the file is parsed (``data_root``) would
  otherwise train with settings nobody asked for. The keys of ``train_cfg`` / ``val_cfg`` / ``test_cfg``
  are checked against the loop class they build (``max_epoch`` would otherwise fail deep in the Runner).
- ``check_data_paths``: annotation files and image folders of the dataloaders and evaluators exist.
- ``check_checkpoint``: a checkpoint given to ``--resume`` / the test driver exists and torch can read it.
"""
from __future__ import annotations

import difflib
import inspect
import os.path as osp
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import torch
from mmengine.config import Config
from mmengine.registry import DATASETS, LOOPS
from mmengine.runner import EpochBasedTrainLoop, IterBasedTrainLoop, TestLoop, ValLoop

# Top-level keys that mmengine's Runner (``Runner.from_cfg``, ``wrap_model``, ``_maybe_compile``...) reads.
RUNNER_KEYS = (
    "model", "work_dir", "train_dataloader", "val_dataloader", "test_dataloader", "train_cfg", "val_cfg",
    "test_cfg", "auto_scale_lr", "optim_wrapper", "param_scheduler", "val_evaluator", "test_evaluator",
    "default_hooks", "custom_hooks", "data_preprocessor", "load_from", "resume", "launcher", "env_cfg",
    "log_processor", "log_level", "visualizer", "default_scope", "randomness", "experiment_name",
    "model_wrapper_cfg", "find_unused_parameters", "sync_bn", "compile", "activation_checkpointing",
    "efficient_conv_bn_eval", "runner_type",
)
# Read by mmengine's Config itself, or by mmdet's test tooling.
CONFIG_KEYS = ("custom_imports", "tta_model", "tta_pipeline")
# Variables of mmdet's ``_base_`` files: used while the files are parsed, harmless afterwards.
BASE_VARIABLES = (
    "dataset_type", "data_root", "backend_args", "train_pipeline", "test_pipeline", "val_pipeline",
    "vis_backends", "image_size", "img_scale", "img_scales", "max_epochs", "max_iters", "max_iter", "norm_cfg",
    "interval", "pretrained", "checkpoint", "file_client_args", "num_classes",
)
# mmdet 2.x keys that mmengine ignores, and what replaced them.
LEGACY_KEYS = {
    "optimizer": "optim_wrapper=dict(optimizer=dict(...))",
    "optimizer_config": "optim_wrapper (clip_grad=..., accumulative_counts=...)",
    "lr_config": "param_scheduler=[...]",
    "runner": "train_cfg=dict(type='EpochBasedTrainLoop', max_epochs=...)",
    "total_epochs": "train_cfg.max_epochs",
    "data": "train_dataloader / val_dataloader / test_dataloader",
    "evaluation": "val_evaluator and train_cfg.val_interval",
    "checkpoint_config": "default_hooks.checkpoint",
    "log_config": "default_hooks.logger",
    "workflow": "train_cfg / val_cfg",
    "fp16": "--amp (optim_wrapper.type='AmpOptimWrapper')",
    "dist_params": "env_cfg.dist_cfg",
    "gpu_ids": "the launcher (torchrun ... --launcher pytorch)",
}
DATA_SPLITS = ("train", "val", "test")
DEMO_HINTS = {
    "cls": "python -m hst_fast.train configs/cls_demo.py (generated images, no download)",
    "det": "python -m hst_fast.train configs/cascade_demo.py (generated COCO-format shapes, no download)",
    "seg": "python -m hst_fast.train configs/upernet_demo.py (generated ADE20K-format shapes, no download)",
}


class ConfigError(ValueError):
    """A config that would not do what it says; the message names the key and the fix."""


class CheckpointError(ValueError):
    """A checkpoint file torch cannot read (truncated, corrupted, not a checkpoint); the message names it."""


def _is_component(value) -> bool:
    """A dict, or a list holding dicts: something only a reader of the key would build."""
    if isinstance(value, dict):
        return True
    return isinstance(value, (list, tuple)) and any(isinstance(v, dict) for v in value)


def check_config_keys(cfg: Config, cfg_options: Optional[Dict] = None) -> None:
    """Raises ``ConfigError`` for top-level keys that nothing reads (see the module docstring).

    Unknown top-level variables holding numbers, strings or plain lists are allowed: configs use them
    as named constants (``vit_name = ...``); unknown ones holding dicts (components) are not, nor are
    near-misses of a Runner key.
    """
    known = RUNNER_KEYS + CONFIG_KEYS
    problems = []
    for key, value in (cfg_options or {}).items():
        top = key.split(".")[0]
        if top not in known:
            problems.append(
                f"--cfg-options {key}={value}: {top!r} is not read by the Runner. Variables such as data_root are "
                f"used only while the config file is parsed, so overriding them here changes nothing; override the "
                f"keys that use them (e.g. train_dataloader.dataset.data_root=..., val_evaluator.ann_file=...)."
            )
    for key in cfg.keys():
        if key in known or key in BASE_VARIABLES or key.startswith("_"):
            continue
        close = difflib.get_close_matches(key, known, n=1, cutoff=0.75)
        if key in LEGACY_KEYS:
            problems.append(f"{key!r} is an mmdet 2.x key that mmengine ignores; use {LEGACY_KEYS[key]}.")
        elif close:
            problems.append(f"{key!r} is not a key mmengine's Runner reads; did you mean {close[0]!r}?")
        elif _is_component(cfg[key]):
            problems.append(
                f"{key!r} holds a component config but no part of the Runner reads a top-level {key!r}; "
                f"known keys are {', '.join(RUNNER_KEYS)}."
            )
    problems += _loop_key_problems(cfg)
    if problems:
        raise ConfigError("config " + str(cfg.filename) + ":\n  " + "\n  ".join(problems))


def _loop_class(cfg: Config, key: str, loop: dict):
    """The loop class the Runner builds from ``cfg[key]``: its ``type``, or mmengine's default for the key."""
    if "type" in loop:
        if not isinstance(loop["type"], str):
            return loop["type"]
        with LOOPS.switch_scope_and_registry(cfg.get("default_scope")) as registry:
            return registry.get(loop["type"])
    if key == "train_cfg":
        return EpochBasedTrainLoop if loop.get("by_epoch", True) else IterBasedTrainLoop
    return ValLoop if key == "val_cfg" else TestLoop


def _loop_key_problems(cfg: Config) -> List[str]:
    """Keys of ``train_cfg`` / ``val_cfg`` / ``test_cfg`` that their loop class does not take."""
    problems = []
    for key in ("train_cfg", "val_cfg", "test_cfg"):
        loop = cfg.get(key)
        cls = _loop_class(cfg, key, loop) if isinstance(loop, dict) else None
        if cls is None:  # not a dict, or a type nothing registered: the Runner's build reports it
            continue
        parameters = inspect.signature(cls).parameters
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
            continue
        accepted = set(parameters) - {"runner", "dataloader", "evaluator"} | {"type", "by_epoch"}
        for name in sorted(k for k in set(loop) - accepted if not k.startswith("_")):  # `_scope_` of base files
            close = difflib.get_close_matches(name, sorted(accepted), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; it takes {sorted(accepted)}"
            problems.append(f"{key}.{name}: {cls.__name__} takes no {name!r}{hint}")
    return problems


def _leaf_datasets(dataset) -> Iterator[dict]:
    """Dataset configs inside wrappers (RepeatDataset, ConcatDataset, ClassBalancedDataset...)."""
    if not isinstance(dataset, dict):
        return
    if "dataset" in dataset:
        yield from _leaf_datasets(dataset["dataset"])
    elif "datasets" in dataset:
        for child in dataset["datasets"]:
            yield from _leaf_datasets(child)
    else:
        yield dataset


def _generates_data(dataset: dict, scope: Optional[str]) -> bool:
    """Whether the dataset class writes its own files on first use (``GENERATES_DATA``)."""
    kind = dataset.get("type")
    if not isinstance(kind, str):
        return bool(getattr(kind, "GENERATES_DATA", False))
    with DATASETS.switch_scope_and_registry(scope) as registry:
        cls = registry.get(kind)
    return bool(getattr(cls, "GENERATES_DATA", False))


def _join(root: str, path: str) -> str:
    return path if not root or osp.isabs(path) else osp.join(root, path)


def _dataset_paths(dataset: dict) -> List[Tuple[str, str, bool]]:
    """(what, path, is_dir) that ``dataset`` will read."""
    root = dataset.get("data_root") or ""
    paths = []
    if dataset.get("ann_file"):
        paths.append(("ann_file", _join(root, dataset["ann_file"]), False))
    prefix = dataset.get("data_prefix")
    if isinstance(prefix, dict):
        paths += [(f"data_prefix.{k}", _join(root, v), True) for k, v in prefix.items() if isinstance(v, str) and v]
    if not paths and root:
        paths.append(("data_root", root, True))
    return paths


def _evaluator_files(evaluator) -> Iterable[str]:
    for metric in evaluator if isinstance(evaluator, (list, tuple)) else [evaluator]:
        if isinstance(metric, dict) and metric.get("ann_file"):
            yield metric["ann_file"]


def check_data_paths(cfg: Config, splits: Sequence[str] = DATA_SPLITS) -> None:
    """Raises ``FileNotFoundError`` listing every missing annotation file / image folder of the
    ``splits`` dataloaders and evaluators, with the ``--cfg-options`` that relocate them and the demo
    config that needs no download. Datasets that generate their data are skipped."""
    scope = cfg.get("default_scope")
    missing, options, roots, task = [], [], [], "det"
    for split in splits:
        loader = cfg.get(f"{split}_dataloader")
        if not loader or (split == "val" and not cfg.get("val_cfg")):
            continue
        generated = False
        for dataset in _leaf_datasets(loader.get("dataset")):
            if "VTAB" in str(dataset.get("type")):
                task = "cls"
            elif "seg_map_path" in (dataset.get("data_prefix") or {}):  # mmseg datasets
                task = "seg"
            if _generates_data(dataset, scope):
                generated = True
                continue
            absent = [(what, path) for what, path, is_dir in _dataset_paths(dataset)
                      if not (osp.isdir(path) if is_dir else osp.isfile(path))]
            for what, path in absent:
                missing.append(f"{split}_dataloader.dataset.{what}: {path}")
            if absent and dataset.get("data_root"):
                roots.append(dataset["data_root"])
                options.append(f"{split}_dataloader.dataset.data_root=DIR")
        if generated:
            continue
        for ann_file in _evaluator_files(cfg.get(f"{split}_evaluator")):
            if not osp.isfile(ann_file):
                missing.append(f"{split}_evaluator.ann_file: {ann_file}")
                relative = next((osp.relpath(ann_file, r) for r in roots if ann_file.startswith(r)), "ANN.json")
                options.append(f"{split}_evaluator.ann_file=DIR/{relative}")
    if not missing:
        return
    # the splits not checked now (test when training) usually read the same folder: relocate them too
    for split in DATA_SPLITS:
        loader = cfg.get(f"{split}_dataloader") or {}
        if split in splits or not isinstance(loader.get("dataset"), dict):
            continue
        if any(d.get("data_root") in roots for d in _leaf_datasets(loader["dataset"])):
            options.append(f"{split}_dataloader.dataset.data_root=DIR")
            for ann_file in _evaluator_files(cfg.get(f"{split}_evaluator")):
                relative = next((osp.relpath(ann_file, r) for r in roots if ann_file.startswith(r)), "ANN.json")
                options.append(f"{split}_evaluator.ann_file=DIR/{relative}")
    where = f" at {', '.join(dict.fromkeys(roots))}" if roots else ""
    raise FileNotFoundError(
        f"dataset files not found{where}; expected:\n    " + "\n    ".join(missing) + "\n"
        f"Put the dataset there (a symlink works), or point the config at it with\n"
        f"    --cfg-options {' '.join(dict.fromkeys(options))}\n"
        f"To try the pipeline without downloading anything: {DEMO_HINTS[task]}"
    )


def check_checkpoint(path: str, given_as: str) -> None:
    """Raises ``FileNotFoundError`` when the checkpoint ``path`` (given as ``given_as``, e.g. ``--resume``) does
    not exist, ``CheckpointError`` when ``torch.load(weights_only=True)`` cannot read it. Tensors are
    memory-mapped (files in torch's zip format), so a large checkpoint costs little more than its header.
    URLs (``https://...``, which mmengine downloads) are left to mmengine."""
    if "://" in path:
        return
    if not osp.isfile(path):
        raise FileNotFoundError(f"{given_as}: checkpoint not found: {path} (absolute: {osp.abspath(path)})")
    with open(path, "rb") as handle:
        zipped = handle.read(4) == b"PK\x03\x04"
    try:
        torch.load(path, map_location="cpu", weights_only=True, mmap=zipped)
    except Exception as err:  # torch raises RuntimeError, UnpicklingError, EOFError... depending on the damage
        raise CheckpointError(f"{given_as}: {path} is not a readable checkpoint (truncated or corrupted?): "
                              f"{type(err).__name__}: {err}") from err
