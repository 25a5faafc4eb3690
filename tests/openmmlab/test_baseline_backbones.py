"""Every baseline method as the mmdet backbone (``HSTViT(method=...)``): ViTDet-style simple pyramid maps
that fit the FPN of configs/cascade.py, and only the method's parameters learn in a detector step."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("mmdet.models", reason="mmdet (with mmcv ops) is not installed; `make install` builds it")
pytest.importorskip("mmcv.ops", reason="mmcv was built without its compiled ops")

from det_helpers import CONFIGS, one_torch_thread  # noqa: E402,F401
from mmdet.registry import MODELS  # noqa: E402
from mmengine.config import Config  # noqa: E402
from mmengine.registry import init_default_scope  # noqa: E402
from test_backbone import TINY_VIT, shapes_batch, tiny_backbone  # noqa: E402

import hst_fast.openmmlab  # noqa: E402,F401  (registers HSTViT)
from hst_fast.baselines import METHODS, BaselineViT  # noqa: E402


@pytest.mark.parametrize("method", METHODS)
def test_baseline_backbone_maps(method):
    backbone = tiny_backbone(method=method)
    assert isinstance(backbone.model, BaselineViT)
    outs = backbone(torch.randn(2, 3, 64, 96))
    assert backbone.out_channels == [64, 128, 256, 384]
    assert [tuple(o.shape) for o in outs] == [(2, c, 64 // s, 96 // s) for c, s in zip([64, 128, 256, 384],
                                                                                      [4, 8, 16, 32])]


@pytest.mark.parametrize("method", ["lora", "convpass"])
def test_detection_config_variant_trains_only_the_method(method):
    init_default_scope("mmdet")
    cfg = Config.fromfile(str(CONFIGS / "baselines" / f"cascade_{method}.py"))
    assert cfg.model.backbone.method == method
    demo = Config.fromfile(str(CONFIGS / "cascade_demo.py"))  # small heads and RoI counts for CPU
    demo.model.backbone = dict(type="HSTViT", task="det", method=method, **TINY_VIT)
    detector = MODELS.build(demo.model)
    detector.train()
    data = detector.data_preprocessor(shapes_batch(), training=True)
    total, _ = detector.parse_losses(detector(**data, mode="loss"))
    total.backward()
    backbone = detector.backbone.model
    for name, param in backbone.named_parameters():
        assert (param.grad is not None) == backbone.is_trainable(name), name
