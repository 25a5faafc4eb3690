"""Every adaptation method through the drivers, for classification, detection and segmentation: train, write full
and adapter-only checkpoints, resume, evaluate from the adapter alone; the adapter restores the trained model."""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import torch

pytest.importorskip("mmdet.models", reason="mmdet (with mmcv ops) is not installed; `make install` builds it")
pytest.importorskip("mmcv.ops", reason="mmcv was built without its compiled ops")
pytest.importorskip("mmseg.apis", reason="mmsegmentation is not installed; `make install` installs it")

from det_helpers import (  # noqa: E402,F401  (one_torch_thread: an autouse fixture)
    CONFIGS,
    TINY_DET_MODEL,
    as_cli,
    latest_log,
    logged_metric,
    one_torch_thread,
    tiny_cls_options,
    tiny_det_options,
    tiny_seg_options,
)
from mmengine.config import Config  # noqa: E402
from mmengine.registry import MODELS, init_default_scope  # noqa: E402

from hst_fast import test as test_driver  # noqa: E402
from hst_fast import train as train_driver  # noqa: E402
from hst_fast.adapter import AdapterError, adapter_state_dict  # noqa: E402
from hst_fast.baselines import METHODS  # noqa: E402
from hst_fast.openmmlab.hooks import find_adapted_model, load_task_adapter, save_task_adapter  # noqa: E402


@dataclass(frozen=True)
class TaskRun:
    """One task family's demo config, shrunk: trained for one unit (epoch or iterations), then resumed for one more."""

    config: str
    options: Callable[[Path], dict]  # the first run's options, given the generated data's folder
    resumed: dict  # the options that extend the run by one unit and evaluate at its end
    resumed_from: str  # what the resumed run's log says
    first_unit_log: str  # a training log line of the first unit only
    checkpoint: str  # the resumed run's last checkpoint
    method_key: str
    metric: str  # what the evaluation logs


TASKS = {
    "cls": TaskRun("cls_demo.py", tiny_cls_options, {"train_cfg.max_epochs": 2, "train_cfg.val_interval": 2},
                   "resumed epoch: 1", "Epoch(train) [1]", "epoch_2.pth", "model.method", "cls/top1"),
    "det": TaskRun("cascade_demo.py", lambda root: {**tiny_det_options(root, num_train=4, num_val=2), **TINY_DET_MODEL},
                   {"train_cfg.max_epochs": 2, "train_cfg.val_interval": 2}, "resumed epoch: 1", "Epoch(train) [1]",
                   "epoch_2.pth", "model.backbone.method", "coco/bbox_mAP"),
    "seg": TaskRun("upernet_demo.py", lambda root: tiny_seg_options(root, 2, checkpoint_interval=2, log_interval=1),
                   {"train_cfg.max_iters": 4, "train_cfg.val_interval": 4}, "resumed epoch: 0, iter: 2",
                   "Iter(train) [1/", "iter_4.pth", "model.backbone.method", "mIoU"),
}


def build_model(config: str, options: dict):
    """The config's model, built as the Runner builds it (registry scope of the config)."""
    cfg = Config.fromfile(str(CONFIGS / config))
    cfg.merge_from_dict(options)
    init_default_scope(cfg.get("default_scope", "mmengine"))
    return MODELS.build(cfg.model)


@pytest.mark.parametrize("method", ("hst", *METHODS))
@pytest.mark.parametrize("task", TASKS)
def test_method_trains_resumes_and_its_adapter_restores_and_evaluates(task, method, tmp_path):
    run = TASKS[task]
    config, options = run.config, {**run.options(tmp_path / "data"), run.method_key: method}
    work = tmp_path / "work"
    train_driver.train([str(CONFIGS / config), "--work-dir", str(work), *as_cli(options)])
    options.update(run.resumed)
    train_driver.train([str(CONFIGS / config), "--work-dir", str(work), "--resume", *as_cli(options)])
    log = latest_log(work)
    assert run.resumed_from in log and run.first_unit_log not in log
    trained = logged_metric(log, run.metric)

    adapter = work / "adapter"
    saved = json.loads((adapter / "adapter_config.json").read_text())["model"]
    assert saved.get("method", "hst") == method
    assert (adapter / "task_heads.safetensors").is_file() == (task != "cls")  # a classifier's head is the adapter's

    # Onto a freshly built model: the frozen part (the "pretrained file") from the checkpoint, the rest from the
    # adapter, which must bring back every other tensor of the trained model, bit for bit.
    state = torch.load(work / run.checkpoint)["state_dict"]
    model = build_model(config, options)
    prefix, adapted = find_adapted_model(model)
    own = {f"{prefix}.{k}" for k in adapter_state_dict(adapted)}
    frozen = {f"{prefix}.{k}" for k in adapted.state_dict()} - own
    model.load_state_dict({k: state[k] for k in frozen}, strict=False)
    assert any(not torch.equal(v, state[k]) for k, v in model.state_dict().items()), "nothing left to restore"
    load_task_adapter(model, str(adapter))
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, state[name], rtol=0, atol=0, msg=name)

    # The test driver evaluates the adapter folder alone (the config's ViT: here the seeded random one).
    test_driver.evaluate([str(CONFIGS / config), str(adapter), "--work-dir", str(tmp_path / "test"),
                          *as_cli(options)])
    test_log = latest_log(tmp_path / "test")
    assert "adapter loaded from" in test_log
    assert logged_metric(test_log, run.metric) == trained


def test_heads_from_another_save_are_refused(tmp_path):
    """A save interrupted between the adapter and the heads leaves a mixed pair: refused, the model untouched."""
    run = TASKS["det"]
    model = build_model(run.config, run.options(tmp_path / "data"))
    save_task_adapter(model, str(tmp_path / "adapter"))
    shutil.copy(tmp_path / "adapter" / "task_heads.safetensors", tmp_path / "old_heads.safetensors")
    _, adapted = find_adapted_model(model)
    next(p for _, p in adapted.trainable_named_parameters()).data.add_(1.0)
    save_task_adapter(model, str(tmp_path / "adapter"))
    shutil.copy(tmp_path / "old_heads.safetensors", tmp_path / "adapter" / "task_heads.safetensors")
    fresh = build_model(run.config, run.options(tmp_path / "data"))
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    with pytest.raises(AdapterError, match=r"task heads .* were saved with other adapter weights"):
        load_task_adapter(fresh, str(tmp_path / "adapter"), force=True)
    assert all(torch.equal(v, before[k]) for k, v in fresh.state_dict().items())
