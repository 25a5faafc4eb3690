"""Classification through mmengine's Runner: an HST (or baseline) classifier as a ``BaseModel``.

Registered in mmengine's root registry (no mmdet scope needed); VTAB configs use it with
``default_scope='mmengine'``.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from mmengine.logging import print_log
from mmengine.model import BaseModel
from mmengine.registry import MODELS

import hst_fast
from hst_fast.openmmlab.model_args import check_overrides, pretrained_path, trainable_line


@MODELS.register_module()
class HSTClassifier(BaseModel):
    """``forward(inputs, labels, mode)``: 'tensor' -> logits [B, C]; 'loss' -> dict(loss=cross-entropy);
    'predict' -> [dict(pred=int, label=int)] per image, for ``ClsAccuracy``."""

    def __init__(
        self,
        vit_name: str = "vit_base_patch16_224",
        num_classes: int = 1000,
        pretrained: Optional[str] = None,
        kernel_backend: str = "auto",
        data_preprocessor: Optional[dict] = None,
        init_cfg: Optional[dict] = None,
        **overrides: Any,
    ):
        """vit_name: timm ViT; num_classes: head size; pretrained / init_cfg: a local ViT checkpoint;
        kernel_backend: 'auto' | 'triton' | 'torch'; data_preprocessor: mmengine's (normalizes uint8 batches);
        overrides: HST overrides and timm ViT kwargs, as ``hst_fast.create_model``."""
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        owner = type(self).__name__
        check_overrides(owner, overrides)
        path = pretrained_path(owner, pretrained, init_cfg)
        self.hst = hst_fast.create_model(vit_name, task="cls", num_classes=num_classes, pretrained=path,
                                         kernel_backend=kernel_backend, **overrides)
        source = f"pretrained ViT from {path}" if path else "randomly initialized ViT (no pretrained checkpoint)"
        print_log(f"{trainable_line(self, f'{owner}({vit_name})')}; {source}", logger="current")

    def init_weights(self) -> None:
        """Weights were set by ``create_model`` (HST.md init + pretrained ViT); nothing to redo."""
        self._is_init = True

    def forward(
        self,
        inputs: torch.Tensor,
        labels: Optional[Union[torch.Tensor, Sequence[int]]] = None,
        data_samples: Any = None,
        mode: str = "tensor",
    ) -> Union[torch.Tensor, Dict[str, torch.Tensor], List[Dict[str, int]]]:
        logits = self.hst(inputs)
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
