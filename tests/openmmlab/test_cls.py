"""VTAB-style classification through the same driver: the cls demo shrunk to seconds, then the test driver."""
from __future__ import annotations

import re

import pytest

pytest.importorskip("mmdet.models", reason="mmdet (with mmcv ops) is not installed; `make install` builds it")

from det_helpers import CONFIGS, as_cli, one_torch_thread  # noqa: E402,F401

from hst_fast import test as test_driver  # noqa: E402
from hst_fast import train as train_driver  # noqa: E402


def test_cls_demo_trains_saves_adapter_and_evaluates(tmp_path):
    generator = dict(num_train=32, num_test=16, image_size=64, seed=0)
    options = {"train_cfg.max_epochs": 2, "train_cfg.val_interval": 2, "train_dataloader.batch_size": 16,
               "train_dataloader.num_workers": 0, "train_dataloader.persistent_workers": False,
               "val_dataloader.num_workers": 0, "val_dataloader.persistent_workers": False,
               "test_dataloader.num_workers": 0, "test_dataloader.persistent_workers": False,
               "model.kernel_backend": "torch", "default_hooks.checkpoint.interval": 2}
    for split in ("train", "val", "test"):
        options[f"{split}_dataloader.dataset.data_root"] = str(tmp_path / "shapes")
        options[f"{split}_dataloader.dataset.generator"] = generator
    work_dir = tmp_path / "work"
    train_driver.main([str(CONFIGS / "cls_demo.py"), "--work-dir", str(work_dir), *as_cli(options)])
    log = sorted(work_dir.glob("*/*.log"))[-1].read_text()
    assert re.search(r"HSTClassifier\(vit_tiny_patch16_224\): trainable params: [\d,]+", log)
    assert re.search(r"cls/top1: [\d.]+", log)
    assert (work_dir / "adapter" / "adapter_model.safetensors").is_file()
    assert not (work_dir / "adapter" / "task_heads.safetensors").exists()  # the head is part of the HST adapter

    test_driver.main([str(CONFIGS / "cls_demo.py"), str(work_dir / "epoch_2.pth"), "--work-dir",
                      str(tmp_path / "test"), *as_cli(options)])
    assert re.search(r"cls/top1: [\d.]+", sorted((tmp_path / "test").glob("*/*.log"))[-1].read_text())
