"""The frozen-ViT feature cache through the drivers (configs/cls_demo_cached.py shrunk to a 4-block ViT of width 96,
16 training and 8 test images of 64 px): later epochs and evaluations never run the ViT, a warm cache trains to
the same weights, resume and a 2-process DDP run reuse it, changed inputs are never read, and unsafe configs are
refused."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

pytest.importorskip("mmdet.models", reason="mmdet (with mmcv ops) is not installed; `make install` builds it")

from det_helpers import CONFIGS, as_cli, one_torch_thread, train_with_torchrun  # noqa: E402,F401
from mmengine.config import Config  # noqa: E402

from hst_fast import test as test_driver  # noqa: E402
from hst_fast import train as train_driver  # noqa: E402
from hst_fast.openmmlab.checks import ConfigError  # noqa: E402
from hst_fast.openmmlab.classifier import HSTClassifier  # noqa: E402
from hst_fast.openmmlab.feature_cache_checks import configure_feature_cache  # noqa: E402

CONFIG = str(CONFIGS / "cls_demo_cached.py")
TINY = dict(vit_name="vit_tiny_patch16_224", depth=4, embed_dim=96, num_heads=3, num_classes=3, kernel_backend="torch")


def options(data_root: Path, cache_dir: Path, max_epochs: int = 2, num_train: int = 16, batch: int = 8) -> dict:
    opts = {"train_cfg.max_epochs": max_epochs, "train_cfg.val_interval": 2, "train_dataloader.batch_size": batch,
            "model.vit_name": "vit_tiny_patch16_224", "model.depth": 4, "model.embed_dim": 96, "model.num_heads": 3,
            "model.kernel_backend": "torch",
            "model.feature_cache.dir": str(cache_dir), "default_hooks.checkpoint.interval": 1,
            "default_hooks.logger.interval": 1}
    generator = dict(num_train=num_train, num_test=8, image_size=64, seed=0)
    for split in ("train", "val", "test"):
        opts.update({f"{split}_dataloader.num_workers": 0, f"{split}_dataloader.persistent_workers": False,
                     f"{split}_dataloader.dataset.data_root": str(data_root),
                     f"{split}_dataloader.dataset.image_size": 64, f"{split}_dataloader.dataset.generator": generator})
    return opts


def train(work_dir: Path, opts: dict, *extra: str) -> str:
    train_driver.main([CONFIG, "--work-dir", str(work_dir), *extra, *as_cli(opts)])
    return sorted(work_dir.glob("*/*.log"))[-1].read_text()


def counts(log: str, what: str) -> tuple:
    found = re.findall(rf"feature cache, {what}: (\d+) hits, (\d+) misses", log)
    assert found, f"no cache counts for {what!r} in the log"
    return tuple(map(int, found[-1]))


def weights(path: Path) -> dict:
    return torch.load(path)["state_dict"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Run A fills the cache in 2 epochs; run B trains the same config on the warm cache; A then resumes to 3."""
    root = tmp_path_factory.mktemp("cache")
    opts = options(root / "shapes", root / "features")
    logs = dict(filled=train(root / "a", opts), warm=train(root / "b", opts))
    logs["resumed"] = train(root / "a", {**opts, "train_cfg.max_epochs": 3}, "--resume")
    return dict(root=root, opts=opts, **logs)


def test_later_epochs_and_evaluations_never_run_the_vit(runs):
    log = runs["filled"]
    assert counts(log, "train epoch 1") == (0, 16)
    assert counts(log, "train epoch 2") == (16, 0)
    assert counts(log, "val") == (0, 8)  # the first evaluation fills the test split's entries


def test_warm_cache_trains_to_exactly_the_weights_of_the_run_that_filled_it(runs):
    assert counts(runs["warm"], "train epoch 1") == (16, 0) and counts(runs["warm"], "val") == (8, 0)
    filled, warm = weights(runs["root"] / "a" / "epoch_2.pth"), weights(runs["root"] / "b" / "epoch_2.pth")
    assert filled.keys() == warm.keys()
    for name, value in filled.items():
        assert torch.equal(value, warm[name]), name


