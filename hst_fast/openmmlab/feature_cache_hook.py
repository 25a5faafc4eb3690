"""``FeatureCacheHook``: opens ``HSTClassifier``'s feature cache once the weights are loaded, and logs its disk use
and, after every epoch, how many samples it served (added by the drivers when ``model.feature_cache`` is set)."""
from __future__ import annotations

import os.path as osp
from typing import Optional, Tuple

import torch
from mmengine.dist import all_reduce
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS
from torch.utils.data import DataLoader

from hst_fast.feature_cache import STORAGE_DTYPES, feature_nbytes

# The full VTAB-1k recipe: ViT-B/16 (12 blocks, width 768) at 224 px (1 + 14 * 14 tokens), 1000 training images.
VTAB_RECIPE = dict(depth=12, num_tokens=1 + 14 * 14, dim=768, train_images=1000)


def format_bytes(nbytes: float) -> str:
    """``3631104`` -> ``'3.63 MB'`` (decimal units)."""
    for unit in ("B", "kB", "MB", "GB"):
        if nbytes < 1000:
            return f"{nbytes:.3g} {unit}"
        nbytes /= 1000
    return f"{nbytes:.3g} TB"


@HOOKS.register_module()
class FeatureCacheHook(Hook):
    """Opens the cache at ``model.feature_cache.dir`` (default ``<work_dir>/feature_cache``, which later runs of the
    same backbone and input size can share) before training or testing, logs its size, what this run adds and what
    the full VTAB-1k recipe needs; after each train/val/test epoch logs the hits and misses of all ranks (a miss is
    a sample the ViT ran on)."""

    priority = "NORMAL"

    def __init__(self):
        self._counted = (0, 0)

    def before_train(self, runner) -> None:
        self._open(runner, runner.train_dataloader, runner.val_loop.dataloader if runner.val_loop else None)

    def before_test(self, runner) -> None:
        self._open(runner, None, runner.test_dataloader)

    def after_train_epoch(self, runner) -> None:
        self._log_counts(runner, f"train epoch {runner.epoch + 1}")

    def after_val_epoch(self, runner, metrics=None) -> None:
        self._log_counts(runner, "val")

    def after_test_epoch(self, runner, metrics=None) -> None:
        self._log_counts(runner, "test")

    @staticmethod
    def _classifier(runner):
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        if getattr(model, "cache_settings", None) is None:
            raise ValueError(f"FeatureCacheHook needs HSTClassifier(feature_cache=...), got {type(model).__name__} "
                             f"without a feature cache")
        return model

    def _open(self, runner, train_loader: Optional[DataLoader], eval_loader: Optional[DataLoader]) -> None:
        model = self._classifier(runner)
        cache = model.open_feature_cache(osp.join(runner.work_dir, "feature_cache"))
        self._counted = (cache.hits, cache.misses)
        input_size = tuple((train_loader or eval_loader).dataset[0]["inputs"].shape[-2:])
        depth, tokens, dim = cache.entry_shape(model.hst, input_size)
        per_sample = feature_nbytes(depth, tokens, dim, cache.dtype)
        cached = [train_loader] + ([eval_loader] if model.cache_settings.eval else [])
        counts = [len(loader.dataset) for loader in cached if loader is not None]
        entries, used = cache.usage()
        dtype = STORAGE_DTYPES[cache.dtype]
        vtab = feature_nbytes(VTAB_RECIPE["depth"], VTAB_RECIPE["num_tokens"], VTAB_RECIPE["dim"], cache.dtype)
        print_log(
            f"feature cache {cache.folder(input_size)}: {format_bytes(per_sample)} per sample ({depth} blocks x "
            f"{tokens} tokens x {dim} channels, {dtype}); holds {entries} samples, {format_bytes(used)}; this run "
            f"caches {' + '.join(map(str, counts)) or 0} samples: {format_bytes(per_sample * sum(counts))}. The full "
            f"VTAB-1k recipe (ViT-B/16, 224 px, {dtype}) needs {format_bytes(vtab)} per sample: "
            f"{format_bytes(vtab * VTAB_RECIPE['train_images'])} for its 1000 training images, plus "
            f"{format_bytes(vtab)} per test image when evaluation is cached", logger="current")

    def _log_counts(self, runner, what: str) -> None:
        cache = self._classifier(runner).feature_cache
        if cache is None:
            return
        now: Tuple[int, int] = (cache.hits, cache.misses)
        counts = torch.tensor([now[0] - self._counted[0], now[1] - self._counted[1]])
        self._counted = now
        all_reduce(counts)  # every rank's samples (no-op without a process group)
        hits, misses = counts.tolist()
        if hits or misses:
            print_log(f"feature cache, {what}: {hits} hits, {misses} misses (the ViT ran on {misses} of "
                      f"{hits + misses} samples)", logger="current")

