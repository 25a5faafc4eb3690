"""Classification through mmengine's Runner: an HST (or baseline) classifier as a ``BaseModel``.

Registered in mmengine's root registry (no mmdet scope needed); VTAB configs use it with
``default_scope='mmengine'``. ``feature_cache=dict(...)`` (frozen mode) reads the ViT's features of each
sample from disk after the first epoch (``hst_fast.feature_cache``; checks in
``hst_fast.openmmlab.feature_cache_checks``).
"""
from __future__ import annotations

import json
from typing import Any, Dict, List, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from mmengine.logging import print_log
from mmengine.model import BaseModel
from mmengine.registry import MODELS

import hst_fast
from hst_fast.feature_cache import FeatureCache
from hst_fast.openmmlab.feature_cache_checks import cache_dir, cache_settings, check_sample_ids
from hst_fast.openmmlab.model_args import check_overrides, pretrained_path, trainable_line


@MODELS.register_module()
class HSTClassifier(BaseModel):
    """``forward(inputs, labels, sample_ids, mode)``: 'tensor' -> logits [B, C]; 'loss' -> dict(loss=cross-entropy);
    'predict' -> [dict(pred=int, label=int)] per image, for ``ClsAccuracy``. ``sample_ids`` (one str per image,
    from ``VTABDataset``) key the feature cache."""

    def __init__(
        self,
        vit_name: str = "vit_base_patch16_224",
        num_classes: int = 1000,
        pretrained: Optional[str] = None,
        kernel_backend: str = "auto",
        data_preprocessor: Optional[dict] = None,
        init_cfg: Optional[dict] = None,
        feature_cache: Optional[dict] = None,
        **overrides: Any,
    ):
        """vit_name: timm ViT; num_classes: head size; pretrained / init_cfg: a local ViT checkpoint;
        kernel_backend: 'auto' | 'triton' | 'torch'; data_preprocessor: mmengine's (normalizes uint8 batches);
        feature_cache: None, or dict(dir=None, dtype='float16', eval=True) to store the frozen ViT's features
        (backbone_grad='none'; dir None: ``<work_dir>/feature_cache``; eval: the val/test split's too);
        overrides: HST overrides and timm ViT kwargs, as ``hst_fast.create_model``."""
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        owner = type(self).__name__
        check_overrides(owner, overrides)
        path = pretrained_path(owner, pretrained, init_cfg)
        self.hst = hst_fast.create_model(vit_name, task="cls", num_classes=num_classes, pretrained=path,
                                         kernel_backend=kernel_backend, **overrides)
        source = f"pretrained ViT from {path}" if path else "randomly initialized ViT (no pretrained checkpoint)"
        print_log(f"{trainable_line(self, f'{owner}({vit_name})')}; {source}", logger="current")
        self.cache_settings = cache_settings(owner, feature_cache, self.hst)
        # the ViT's input depends on the normalization too: part of the cache key
        self._cache_input_key = json.dumps(data_preprocessor, sort_keys=True, default=str)
        self.feature_cache: Optional[FeatureCache] = None

    def open_feature_cache(self, default_dir: Optional[str] = None) -> FeatureCache:
        """Opens the cache at ``feature_cache.dir``, else ``default_dir``; once the ViT weights are final
        (``FeatureCacheHook`` calls it after checkpoint loading), as the cache keys on them."""
        directory = cache_dir(self.cache_settings, default_dir)
        self.feature_cache = FeatureCache(directory, self.hst, self.cache_settings.dtype, self._cache_input_key)
        return self.feature_cache

    def init_weights(self) -> None:
        """Weights were set by ``create_model`` (HST.md init + pretrained ViT); nothing to redo."""
        self._is_init = True

    def forward(
        self,
        inputs: torch.Tensor,
        labels: Optional[Union[torch.Tensor, Sequence[int]]] = None,
        sample_ids: Optional[Sequence[str]] = None,
        data_samples: Any = None,
        mode: str = "tensor",
    ) -> Union[torch.Tensor, Dict[str, torch.Tensor], List[Dict[str, int]]]:
        cached = self.cache_settings is not None and (self.training or self.cache_settings.eval)
        logits = self._logits_from_cache(inputs, sample_ids) if cached else self.hst(inputs)
        if mode == "tensor":
            return logits
        if labels is None:
            raise ValueError(f"HSTClassifier mode={mode!r} needs labels")
        labels = torch.as_tensor(labels, device=logits.device, dtype=torch.long)
        if mode == "loss":
            return dict(loss=F.cross_entropy(logits, labels))
        if mode == "predict":
            predictions = logits.argmax(dim=1).tolist()
            return [dict(pred=p, label=t) for p, t in zip(predictions, labels.tolist(), strict=True)]
        raise ValueError(f"mode must be 'tensor', 'loss' or 'predict', got {mode!r}")

    def _logits_from_cache(self, inputs: torch.Tensor, sample_ids: Optional[Sequence[str]]) -> torch.Tensor:
        """[B, 3, H, W] -> logits [B, C], the ViT's features read from (or written to) the feature cache."""
        check_sample_ids(sample_ids, inputs.shape[0])
        cache = self.feature_cache or self.open_feature_cache()
        stages = self.hst.forward_stage_tokens(inputs, cache.block_features(self.hst, sample_ids, inputs))
        return self.hst.forward_head(stages[-1][0])