def test_log_reports_the_cache_size_and_the_full_vtab_recipe(runs):
    # 4 blocks x (1 + 4 * 4) tokens x 96 channels x 2 bytes = 13,056 bytes per sample
    assert re.search(r"feature cache \S+/64x64-float16: 13.1 kB per sample \(4 blocks x 17 tokens x 96 channels, "
                     r"float16\); holds 0 samples, 0 B; this run caches 16 \+ 8 samples: 313 kB", runs["filled"])
    assert re.search(r"holds 24 samples, 3\d\d kB", runs["warm"])
    assert ("The full VTAB-1k recipe (ViT-B/16, 224 px, float16) needs 3.63 MB per sample: 3.63 GB for its 1000 "
            "training images, plus 3.63 MB per test image") in runs["filled"]


def test_resumed_run_reuses_the_cache(runs):
    assert "resumed epoch: 2" in runs["resumed"]
    assert counts(runs["resumed"], "train epoch 3") == (16, 0)


def test_test_driver_evaluates_through_the_cache(runs, tmp_path):
    checkpoint = runs["root"] / "a" / "epoch_2.pth"
    test_driver.main([CONFIG, str(checkpoint), "--work-dir", str(tmp_path), *as_cli(runs["opts"])])
    log = sorted(tmp_path.glob("*/*.log"))[-1].read_text()
    assert counts(log, "test") == (8, 0)
    top1 = re.findall(r"cls/top1: ([\d.]+)", log)[-1]
    assert top1 == re.findall(r"cls/top1: ([\d.]+)", runs["filled"])[-1]  # what run A measured at epoch 2


@pytest.mark.parametrize("change", [
    pytest.param({"randomness.seed": 1}, id="backbone"),  # another random ViT
    pytest.param({"train_dataloader.dataset.image_size": 96}, id="input-size"),
    pytest.param({"model.feature_cache.dtype": "bfloat16"}, id="dtype"),
    pytest.param({"model.data_preprocessor.mean": [0, 0, 0]}, id="normalization"),
])
def test_changed_backbone_input_size_dtype_or_normalization_is_rebuilt_not_read(runs, tmp_path, change):
    log = train(tmp_path, {**runs["opts"], "train_cfg.max_epochs": 1, **change})
    assert counts(log, "train epoch 1") == (0, 16)


def test_eval_false_caches_the_training_split_only(tmp_path):
    opts = options(tmp_path / "shapes", tmp_path / "features", max_epochs=1)
    log = train(tmp_path / "work", {**opts, "model.feature_cache.eval": False, "train_cfg.val_interval": 1})
    assert "this run caches 16 samples" in log and counts(log, "train epoch 1") == (0, 16)
    assert "feature cache, val" not in log and re.search(r"cls/top1: [\d.]+", log)  # evaluated through the ViT
    assert len(list((tmp_path / "features").rglob("*.feat"))) == 16


def test_two_processes_fill_and_read_one_cache(tmp_path):
    """torchrun --nproc_per_node 2 ... --launcher pytorch (gloo): 15 images, so the sampler pads the ranks with a
    repeated image that both may write at once; in epoch 2 each rank reads what either rank wrote."""
    opts = options(tmp_path / "shapes", tmp_path / "features", num_train=15, batch=4)
    log = train_with_torchrun(CONFIG, tmp_path / "work", opts)
    hits, misses = counts(log, "train epoch 1")
    assert hits + misses == 16 and misses >= 15  # 15 images + 1 repeated to fill the second rank
    assert counts(log, "train epoch 2") == (16, 0)
    assert len(list((tmp_path / "features").glob("*/64x64-float16/*.feat"))) == 15 + 8  # train + test images
    assert not list((tmp_path / "features").rglob("*.tmp"))


# ----------------------------------------------------------------------------- refused
def cached_config(**changes) -> Config:
    cfg = Config.fromfile(CONFIG)
    cfg.merge_from_dict(changes)
    return cfg


