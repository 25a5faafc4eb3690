"""Bad input stops a run at once with a message that says what to change."""
from __future__ import annotations

import time
from pathlib import Path

import pytest

pytest.importorskip("mmdet.models", reason="mmdet (with mmcv ops) is not installed; `make install` builds it")
pytest.importorskip("mmcv.ops", reason="mmcv was built without its compiled ops")

from det_helpers import CONFIGS, as_cli, one_torch_thread, tiny_det_options  # noqa: E402,F401
from mmengine.config import Config  # noqa: E402

from hst_fast import train as train_driver  # noqa: E402
from hst_fast.data import VTABDataset, make_shapes_vtab  # noqa: E402
from hst_fast.openmmlab.checks import ConfigError, check_config_keys  # noqa: E402


def test_cascade_without_coco_stops_at_once_naming_paths_options_and_demo(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # data_root 'data/coco/' is relative: nothing there
    start = time.perf_counter()
    with pytest.raises(FileNotFoundError) as info:
        train_driver.train([str(CONFIGS / "cascade.py"), "--work-dir", str(tmp_path / "work")])
    message = str(info.value)
    for expected in ("data/coco/annotations/instances_train2017.json", "data/coco/train2017/",
                     "data/coco/annotations/instances_val2017.json", "data/coco/val2017/",
                     "--cfg-options train_dataloader.dataset.data_root=DIR val_dataloader.dataset.data_root=DIR",
                     "val_evaluator.ann_file=DIR/annotations/instances_val2017.json", "configs/cascade_demo.py"):
        assert expected in message, message
    assert time.perf_counter() - start < 30 and not (tmp_path / "work").exists()  # nothing was built


def write_config(tmp_path: Path, body: str) -> str:
    path = tmp_path / "bad_config.py"
    path.write_text(f"_base_ = {str(CONFIGS / 'cascade_demo.py')!r}\n{body}\n")
    return str(path)


@pytest.mark.parametrize("body, message", [
    ("optim_wraper = dict(optimizer=dict(type='AdamW', lr=1e-3))", r"'optim_wraper'.*did you mean 'optim_wrapper'"),
    ("optimizer = dict(type='SGD', lr=0.02)", r"'optimizer' is an mmdet 2.x key.*optim_wrapper"),
    ("my_hooks = [dict(type='EMAHook')]", r"'my_hooks' holds a component config"),
], ids=["typo-optim_wraper", "legacy-optimizer", "unknown-component"])
def test_unknown_top_level_keys(tmp_path, body, message):
    with pytest.raises(ConfigError, match=message):
        train_driver.train([write_config(tmp_path, body), "--work-dir", str(tmp_path / "work")])


def test_cfg_option_of_a_parse_time_variable(tmp_path):
    with pytest.raises(ConfigError, match=r"--cfg-options data_root=/elsewhere: 'data_root' is not read"):
        train_driver.train([str(CONFIGS / "cascade_demo.py"), "--cfg-options", "data_root=/elsewhere"])


def test_backbone_kwarg_typo(tmp_path):
    options = {**tiny_det_options(tmp_path / "shapes"), "model.backbone.side_dim": "[64,128,256,384]"}
    with pytest.raises(TypeError, match=r"unknown argument 'side_dim'; did you mean 'side_dims'"):
        train_driver.train([str(CONFIGS / "cascade_demo.py"), "--work-dir", str(tmp_path / "work"), *as_cli(options)])


def test_missing_pretrained_file(tmp_path):
    options = {**tiny_det_options(tmp_path / "shapes"), "model.backbone.pretrained": str(tmp_path / "ViT-B_16.npz")}
    with pytest.raises(FileNotFoundError, match=r"pretrained ViT checkpoint not found: .*ViT-B_16.npz"):
        train_driver.train([str(CONFIGS / "cascade_demo.py"), "--work-dir", str(tmp_path / "work"), *as_cli(options)])


def test_vtab_list_naming_missing_images(tmp_path):
    root = make_shapes_vtab(str(tmp_path / "task"), num_train=10, num_test=5, image_size=32)
    (root / "images" / "train_00003.png").unlink()
    (root / "images" / "train_00007.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"2 of 10 images named in .*train800val200.txt do not exist.*"
                                                r"images/train_00003.png"):
        VTABDataset(str(root), "train800val200.txt", image_size=32)
    with pytest.raises(ValueError, match=r"test.txt:\d+: label \d is outside \[0, 1\)"):
        VTABDataset(str(root), "test.txt", image_size=32, num_classes=1)


def test_vtab_config_without_data(tmp_path):
    options = {"train_dataloader.dataset.data_root": str(tmp_path / "caltech101"),
               "val_dataloader.dataset.data_root": str(tmp_path / "caltech101")}
    with pytest.raises(FileNotFoundError, match=r"caltech101/train800val200.txt[\s\S]*configs/cls_demo.py"):
        train_driver.train([str(CONFIGS / "vtab" / "caltech101.py"), "--work-dir", str(tmp_path / "w"),
                           *as_cli(options)])


def test_classifier_input_size_not_a_multiple_of_32(tmp_path):
    options = {"train_dataloader.dataset.data_root": str(tmp_path / "shapes"),
               "val_dataloader.dataset.data_root": str(tmp_path / "shapes"),
               "train_dataloader.dataset.image_size": 48, "val_dataloader.dataset.image_size": 48,
               "train_dataloader.num_workers": 0, "train_dataloader.persistent_workers": False,
               "model.kernel_backend": "torch"}
    with pytest.raises(ValueError, match=r"image size 48x48 is not supported: height and width must be multiples"):
        train_driver.train([str(CONFIGS / "cls_demo.py"), "--work-dir", str(tmp_path / "w"), *as_cli(options)])


def test_loop_config_typo(tmp_path):
    with pytest.raises(ConfigError, match=r"train_cfg.max_epoch: EpochBasedTrainLoop takes no 'max_epoch'; did you "
                                          r"mean 'max_epochs'\?"):
        train_driver.train([str(CONFIGS / "cls_demo.py"), "--work-dir", str(tmp_path), "--cfg-options",
                            "train_cfg.max_epoch=1"])


@pytest.mark.parametrize("config", sorted(p.relative_to(CONFIGS).as_posix() for p in CONFIGS.rglob("*.py")
                                          if not p.name.startswith("_")))
def test_shipped_configs_pass_the_key_checks(config):
    if config.startswith(("upernet", "baselines/upernet")):
        pytest.importorskip("mmseg", reason="mmseg configs need mmseg")
    check_config_keys(Config.fromfile(str(CONFIGS / config)))
