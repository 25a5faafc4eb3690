"""Epoch times of the feature cache through the training driver: ``python -m bench.cache_epochs [--images 64] ...``.

Trains ``configs/cls_demo_cached.py`` (frozen mode) with ``hst_fast.train`` at ViT-B/16, 224 px, on a generated
VTAB-format task (``hst_fast.data.make_shapes_vtab``): once with the cache (epoch 1 runs the ViT and fills it,
later epochs read it) and once as the same run without it (``model.feature_cache=None``). A hook times every
training epoch (first iteration's data loading to last iteration's optimizer step; no checkpoint; mmengine's
evaluation after the last epoch, untimed, caches the 8 test images too).
Prints a table; the last line is ``cached epoch speed-up: N.NNx``, the filling epoch over the median later epoch
(goal on CPU: >= 4x). A script, not a timed test: run it alone, with ``OMP_NUM_THREADS`` set as wanted.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Dict, List

import torch
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "cls_demo_cached.py"


@HOOKS.register_module(force=True)  # force: this file is both __main__ and, via custom_imports, bench.cache_epochs
class EpochTimer(Hook):
    """Appends one JSON line per training epoch to ``out``: seconds, and the cache's misses so far (or null)."""

    priority = "VERY_HIGH"  # runs first: before_train_epoch starts the clock before any other hook's work

    def __init__(self, out: str):
        self.out = out
        self.began = 0.0

    def before_train_epoch(self, runner) -> None:
        self.began = time.perf_counter()

    def after_train_epoch(self, runner) -> None:
        seconds = time.perf_counter() - self.began
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        cache = getattr(model, "feature_cache", None)
        with open(self.out, "a") as handle:
            handle.write(json.dumps(dict(seconds=seconds, misses=cache.misses if cache else None)) + "\n")


def run(work: Path, name: str, options: Dict[str, object]) -> List[dict]:
    """Trains once through ``hst_fast.train``; returns each epoch's record."""
    from hst_fast import train as train_driver

    times = work / f"{name}.jsonl"
    config = work / f"{name}.py"
    config.write_text(
        f"_base_ = {str(CONFIG)!r}\n"
        "custom_imports = dict(imports=['hst_fast.openmmlab', 'bench.cache_epochs'], allow_failed_imports=False)\n"
        f"custom_hooks = [dict(type='EpochTimer', out={str(times)!r})]\n"
    )
    train_driver.main([str(config), "--work-dir", str(work / name), "--cfg-options",
                       *(f"{key}={value}" for key, value in options.items())])
    return [json.loads(line) for line in times.read_text().splitlines()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vit", default="vit_base_patch16_224", help="timm ViT (default: ViT-B/16)")
    parser.add_argument("--depth", type=int, default=12, help="ViT blocks (cls_demo.py sets 4; ViT-B has 12)")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--images", type=int, default=64, help="training images (generated)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=3, help="epochs of the cached run (the first fills)")
    parser.add_argument("--dtype", default="float16", choices=["float16", "bfloat16"])
    parser.add_argument("--work-dir", help="keep data, cache and logs here (default: a temporary folder)")
    args = parser.parse_args()
    if args.epochs < 2:
        parser.error("--epochs must be >= 2: one filling epoch and at least one cached epoch")

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work_dir or tmp).resolve()
        work.mkdir(parents=True, exist_ok=True)
        generator = dict(num_train=args.images, num_test=8, image_size=args.image_size, seed=0)
        options: Dict[str, object] = {
            "model.vit_name": args.vit, "model.depth": args.depth, "model.feature_cache.dir": work / "features",
            "model.feature_cache.dtype": args.dtype, "train_dataloader.batch_size": args.batch,
            "train_cfg.val_interval": 10 ** 6, "default_hooks.checkpoint.interval": 10 ** 6,
            "default_hooks.checkpoint.save_last": False, "log_level": "WARNING",
        }
        for split in ("train", "val", "test"):
            options[f"{split}_dataloader.dataset.data_root"] = work / "shapes"
            options[f"{split}_dataloader.dataset.image_size"] = args.image_size
            options.update({f"{split}_dataloader.dataset.generator.{k}": v for k, v in generator.items()})
        cached = run(work, "cached", {**options, "train_cfg.max_epochs": args.epochs})
        plain = run(work, "plain", {**options, "train_cfg.max_epochs": 2, "model.feature_cache": None})
        entries = [p.stat().st_size for p in (work / "features").rglob("*.feat")]  # training + test images

    print(f"\nfeature cache through hst_fast.train: {args.vit} (depth {args.depth}), {args.image_size} px, "
          f"{args.images} images, batch {args.batch}, {args.dtype}, CPU threads {torch.get_num_threads()}")
    print(f"{'run':<10} {'epoch':>5} {'seconds':>8}  ViT ran on")
    misses_before = 0
    for epoch, record in enumerate(cached, start=1):
        print(f"{'cached':<10} {epoch:>5} {record['seconds']:>8.2f}  {record['misses'] - misses_before} images")
        misses_before = record["misses"]
    for epoch, record in enumerate(plain, start=1):
        print(f"{'no cache':<10} {epoch:>5} {record['seconds']:>8.2f}  {args.images} images")
    filling, later = cached[0]["seconds"], statistics.median(r["seconds"] for r in cached[1:])
    print(f"cache on disk: {sum(entries) / 1e6:.1f} MB for {len(entries)} images "
          f"({sum(entries) / len(entries) / 1e6:.3f} MB per image, file header included)")
    print(f"epoch without the cache / cached epoch: {plain[-1]['seconds'] / later:.2f}x")
    print(f"cached epoch speed-up: {filling / later:.2f}x")


if __name__ == "__main__":
    main()
