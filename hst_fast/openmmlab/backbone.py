"""``HSTViT``: the HST side network on a frozen timm ViT as an mmdet / mmseg backbone (HST.md §4).

Its four stage maps (strides 4/8/16/32, ``side_dims`` channels) feed an FPN with
``in_channels=side_dims`` or an mmseg decode head (UperNet). Registered in mmengine's root MODELS
registry, the parent of mmdet's and mmseg's, so configs of either scope find ``type='HSTViT'``.

Weights: ``create_model`` initializes the side network as HST.md §3 says when the module is built;
the local pretrained ViT named by ``init_cfg=dict(type='Pretrained', checkpoint=PATH)`` is read by
``init_weights()``, which mmengine's Runner calls before training, and which checkpoint loading
(``hst_fast.test``, mmseg's ``init_model`` and ``MMSegInferencer``) does not: their checkpoint already
holds the ViT, so the file need not exist there. mmengine's generic initializers are not run (they
would overwrite both). A state dict that holds the backbone's trained weights but not its ViT is
refused, so a checkpoint never loads half, leaving a random ViT behind.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence, Tuple

import torch
from mmengine.logging import print_log
from mmengine.model import BaseModule
from mmengine.registry import MODELS

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
        self.pretrained_file = pretrained_path(owner, pretrained, init_cfg, must_exist=False)
        self.out_indices = tuple(out_indices)
        self._model_args = dict(vit_name=vit_name, task=task, num_classes=num_classes, kernel_backend=kernel_backend,
                                **overrides)
        self.model = hst_fast.create_model(**self._model_args)
        self.out_channels = [self.model.out_channels[i] for i in self.out_indices]
        source = (f"pretrained ViT from {self.pretrained_file} (read by init_weights)" if self.pretrained_file
                  else "randomly initialized ViT (no pretrained checkpoint)")
        print_log(f"{trainable_line(self, f'{owner}({vit_name})')}; {source}", logger="current")

    def init_weights(self) -> None:
        """Copies a freshly built model's pretrained ViT into this one, in place (the optimizer already holds its
        parameters): the ViT's tensors and whatever a method keeps inside it at its initialization (LoRA's A, B);
        the side network keeps its construction-time initialization (see the module docstring)."""
        if self.pretrained_file is not None and not self._is_init:
            path = pretrained_path(type(self).__name__, self.pretrained_file, None)
            self.model.vit.load_state_dict(hst_fast.create_model(**self._model_args, pretrained=path).vit.state_dict())
            print_log(f"{type(self).__name__}: loaded the pretrained ViT from {path}", logger="current")
        self._is_init = True

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any) -> None:
        """Refuses a state dict with this backbone's weights outside the ViT but not all of the ViT's."""
        vit_prefix = prefix + "model.vit."
        if any(k.startswith(prefix) and not k.startswith(vit_prefix) for k in state_dict):
            missing = [k for k in self.model.vit.state_dict(prefix=vit_prefix) if k not in state_dict]
            if missing:
                raise ValueError(
                    f"the checkpoint holds {type(self).__name__}'s trained weights ({prefix}*) but not "
                    f"{len(missing)} of its ViT tensors (e.g. {missing[0]}): loading it would leave a randomly "
                    "initialized ViT. Use a full checkpoint written by hst_fast.train (it holds the ViT), or its "
                    "adapter/ folder on the pretrained ViT (python -m hst_fast.test CONFIG WORK_DIR/adapter; in "
                    "Python: model.init_weights(), then hst_fast.openmmlab.load_task_adapter)."
                )
        super()._load_from_state_dict(state_dict, prefix, *args)

    def forward(self, images: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        try:
            self.model.check_input(images)
        except ValueError as err:
            raise ValueError(
                f"{err}. In an mmdet config, pad inputs with model.data_preprocessor.pad_size_divisor=32; in an mmseg "
                "config, with model.data_preprocessor.size_divisor=32 (or size=crop_size) and test_cfg=dict("
                "size_divisor=32) (and keep fixed-size crops/resizes at multiples of 32)."
            ) from err
        features = self.model.forward_features(images)
        return tuple(features[i] for i in self.out_indices)
