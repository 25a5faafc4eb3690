"""HSTViT inside mmseg's EncoderDecoder (UperNet + FCN heads of configs/upernet_demo.py): forward, losses,
backward, padding at test time, every baseline method, registries, checkpoint completeness, label checks."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("mmseg.models", reason="mmsegmentation is not installed; `make install` installs it")
pytest.importorskip("mmdet.models", reason="mmdet (with mmcv ops) is not installed; `make install` builds it")

from det_helpers import CONFIGS, assert_only_trainable_parameters_got_gradients, one_torch_thread  # noqa: E402,F401
from mmengine.config import Config  # noqa: E402
from mmengine.registry import init_default_scope  # noqa: E402
from mmengine.runner import load_checkpoint  # noqa: E402
from mmengine.structures import PixelData  # noqa: E402
from mmseg.registry import DATASETS  # noqa: E402
from mmseg.registry import MODELS as SEG_MODELS  # noqa: E402
from mmseg.structures import SegDataSample  # noqa: E402

import hst_fast.openmmlab  # noqa: E402,F401  (registers HSTViT and the segmentation data)
from hst_fast.baselines import METHODS, BaselineViT  # noqa: E402
from hst_fast.data import SEG_CLASSES, majority_class_miou, make_shapes_ade  # noqa: E402

# Smaller than the demo's ViT-Ti, torch kernels (CPU).
TINY_VIT = dict(vit_name="vit_tiny_patch16_224", depth=4, embed_dim=96, num_heads=3, kernel_backend="torch")


def demo_segmentor(**backbone):
    """The upernet_demo.py segmentor (UperNet + FCN, 4 classes) with a smaller ViT, optionally another backbone."""
    init_default_scope("mmseg")
    cfg = Config.fromfile(str(CONFIGS / "upernet_demo.py"))
    cfg.model.backbone.update(TINY_VIT, **backbone)
    return SEG_MODELS.build(cfg.model)


def seg_batch(sizes=((96, 96), (96, 96)), num_classes: int = 4):
    """Images with per-pixel labels, as the dataloader hands them to the data preprocessor."""
    samples = []
    for index, (h, w) in enumerate(sizes):
        sample = SegDataSample(metainfo=dict(img_shape=(h, w), ori_shape=(h, w)))
        labels = torch.zeros(1, h, w, dtype=torch.int64)
        labels[:, 10:50, 20 + index:70] = 1 + index % (num_classes - 1)
        sample.gt_sem_seg = PixelData(data=labels)
        samples.append(sample)
    return dict(inputs=[torch.randint(0, 256, (3, h, w), dtype=torch.uint8) for h, w in sizes], data_samples=samples)


def test_hstvit_is_found_from_mmdet_and_mmseg_scopes():
    from mmdet.registry import MODELS as DET_MODELS

    for scope, registry in (("mmdet", DET_MODELS), ("mmseg", SEG_MODELS)):
        init_default_scope(scope)
        backbone = registry.build(dict(type="HSTViT", **TINY_VIT))
        assert type(backbone) is hst_fast.openmmlab.HSTViT and backbone.out_channels == [64, 128, 256, 384], scope


def test_segmentor_forward_loss_backward_keeps_frozen_weights_frozen():
    segmentor = demo_segmentor()
    segmentor.train()
    hst = segmentor.backbone.model
    losses = segmentor(**segmentor.data_preprocessor(seg_batch(), training=True), mode="loss")
    assert {"decode.loss_ce", "aux.loss_ce"} <= set(losses), sorted(losses)
    total, _ = segmentor.parse_losses(losses)
    assert torch.isfinite(total)
    total.backward()
    assert_only_trainable_parameters_got_gradients(hst)
    assert segmentor.decode_head.conv_seg.weight.grad is not None
    assert segmentor.auxiliary_head.conv_seg.weight.grad is not None


def test_test_images_of_any_size_are_padded_and_predictions_cropped_back():
    """70x90 is not a multiple of 32: the data preprocessor pads it (test_cfg.size_divisor=32); the slide
    windows (96x96, stride 64) then see multiples of 32, and predictions come back at 70x90."""
    segmentor = demo_segmentor().eval()
    data = segmentor.data_preprocessor(seg_batch(sizes=((70, 90),)), training=False)
    assert tuple(data["inputs"].shape[-2:]) == (96, 96)
    with torch.no_grad():
        (result,) = segmentor(**data, mode="predict")
    assert tuple(result.pred_sem_seg.shape) == (70, 90)
    assert int(result.pred_sem_seg.data.max()) < len(SEG_CLASSES)


@pytest.mark.parametrize("method", METHODS)
def test_one_iteration_per_baseline_method(method):
    """configs/baselines/upernet_<method>.py sets the method; on the demo heads, a step trains only it."""
    assert Config.fromfile(str(CONFIGS / "baselines" / f"upernet_{method}.py")).model.backbone.method == method
    segmentor = demo_segmentor(method=method)
    segmentor.train()
    total, _ = segmentor.parse_losses(segmentor(**segmentor.data_preprocessor(seg_batch(), training=True),
                                                mode="loss"))
    total.backward()
    backbone = segmentor.backbone.model
    assert isinstance(backbone, BaselineViT)
    for name, param in backbone.named_parameters():
        assert (param.grad is not None) == backbone.is_trainable(name), name


def test_building_does_not_read_the_pretrained_file(tmp_path):
    """mmseg's MMSegInferencer builds the config's model as it is (init_cfg included) before loading the
    checkpoint: building must not need the pretrained ViT file, which only init_weights (training) reads."""
    path = tmp_path / "ViT-Ti.pth"
    backbone = demo_segmentor(init_cfg=dict(type="Pretrained", checkpoint=str(path))).backbone
    with pytest.raises(FileNotFoundError, match=r"pretrained ViT checkpoint not found: .*ViT-Ti.pth"):
        backbone.init_weights()
    reference = demo_segmentor().backbone
    torch.save(reference.model.vit.state_dict(), path)
    backbone.init_weights()
    for name, value in reference.model.vit.state_dict().items():
        torch.testing.assert_close(backbone.model.vit.state_dict()[name], value, rtol=0, atol=0, msg=name)


def test_checkpoint_without_the_vit_is_refused(tmp_path):
    trained = demo_segmentor()
    state = trained.state_dict()
    path = tmp_path / "no_vit.pth"
    torch.save({"state_dict": {k: v for k, v in state.items() if not k.startswith("backbone.model.vit.")},
                "meta": {}}, path)
    with pytest.raises(ValueError, match=r"holds HSTViT's trained weights \(backbone\.\*\) but not \d+ of its ViT "
                                         r"tensors \(e\.g\. backbone\.model\.vit\..*randomly initialized ViT"):
        load_checkpoint(demo_segmentor(), str(path), map_location="cpu")  # mmengine's non-strict loading
    # the pretrained ViT alone (no trained weights) is a partial load by intent: accepted
    fresh = demo_segmentor()
    fresh.load_state_dict({k: v for k, v in state.items() if k.startswith("backbone.model.vit.")}, strict=False)
    torch.testing.assert_close(fresh.backbone.model.vit.pos_embed, trained.backbone.model.vit.pos_embed)


def shapes_dataset(root: Path, pipeline, split: str = "training"):
    init_default_scope("mmseg")
    return DATASETS.build(dict(
        type="ShapesADE20KDataset", data_root=str(root),
        generator=dict(num_train=4, num_val=2, image_size=64, max_shapes=2, seed=1),
        data_prefix=dict(img_path=f"images/{split}", seg_map_path=f"annotations/{split}"), pipeline=pipeline))


def test_generated_set_is_ade20k_format_and_deterministic(tmp_path):
    pipeline = [dict(type="LoadImageFromFile"), dict(type="LoadAnnotations"),
                dict(type="CheckSegLabels", num_classes=4), dict(type="PackSegInputs")]
    dataset = shapes_dataset(tmp_path / "a", pipeline)
    assert len(dataset) == 4 and dataset.metainfo["classes"] == SEG_CLASSES and dataset.reduce_zero_label
    labels = dataset[0]["data_samples"].gt_sem_seg.data
    raw = np.asarray(Image.open(tmp_path / "a" / "annotations" / "training" / "training_00000.png"))
    torch.testing.assert_close(labels[0].numpy(), raw.astype(np.int64) - 1)  # value v is class v - 1
    assert set(np.unique(raw)) <= {1, 2, 3, 4} and 1 in raw and len(np.unique(raw)) > 1
    make_shapes_ade(str(tmp_path / "b"), num_train=4, num_val=2, image_size=64, max_shapes=2, seed=1)
    for path in (tmp_path / "a").rglob("*.png"):
        assert path.read_bytes() == (tmp_path / "b" / path.relative_to(tmp_path / "a")).read_bytes(), path
    share = np.bincount(raw.ravel(), minlength=5)[1:]
    assert 0 < majority_class_miou(str(tmp_path / "a"), "training") < 1 and share.max() / share.sum() > 0.5


def test_label_values_outside_the_classes_name_the_file(tmp_path):
    pipeline = [dict(type="LoadImageFromFile"), dict(type="LoadAnnotations"),
                dict(type="CheckSegLabels", num_classes=4), dict(type="PackSegInputs")]
    dataset = shapes_dataset(tmp_path, pipeline, split="validation")
    bad = tmp_path / "annotations" / "validation" / "validation_00001.png"
    labels = np.asarray(Image.open(bad)).copy()
    labels[0, :3] = [7, 255, 0]  # class 6 (outside 4 classes), then two ignored pixels (255 and "unlabeled")
    Image.fromarray(labels).save(bad)
    dataset[0]  # an untouched file passes
    with pytest.raises(ValueError, match=r"label map .*validation_00001.png: values \[6\] are outside the 4 classes "
                                         r"\[0, 3\].*file holds values \[7\]"):
        dataset[1]