class ListedImages(torch.utils.data.Dataset):
    """A dataset whose items carry no sample ids."""


@pytest.mark.parametrize("pipeline, named", [
    pytest.param([dict(type="RandomFlip", prob=0.5)], "RandomFlip", id="flip"),
    pytest.param([dict(type="Resize", scale=64), dict(type="RandomResizedCrop", scale=64)], "RandomResizedCrop",
                 id="random-resized-crop"),
    pytest.param([dict(type="RandomApply", transforms=[dict(type="ColorJitter", brightness=0.4)])],
                 "RandomApply, ColorJitter", id="nested-colour-jitter"),
    pytest.param(["dict(type='RandomFlip')"], "dict(type='RandomFlip')", id="from-cfg-options"),  # DictAction: str
])
def test_random_transforms_are_refused(pipeline, named):
    cfg = cached_config(**{"train_dataloader.dataset.pipeline": pipeline})
    expected = rf"train_dataloader.dataset.pipeline has random transforms \({re.escape(named)}\).*Remove them .*"
    with pytest.raises(ConfigError, match=expected + r"model.feature_cache=None"):
        configure_feature_cache(cfg)


def test_batch_augments_are_refused():
    cfg = cached_config(**{"model.data_preprocessor.batch_augments": [dict(type="Mixup", alpha=0.8)]})
    with pytest.raises(ConfigError, match=r"batch_augments \(Mixup\) change every batch's input"):
        configure_feature_cache(cfg)


def test_dataset_without_stable_sample_ids_is_refused():
    cfg = cached_config()
    cfg.test_dataloader.dataset = dict(type=ListedImages)
    with pytest.raises(ConfigError, match=r"test_dataloader.dataset: ListedImages gives no stable sample ids.*"
                                          r"STABLE_SAMPLE_IDS"):
        configure_feature_cache(cfg)


def test_safe_config_gets_the_hook_once():
    cfg = cached_config()
    configure_feature_cache(cfg)
    configure_feature_cache(cfg)
    assert [h["type"] for h in cfg.custom_hooks].count("FeatureCacheHook") == 1
    plain = Config.fromfile(str(CONFIGS / "cls_demo.py"))
    configure_feature_cache(plain)
    assert "FeatureCacheHook" not in str(plain.custom_hooks)


@pytest.mark.parametrize("kwargs, error", [
    pytest.param(dict(), r"needs backbone_grad='none'.*faithful mode \(backbone_grad='full', the default\)",
                 id="faithful"),
    pytest.param(dict(method="linear"), r"feature_cache works with method='hst' only", id="baseline"),
    pytest.param(dict(backbone_grad="none", feature_cache=dict(dtype="float32")), r"feature_cache.dtype must be one of",
                 id="dtype"),
    pytest.param(dict(backbone_grad="none", feature_cache=dict(folder="x")), r"unknown feature_cache keys \['folder'\]",
                 id="unknown-key"),
])
def test_model_refuses_what_it_cannot_cache(kwargs, error):
    kwargs = {"feature_cache": dict(), **kwargs}
    with pytest.raises((ValueError, TypeError), match=error):
        HSTClassifier(**TINY, **kwargs)


def test_batch_without_sample_ids_is_refused(tmp_path):
    model = HSTClassifier(**TINY, backbone_grad="none", feature_cache=dict(dir=str(tmp_path))).train()
    with pytest.raises(ValueError, match=r"needs each batch's sample ids .* VTABDataset"):
        model(torch.randn(2, 3, 64, 64), labels=[0, 1], mode="loss")


def test_cache_without_a_dir_outside_the_drivers_is_refused():
    model = HSTClassifier(**TINY, backbone_grad="none", feature_cache=dict()).train()
    with pytest.raises(ValueError, match=r"feature_cache.dir is not set, and no FeatureCacheHook gave the default"):
        model(torch.randn(2, 3, 64, 64), labels=[0, 1], sample_ids=["a", "b"], mode="loss")
