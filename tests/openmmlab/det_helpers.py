"""Shared settings for the mmdet / mmengine tests: tiny variants of the demo configs via --cfg-options."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs"


def tiny_det_options(data_root: Path, max_epochs: int = 1, image_size: int = 64, num_train: int = 8,
                     num_val: int = 4, max_shapes: int = 2) -> Dict[str, object]:
    """cascade_demo.py shrunk to a few 64 px images and iterations (same generator for both splits); the
    pipelines' Resize (which records the scale factor) keeps the generated size instead of the demo's 160 px."""
    root = str(data_root) + "/"
    generator = dict(num_train=num_train, num_val=num_val, image_size=image_size, max_shapes=max_shapes, seed=0)
    return {
        "train_dataloader.batch_size": 2,
        "train_dataloader.num_workers": 0,
        "train_dataloader.persistent_workers": False,
        "train_dataloader.dataset.data_root": root,
        "train_dataloader.dataset.generator": generator,
        "val_dataloader.num_workers": 0,
        "val_dataloader.persistent_workers": False,
        "val_dataloader.dataset.data_root": root,
        "val_dataloader.dataset.generator": generator,
        "test_dataloader.num_workers": 0,
        "test_dataloader.persistent_workers": False,
        "test_dataloader.dataset.data_root": root,
        "test_dataloader.dataset.generator": generator,
        "val_evaluator.ann_file": root + "annotations/val.json",
        "test_evaluator.ann_file": root + "annotations/val.json",
        "train_dataloader.dataset.pipeline.2.scale": (image_size, image_size),
        "val_dataloader.dataset.pipeline.1.scale": (image_size, image_size),
        "test_dataloader.dataset.pipeline.1.scale": (image_size, image_size),
        "train_cfg.max_epochs": max_epochs,
        "train_cfg.val_interval": max_epochs,
        "default_hooks.checkpoint.interval": 1,
        "default_hooks.logger.interval": 1,
    }


# Smaller than the dense-prediction demos' ViT-Ti (detection, segmentation: the same backbone keys), torch kernels.
TINY_DET_MODEL = {"model.backbone.embed_dim": 96, "model.backbone.num_heads": 3,
                  "model.backbone.kernel_backend": "torch"}


def tiny_cls_options(data_root: Path, max_epochs: int = 1, num_train: int = 16, num_test: int = 8,
                     batch_size: int = 8, image_size: int = 32) -> Dict[str, object]:
    """cls_demo.py shrunk to a few generated images (same generator for both splits), torch kernels, no workers,
    a checkpoint every epoch and a log line every iteration."""
    generator = dict(num_train=num_train, num_test=num_test, image_size=image_size, seed=0)
    options: Dict[str, object] = {
        "train_dataloader.batch_size": batch_size, "model.kernel_backend": "torch",
        "train_cfg.max_epochs": max_epochs, "train_cfg.val_interval": max_epochs,
        "default_hooks.checkpoint.interval": 1, "default_hooks.logger.interval": 1,
    }
    for split in ("train", "val", "test"):
        options.update({f"{split}_dataloader.num_workers": 0, f"{split}_dataloader.persistent_workers": False,
                        f"{split}_dataloader.dataset.data_root": str(data_root),
                        f"{split}_dataloader.dataset.image_size": image_size,
                        f"{split}_dataloader.dataset.generator": generator})
    return options


def tiny_seg_options(data_root: Path, max_iters: int, checkpoint_interval: int = 20,
                     log_interval: int = 10) -> Dict[str, object]:
    """upernet_demo.py on 16 + 4 generated 64 px images, batch 4, no worker processes, the tiny ViT."""
    root = str(data_root) + "/"
    generator = dict(num_train=16, num_val=4, image_size=64, max_shapes=2, seed=0)
    options = {"train_dataloader.batch_size": 4, "train_cfg.max_iters": max_iters, "train_cfg.val_interval": max_iters,
               "default_hooks.checkpoint.interval": checkpoint_interval,
               "default_hooks.logger.interval": log_interval, **TINY_DET_MODEL}
    for split in ("train", "val", "test"):
        options.update({f"{split}_dataloader.num_workers": 0, f"{split}_dataloader.persistent_workers": False,
                        f"{split}_dataloader.dataset.data_root": root,
                        f"{split}_dataloader.dataset.generator": generator})
    return options


def train_with_torchrun(config: str, work_dir: Path, options: Dict[str, object]) -> str:
    """``torchrun --standalone --nproc_per_node 2 -m hst_fast.train CONFIG --launcher pytorch`` on CPU (gloo), one
    OpenMP thread per rank; asserts that it succeeded and returns its run log."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "hst_fast.train", config, "--launcher", "pytorch", "--work-dir", str(work_dir), *as_cli(options)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(command, capture_output=True, text=True, timeout=400, env=env, cwd=REPO)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    log = latest_log(work_dir)
    assert "Distributed training: True" in log
    return log


def latest_log(work_dir: Path) -> str:
    """The text of the newest run log under ``work_dir`` (``<work_dir>/<timestamp>/<timestamp>.log``)."""
    return sorted(work_dir.glob("*/*.log"))[-1].read_text()


def logged_metric(log: str, name: str) -> float:
    """The last value of metric ``name`` (``cls/top1``, ``coco/bbox_mAP``) in a run log."""
    return float(re.findall(rf"{re.escape(name)}: ([\d.]+)", log)[-1])


def as_cli(options: Dict[str, object]) -> List[str]:
    """``--cfg-options`` arguments (DictAction syntax) for ``options``; dict values become one key each."""
    flat = {}
    for key, value in options.items():
        if isinstance(value, dict):
            flat.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            flat[key] = value
    return ["--cfg-options", *(f"{k}={v}" for k, v in flat.items())]


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """One intra-op thread while a module of these tests runs (restored after): the detector's many small
    ops gain nothing from a second thread, and on a shared 2-core machine OpenMP's spinning threads make
    them up to 10x slower. Imported by each test module, which makes it apply there."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def assert_only_trainable_parameters_got_gradients(model: torch.nn.Module) -> None:
    """After a backward: every trainable parameter of ``model`` has a finite gradient, no frozen one has any."""
    for name, param in model.named_parameters():
        if param.requires_grad:
            assert param.grad is not None and torch.isfinite(param.grad).all(), name
        else:
            assert param.grad is None, name
