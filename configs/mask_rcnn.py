# Mask R-CNN 1x on COCO 2017 with the HST ViT-B/16 detection preset (HST.md §4): the frozen ViT-B/16 and its
# side network as the backbone, an FPN on the four side-stage maps, mmdet's Mask R-CNN heads; 12 epochs of
# mmdet's single-scale 1x schedule with AdamW (see configs/cascade.py for the 3x multi-scale recipe).
#
#   python -m hst_fast.train configs/mask_rcnn.py
_base_ = [
    'mmdet::_base_/models/mask-rcnn_r50_fpn.py',
    'mmdet::_base_/datasets/coco_instance.py',
    'mmdet::_base_/schedules/schedule_1x.py',
    'mmdet::_base_/default_runtime.py',
]
custom_imports = dict(imports=['hst_fast.openmmlab'], allow_failed_imports=False)

# Google's ImageNet-21k ViT-B/16, as the released HST code (see configs/cascade.py). Local files only.
pretrained = 'pretrained/ViT-B_16.npz'

model = dict(
    # ResNet-50 replaced by the HST backbone; the base preprocessor's pad_size_divisor=32 suits its stride 32.
    backbone=dict(
        _delete_=True,
        type='HSTViT',
        vit_name='vit_base_patch16_224',
        task='det',  # side_dims [64,128,256,384], side_heads [2,4,8,12], G=8
        kernel_backend='auto',
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[64, 128, 256, 384]),  # the side-stage widths
)

# 1x = 12 epochs, lr x0.1 at epochs 8 and 11, 500 warm-up iterations: the base schedule, unchanged.
# AdamW lr 1e-4, weight decay 0.05 at batch 16 replaces the base's SGD for ResNets (ViT-based detectors'
# optimizer); LayerNorms and meta tokens get no weight decay.
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(_delete_=True, type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(custom_keys={'norm': dict(decay_mult=0.0), 'meta_tokens': dict(decay_mult=0.0)}),
)

default_hooks = dict(checkpoint=dict(type='ResumableCheckpointHook', interval=1, max_keep_ckpts=3))
custom_hooks = [dict(type='AdapterCheckpointHook')]
