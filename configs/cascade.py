# Cascade Mask R-CNN on COCO 2017 with the HST ViT-B/16 detection preset (HST.md §4): a frozen ViT-B/16,
# its side network (side_dims [64,128,256,384], heads [2,4,8,12], G=8 meta tokens) as the backbone, an FPN
# on the four side-stage maps, and mmdet's Cascade Mask R-CNN heads. 3x schedule with multi-scale
# training, AdamW, as mmdet's ViT-style baselines (Swin, ViT-Adapter) train Cascade Mask R-CNN.
#
#   python -m hst_fast.train configs/cascade.py                        # COCO at data/coco/
#   torchrun --nproc_per_node 8 -m hst_fast.train configs/cascade.py --launcher pytorch
#   python -m hst_fast.train configs/cascade_demo.py                   # no download: generated shapes, CPU
_base_ = [
    'mmdet::_base_/models/cascade-mask-rcnn_r50_fpn.py',
    'mmdet::_base_/datasets/coco_instance.py',
    'mmdet::_base_/schedules/schedule_1x.py',
    'mmdet::_base_/default_runtime.py',
]
custom_imports = dict(imports=['hst_fast.openmmlab'], allow_failed_imports=False)

# The released HST code starts from Google's ImageNet-21k ViT-B/16 (`imagenet21k/ViT-B_16.npz`, timm
# `vit_base_patch16_224.orig_in21k`); any timm ViT-B/16 file (.npz/.pth/.safetensors) loads. Local files only.
pretrained = 'pretrained/ViT-B_16.npz'

model = dict(
    # The ResNet-50 of the base is replaced by the HST backbone; the base's data preprocessor already pads
    # to multiples of 32, which the side network's coarsest stage (stride 32) needs.
    backbone=dict(
        _delete_=True,
        type='HSTViT',
        vit_name='vit_base_patch16_224',
        task='det',  # HST.md §4 detection preset: side_dims [64,128,256,384], side_heads [2,4,8,12], G=8
        kernel_backend='auto',  # fused Triton kernels on CUDA, PyTorch references elsewhere
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    # FPN on the four side-stage maps (strides 4/8/16/32): their widths are the side dims, not ResNet's.
    neck=dict(in_channels=[64, 128, 256, 384]),
)

# Multi-scale training of the 3x schedule (mmdet's Swin / ViT-Adapter Cascade Mask R-CNN 3x, from DETR):
# shorter side 480-800, or a random crop of a 400-600 resize; test at 1333x800 (the base).
train_pipeline = [
    dict(type='LoadImageFromFile', backend_args={{_base_.backend_args}}),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='RandomFlip', prob=0.5),
    dict(
        type='RandomChoice',
        transforms=[
            [
                dict(type='RandomChoiceResize',
                     scales=[(480, 1333), (512, 1333), (544, 1333), (576, 1333), (608, 1333), (640, 1333),
                             (672, 1333), (704, 1333), (736, 1333), (768, 1333), (800, 1333)],
                     keep_ratio=True),
            ],
            [
                dict(type='RandomChoiceResize', scales=[(400, 1333), (500, 1333), (600, 1333)], keep_ratio=True),
                dict(type='RandomCrop', crop_type='absolute_range', crop_size=(384, 600), allow_negative_crop=True),
                dict(type='RandomChoiceResize',
                     scales=[(480, 1333), (512, 1333), (544, 1333), (576, 1333), (608, 1333), (640, 1333),
                             (672, 1333), (704, 1333), (736, 1333), (768, 1333), (800, 1333)],
                     keep_ratio=True),
            ],
        ]),
    dict(type='PackDetInputs'),
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))

# 3x = 36 epochs, lr x0.1 at epochs 27 and 33, 1000 linear warm-up iterations (mmdet's 3x ViT/Swin recipe).
max_epochs = 36
train_cfg = dict(max_epochs=max_epochs)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=1000),
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[27, 33], gamma=0.1),
]

# AdamW, lr 1e-4, weight decay 0.05 at batch 16 (8 GPUs x 2 images), as the ViT-based detectors HST compares
# with, instead of the base's SGD 0.02 for ResNets. No decay on LayerNorms (the tuned ViT LN1/LN2 and the
# side network's) nor on the meta tokens, as Swin exempts its norms and position tables.
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(_delete_=True, type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(custom_keys={'norm': dict(decay_mult=0.0), 'meta_tokens': dict(decay_mult=0.0)}),
)
auto_scale_lr = dict(enable=False, base_batch_size=16)

# Full checkpoints (for --resume), the last 3 kept; adapter/ beside them holds only what HST trains
# (plus the neck and heads), the deployable part.
default_hooks = dict(checkpoint=dict(type='ResumableCheckpointHook', interval=1, max_keep_ckpts=3))
custom_hooks = [dict(type='AdapterCheckpointHook')]
