"""``HSTViT``: the HST side network on a frozen timm ViT as an mmdet backbone (HST.md §4).

Its four stage maps (strides 4/8/16/32, ``side_dims`` channels) feed an FPN with
``in_channels=side_dims``. Weights are set when the module is built: ``create_model`` initializes
the side network as HST.md §3 says and loads the local pretrained ViT named by
``init_cfg=dict(type='Pretrained', checkpoint=PATH)``; mmengine's generic initializers are not run
on it (they would overwrite both).
"""
from __future__ import annotations

from typing import Any, Optional, Sequence, Tuple

import torch
from mmdet.registry import MODELS
from mmengine.logging import print_log
from mmengine.model import BaseModule

import hst_fast
from hst_fast.openmmlab.model_args import check_overrides, pretrained_path, trainable_line


@MODELS.register_module()
class HSTViT(BaseModule):
    """Hierarchical Side-Tuning backbone: ``forward(images)`` -> tuple of 4 maps [B, d_s, H/2^(s+1), W/2^(s+1)].

    Frozen parameters stay frozen: ``train()`` re-applies ``HST.freeze`` (the HST module does it in its
    own ``train``), as mmdet's Swin re-freezes its frozen stages.
    """

    def __init__(
        self,
        vit_name: str = "vit_base_patch16_224",
        task: str = "det",
        num_classes: Optional[int] = None,
        pretrained: Optional[str] = None,
        kernel_backend: str = "auto",
        out_indices: Sequence[int] = (0, 1, 2, 3),
        init_cfg: Optional[dict] = None,
        **overrides: Any,
    ):
        """vit_name: timm ViT; task: HST preset ('det' for dense prediction, HST.md §4);
        num_classes: classifier size (unused by detectors; default 0 = no head);
        pretrained / init_cfg: a local ViT checkpoint (one or the other); kernel_backend: 'auto' | 'triton' | 'torch';
        out_indices: which stage maps to return; overrides: HST overrides (side_dims, ...) and timm ViT kwargs."""
        super().__init__(init_cfg=init_cfg)
        owner = type(self).__name__
        check_overrides(owner, overrides)
        if not set(out_indices) <= {0, 1, 2, 3}:
            raise ValueError(f"{owner}: out_indices must be stage indices in 0..3, got {out_indices!r}")
        path = pretrained_path(owner, pretrained, init_cfg)
        self.out_indices = tuple(out_indices)
        self.model = hst_fast.create_model(vit_name, task=task, num_classes=num_classes, pretrained=path,
                                           kernel_backend=kernel_backend, **overrides)
        self.out_channels = [self.model.out_channels[i] for i in self.out_indices]
        source = f"pretrained ViT from {path}" if path else "randomly initialized ViT (no pretrained checkpoint)"
        print_log(f"{trainable_line(self, f'{owner}({vit_name})')}; {source}", logger="current")

    def init_weights(self) -> None:
        """Nothing to do: weights were set at construction (see the module docstring)."""
        self._is_init = True

    def forward(self, images: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        try:
            self.model.check_input(images)
        except ValueError as err:
            raise ValueError(
                f"{err}. In an mmdet config, pad inputs with model.data_preprocessor.pad_size_divisor=32 "
                "(and keep fixed-size crops/resizes at multiples of 32)."
            ) from err
        features = self.model.forward_features(images)
        return tuple(features[i] for i in self.out_indices)
