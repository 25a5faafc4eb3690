"""What makes the frozen-ViT feature cache (``HSTClassifier(feature_cache=...)``) safe to use, checked before
anything trains.

The cache stores each sample's ViT features once and reads them back in every later epoch, so it is right
only if a sample id always means the same ViT input. Refused, with the cause and the fix:

- the faithful mode (``backbone_grad='full'``) and the baselines: their ViT features change as they train
  (``cache_settings``, when the model is built);
- random transforms in a dataset's pipeline, and batch augments in the data preprocessor: each epoch's
  input differs from the cached one (``configure_feature_cache``, before the Runner is built);
- a dataset without stable sample ids: it must declare ``STABLE_SAMPLE_IDS = True`` and carry
  ``sample_ids`` in its items, as ``VTABDataset`` does (here, and at every batch: ``check_sample_ids``).

A changed backbone, input normalization, input size or storage dtype needs no refusal: the cache keys on
them (``hst_fast.feature_cache``).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterator, List, Optional, Sequence

import torch
from mmengine.config import Config
from mmengine.registry import DATASETS

from hst_fast.feature_cache import STORAGE_DTYPES
from hst_fast.hst import HST
from hst_fast.openmmlab.checks import ConfigError, _leaf_datasets

DTYPES = {name: dtype for dtype, name in STORAGE_DTYPES.items()}
SETTING_KEYS = ("dir", "dtype", "eval")
DISABLE_HINT = "or train without the cache (--cfg-options model.feature_cache=None)"
# Transform names that draw random numbers (mmcv/mmpretrain/torchvision/albumentations spellings).
RANDOM_TRANSFORM = re.compile(
    r"Random|Flip|Jitter|Erasing|Aug|Mix|Blur|Noise|PhotoMetric|Albu|Distort|Elastic|Solarize|Posterize|Cutout"
)


@dataclass(frozen=True)
class CacheSettings:
    """``HSTClassifier(feature_cache=dict(dir=None, dtype='float16', eval=True))``, validated."""

    dir: Optional[str]  # None: <work_dir>/feature_cache, given by FeatureCacheHook
    dtype: torch.dtype  # storage dtype of the features
    eval: bool  # also cache the val/test split's features (evaluations after the first skip the ViT)


def cache_settings(owner: str, feature_cache: Optional[dict], model) -> Optional[CacheSettings]:
    """Validated settings of ``feature_cache`` (None: no cache) for ``model`` (the built HST or baseline)."""
    if feature_cache is None:
        return None
    if not isinstance(feature_cache, dict):
        raise TypeError(f"{owner}: feature_cache must be None or dict(dir=..., dtype='float16', eval=True), "
                        f"got {feature_cache!r}")
    unknown = sorted(set(feature_cache) - set(SETTING_KEYS))
    if unknown:
        raise TypeError(f"{owner}: unknown feature_cache keys {unknown}; it takes {list(SETTING_KEYS)}")
    dtype = feature_cache.get("dtype", "float16")
    if dtype not in DTYPES:
        raise ValueError(f"{owner}: feature_cache.dtype must be one of {list(DTYPES)}, got {dtype!r}")
    if not isinstance(model, HST):
        raise ValueError(f"{owner}: feature_cache works with method='hst' only (the baselines train inside the "
                         f"ViT or have no ViT features to reuse); drop model.feature_cache")
    if model.faithful:
        raise ValueError(
            f"{owner}: feature_cache needs backbone_grad='none' (the frozen streaming mode). The faithful mode "
            f"(backbone_grad='full', the default) trains meta tokens and LayerNorms inside the ViT, so its features "
            f"change at every step and cannot be stored. Set model.backbone_grad='none' (--cfg-options "
            f"model.backbone_grad=none) {DISABLE_HINT}."
        )
    return CacheSettings(dir=feature_cache.get("dir"), dtype=DTYPES[dtype], eval=bool(feature_cache.get("eval", True)))


def cache_dir(settings: CacheSettings, default_dir: Optional[str]) -> str:
    """``feature_cache.dir``, else ``default_dir`` (``<work_dir>/feature_cache``, from ``FeatureCacheHook``)."""
    directory = settings.dir or default_dir
    if directory is None:
        raise ValueError("HSTClassifier: feature_cache.dir is not set, and no FeatureCacheHook gave the default "
                         "(<work_dir>/feature_cache): set model.feature_cache.dir, or train with hst_fast.train")
    return directory


def check_sample_ids(sample_ids: Optional[Sequence[str]], batch_size: int) -> None:
    """Raises ``ValueError`` unless a batch of ``batch_size`` images has one sample id each."""
    if sample_ids is None:
        raise ValueError(
            "HSTClassifier(feature_cache=...) needs each batch's sample ids (the 'sample_ids' key of VTABDataset's "
            f"items), and this batch has none: use a dataset with stable sample ids (VTABDataset) {DISABLE_HINT}."
        )
    if len(sample_ids) != batch_size:
        raise ValueError(f"HSTClassifier(feature_cache=...): {len(sample_ids)} sample ids for {batch_size} images")


def _transform_names(transforms) -> Iterator[str]:
    """Type names of a pipeline's transforms, nested ones (RandomApply(transforms=[...])) included; a string is
    taken as a name (``--cfg-options k="[dict(type='RandomFlip')]"`` gives strings)."""
    if isinstance(transforms, str):
        yield transforms
    elif isinstance(transforms, dict):
        kind = transforms.get("type")
        if kind is not None:
            yield kind if isinstance(kind, str) else getattr(kind, "__name__", str(kind))
        for value in transforms.values():  # nested transforms (dicts); other values are arguments
            if isinstance(value, dict) or isinstance(value, (list, tuple)) and any(isinstance(v, dict) for v in value):
                yield from _transform_names(value)
    elif isinstance(transforms, (list, tuple)):
        for value in transforms:
            yield from _transform_names(value)


def _dataset_class(dataset: dict, scope: Optional[str]):
    kind = dataset.get("type")
    if not isinstance(kind, str):
        return kind
    with DATASETS.switch_scope_and_registry(scope) as registry:
        return registry.get(kind)


def _dataset_problems(where: str, dataset: dict, scope: Optional[str]) -> List[str]:
    pipeline = {key: dataset[key] for key in ("pipeline", "transform", "transforms") if key in dataset}
    random = [name for name in _transform_names(list(pipeline.values())) if RANDOM_TRANSFORM.search(name)]
    if random:
        return [
            f"{where}.{next(iter(pipeline))} has random transforms ({', '.join(dict.fromkeys(random))}): the cache "
            f"stores each sample's ViT features once, so later epochs would train on the first epoch's augmentation "
            f"only. Remove them (VTAB-1k's recipe is resize-only, VTABDataset) {DISABLE_HINT}."
        ]
    cls = _dataset_class(dataset, scope)
    if not getattr(cls, "STABLE_SAMPLE_IDS", False):
        name = getattr(cls, "__name__", dataset.get("type"))
        return [
            f"{where}: {name} gives no stable sample ids. The cache keys each sample's features by an id that must "
            f"mean the same input in every epoch (VTABDataset's items carry the SHA-256 of the image file as "
            f"'sample_ids'; a dataset declares it with STABLE_SAMPLE_IDS = True). Use VTABDataset {DISABLE_HINT}."
        ]
    return []


def configure_feature_cache(cfg: Config) -> None:
    """When ``cfg.model.feature_cache`` is set: raises ``ConfigError`` for what would make cached features wrong
    (random transforms, batch augments, datasets without stable sample ids; see the module docstring) and adds
    ``FeatureCacheHook`` (opens the cache under the work dir, logs its size and hits) to ``custom_hooks``."""
    model = cfg.get("model") or {}
    settings = model.get("feature_cache")
    if settings is None:
        return
    scope = cfg.get("default_scope")
    eval_cached = not isinstance(settings, dict) or settings.get("eval", True)
    cached_splits = ("train", "val", "test") if eval_cached else ("train",)
    problems = []
    for split in cached_splits:
        loader = cfg.get(f"{split}_dataloader")
        if not loader:
            continue
        for dataset in _leaf_datasets(loader.get("dataset")):
            problems += _dataset_problems(f"{split}_dataloader.dataset", dataset, scope)
    augments = (model.get("data_preprocessor") or {}).get("batch_augments")
    if augments:
        problems.append(f"model.data_preprocessor.batch_augments ({', '.join(_transform_names(augments))}) change "
                        f"every batch's input: remove them {DISABLE_HINT}.")
    if problems:
        raise ConfigError("model.feature_cache is set, but:\n  " + "\n  ".join(dict.fromkeys(problems)))
    hooks = list(cfg.get("custom_hooks") or [])
    if not any(isinstance(h, dict) and h.get("type") == "FeatureCacheHook" for h in hooks):
        cfg.custom_hooks = hooks + [dict(type="FeatureCacheHook")]
