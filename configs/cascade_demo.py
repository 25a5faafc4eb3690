# The configs/cascade.py pipeline end to end on 2 CPU cores in minutes, no download: Cascade Mask R-CNN on an
# HST backbone (the same side network preset) over a small, randomly initialized ViT, trained and evaluated
# (bbox and segm mAP, mmdet's CocoMetric) on a generated COCO-format set of coloured rectangles, ellipses and
# triangles with polygon masks. What it shows: data -> HSTViT -> FPN -> cascade heads -> losses, learning
# (mAP), checkpoints + adapter/, resume, evaluation. Measured (`make demo`, shared 2-core machine):
# 6.9 min wall (+ 11 s to generate the data on first use), bbox mAP 0.815, segm mAP 0.810 (mAP@50 0.967 / 0.970)
# on the 50 held-out images; 5 epochs gave 0.894 / 0.874 in 10.3 min (over the budget).
#
#   python -m hst_fast.train configs/cascade_demo.py            (make demo)
#   python -m hst_fast.test configs/cascade_demo.py work_dirs/cascade_demo/epoch_3.pth --show-dir vis
#
# Everything that differs from configs/cascade.py is there to make it small and fast: 160 px images, a
# 4-block ViT (no pretrained file), narrow neck/heads and few RoIs.
_base_ = './cascade.py'

# Written on first use by ShapesCocoDataset (hst_fast.data.make_shapes_coco), deterministic by seed;
# rewritten when the generator parameters change. Both splits come from one generator call.
data_root = 'work_dirs/cache/shapes_coco/'
image_size = 160  # multiple of 32, so no padding is needed
num_classes = 3  # rectangle, ellipse, triangle

model = dict(
    backbone=dict(
        # ViT-Ti/16 widths, 4 blocks (one per side stage) instead of ViT-B's 12; frozen at its random
        # initialization (no pretrained file), so the side network does the learning, from its conv stem.
        vit_name='vit_tiny_patch16_224',
        depth=4,
        init_cfg=None),
    # Narrower neck and heads (64 channels instead of 256, fc 128 instead of 1024, a 2-conv 32-channel mask
    # head instead of 4 convs of 256): 3 classes on 160 px. The mask heads dominate the cost otherwise.
    neck=dict(out_channels=64),
    rpn_head=dict(in_channels=64, feat_channels=64),
    roi_head=dict(
        # RoIAlign with 2x2 samples per bin instead of adaptive (up to 3x3 here): its CPU backward is the top cost.
        bbox_roi_extractor=dict(out_channels=64, roi_layer=dict(sampling_ratio=2)),
        bbox_head=[dict(head, in_channels=64, fc_out_channels=128, num_classes=num_classes)
                   for head in _base_.model.roi_head.bbox_head],
        mask_roi_extractor=dict(out_channels=64, roi_layer=dict(sampling_ratio=2)),
        mask_head=dict(num_convs=2, in_channels=64, conv_out_channels=32, num_classes=num_classes)),
    # Fewer proposals kept and RoIs sampled (64 instead of 512 per image): at most 4 objects per image here.
    train_cfg=dict(
        rpn_proposal=dict(nms_pre=300, max_per_img=100),
        rcnn=[dict(stage, sampler=dict(stage.sampler, num=64)) for stage in _base_.model.train_cfg.rcnn]),
    test_cfg=dict(rpn=dict(nms_pre=300, max_per_img=100)),
)

# Images are generated at their final size: flip only (no multi-scale resize or crop); the resize to that
# same size only records the scale factor that mmdet's heads read.
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='Resize', scale=(image_size, image_size), keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(image_size, image_size), keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
train_dataloader = dict(
    batch_size=4,
    num_workers=1,  # 2 cores: one for the model, PNG decoding is light
    dataset=dict(
        _delete_=True,
        type='ShapesCocoDataset',
        data_root=data_root,
        generator=dict(num_train=400, num_val=50, image_size=image_size, max_shapes=4, seed=0),
        ann_file='annotations/train.json',
        data_prefix=dict(img='train/'),
        filter_cfg=dict(filter_empty_gt=True, min_size=32),
        pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=2,
    num_workers=1,
    dataset=dict(
        _delete_=True,
        type='ShapesCocoDataset',
        data_root=data_root,
        generator=train_dataloader['dataset']['generator'],
        ann_file='annotations/val.json',
        data_prefix=dict(img='val/'),
        test_mode=True,
        pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/val.json')
test_evaluator = val_evaluator

# 3 epochs of 100 iterations (batch 4), evaluated at the end; a short warm-up and a higher lr than cascade.py's
# 1e-4, since the side network and heads train from scratch here, with a step decay for the last epoch.
max_epochs = 3
train_cfg = dict(max_epochs=max_epochs, val_interval=max_epochs)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=100),
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[max_epochs - 1], gamma=0.1),
]
optim_wrapper = dict(optimizer=dict(lr=2e-4))

default_hooks = dict(logger=dict(interval=20), checkpoint=dict(interval=max_epochs))
env_cfg = dict(mp_cfg=dict(mp_start_method='fork'))
randomness = dict(seed=0)
# Under torchrun, the side stem's BatchNorm2d normalizes by the statistics of the whole distributed batch
# (hst_fast.openmmlab.dist: GlooSyncBatchNorm on CPU), as one process with the total batch would. Ignored by a
# one-process run.
sync_bn = 'torch'
