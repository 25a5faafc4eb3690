"""HSTViT inside an mmdet detector: forward, losses, backward, freezing, pretrained loading, bad arguments."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("mmdet.models", reason="mmdet (with mmcv ops) is not installed; `make install` builds it")
pytest.importorskip("mmcv.ops", reason="mmcv was built without its compiled ops")

from det_helpers import CONFIGS, assert_only_trainable_parameters_got_gradients, one_torch_thread  # noqa: E402,F401
from mmdet.registry import MODELS  # noqa: E402
from mmdet.structures import DetDataSample  # noqa: E402
from mmengine.config import Config  # noqa: E402
from mmengine.registry import init_default_scope  # noqa: E402
from mmengine.structures import InstanceData  # noqa: E402

import hst_fast.openmmlab  # noqa: E402,F401  (registers HSTViT)

TINY_VIT = dict(vit_name="vit_tiny_patch16_224", depth=4, embed_dim=96, num_heads=3, kernel_backend="torch")


def tiny_backbone(**kwargs):
    init_default_scope("mmdet")  # an earlier test may have left another default scope (e.g. 'mmengine')
    return MODELS.build(dict(type="HSTViT", **{**TINY_VIT, **kwargs}))


def demo_detector():
    """The cascade_demo.py detector with a smaller ViT (torch kernels: CPU)."""
    init_default_scope("mmdet")
    cfg = Config.fromfile(str(CONFIGS / "cascade_demo.py"))
    cfg.model.backbone.update(TINY_VIT)
    return MODELS.build(cfg.model)


def shapes_batch(size: int = 64):
    """Two images with one box + mask each, as the data preprocessor would hand them over."""
    images = torch.rand(2, 3, size, size) * 255
    samples = []
    for index in range(2):
        sample = DetDataSample(metainfo=dict(img_shape=(size, size), ori_shape=(size, size), pad_shape=(size, size),
                                             batch_input_shape=(size, size), scale_factor=(1.0, 1.0)))
        instances = InstanceData()
        instances.bboxes = torch.tensor([[8.0 + index, 10.0, 40.0, 44.0]])
        instances.labels = torch.tensor([index])
        from mmdet.structures.mask import BitmapMasks

        mask = torch.zeros(1, size, size, dtype=torch.uint8)
        mask[:, 10:44, 8 + index:40] = 1
        instances.masks = BitmapMasks(mask.numpy(), size, size)
        sample.gt_instances = instances
        samples.append(sample)
    return dict(inputs=list(images), data_samples=samples)


def test_stage_maps_shapes_and_channels():
    backbone = tiny_backbone(side_dims=[32, 48, 64, 72], side_heads=[2, 4, 8, 12], num_meta_tokens=2)
    outs = backbone(torch.randn(2, 3, 96, 64))
    assert [tuple(o.shape) for o in outs] == [(2, 32, 24, 16), (2, 48, 12, 8), (2, 64, 6, 4), (2, 72, 3, 2)]
    assert backbone.out_channels == [32, 48, 64, 72]


def test_detector_forward_loss_backward_keeps_frozen_weights_frozen():
    detector = demo_detector()
    detector.train()  # mmengine's runner.train() does this: HST.train re-freezes
    hst = detector.backbone.model
    trainable = {n for n, p in hst.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in hst.trainable_named_parameters()}
    assert not any(p.requires_grad for n, p in hst.named_parameters() if n.startswith("vit.patch_embed"))

    data = detector.data_preprocessor(shapes_batch(), training=True)
    losses = detector(**data, mode="loss")
    for key in ("loss_rpn_cls", "s0.loss_cls", "s2.loss_bbox", "s0.loss_mask"):
        assert key in losses, sorted(losses)
    total, _ = detector.parse_losses(losses)
    assert torch.isfinite(total)
    total.backward()
    assert_only_trainable_parameters_got_gradients(hst)
    assert detector.neck.lateral_convs[0].conv.weight.grad is not None

    detector.eval()
    with torch.no_grad():
        results = detector(**detector.data_preprocessor(shapes_batch(), training=False), mode="predict")
    assert len(results) == 2 and "masks" in results[0].pred_instances


def test_roi_features_are_read_from_the_right_memory():
    """The RoI heads see what the neck computed: mmcv's RoIAlign on the FPN maps equals it on NCHW copies.

    It did not while the backbone returned channels-last views: FPN convs keep that layout and mmcv's CPU
    RoIAlign indexes memory as NCHW, so the RoI heads trained on scrambled features and never learned.
    """
    detector = demo_detector().eval()
    extractor = detector.roi_head.bbox_roi_extractor[0]
    rois = torch.tensor([[0.0, 4.0, 6.0, 40.0, 50.0], [1.0, 10.0, 2.0, 60.0, 30.0]])
    with torch.no_grad():
        levels = detector.neck(detector.backbone(torch.randn(2, 3, 64, 64)))[:extractor.num_inputs]
        read = extractor(levels, rois)
        expected = extractor(tuple(level.contiguous() for level in levels), rois)
    assert read.abs().sum() > 0
    torch.testing.assert_close(read, expected, rtol=0, atol=0)


def test_pretrained_from_init_cfg(tmp_path):
    reference = tiny_backbone()
    path = tmp_path / "vit.pth"
    torch.save(reference.model.vit.state_dict(), path)
    loaded = tiny_backbone(init_cfg=dict(type="Pretrained", checkpoint=str(path)))
    loaded.init_weights()  # must not re-initialize anything
    expected, actual = reference.model.vit.state_dict(), loaded.model.vit.state_dict()
    assert list(expected) == list(actual)
    for name, value in expected.items():
        torch.testing.assert_close(actual[name], value, rtol=0, atol=0, msg=name)


def test_missing_pretrained_file_is_a_clear_error(tmp_path):
    missing = tmp_path / "nope" / "ViT-B_16.npz"
    backbone = tiny_backbone(init_cfg=dict(type="Pretrained", checkpoint=str(missing)))  # read by init_weights only
    with pytest.raises(FileNotFoundError, match=r"pretrained ViT checkpoint not found.*init_cfg.checkpoint=PATH"):
        backbone.init_weights()


@pytest.mark.parametrize("kwargs, message", [
    (dict(side_dim=[64, 128, 256, 384]), r"unknown argument 'side_dim'; did you mean 'side_dims'"),
    (dict(num_meta_token=8), r"did you mean 'num_meta_tokens'"),
    (dict(dynamic_img_size=False), r"set by hst_fast.create_model"),
    (dict(init_cfg=dict(type="Kaiming")), r"init_cfg must be None or dict\(type='Pretrained'"),
], ids=["typo-side_dim", "typo-num_meta_token", "reserved-dynamic_img_size", "init_cfg-Kaiming"])
def test_bad_backbone_arguments(kwargs, message):
    with pytest.raises((TypeError, ValueError), match=message):
        tiny_backbone(**kwargs)


def test_input_size_the_backbone_cannot_take():
    backbone = tiny_backbone()
    with pytest.raises(ValueError, match=r"image size 72x64 is not supported.*pad_size_divisor=32"):
        backbone(torch.randn(1, 3, 72, 64))
