# UperNet on ADE20K (150 classes, 512x512 crops) with the HST ViT-B/16 dense-prediction preset (HST.md §4), the
# paper's semantic segmentation setting: a frozen ViT-B/16, its side network (side_dims [64,128,256,384], heads
# [2,4,8,12], G=8 meta tokens) as the backbone, mmseg's UperNet decode head on the four side-stage maps and an FCN
# auxiliary head; 160k iterations at batch 16, AdamW with linear warm-up then poly decay, slide inference, mIoU.
#
#   python -m hst_fast.train configs/upernet.py                       # ADE20K at data/ade/ADEChallengeData2016/
#   torchrun --nproc_per_node 8 -m hst_fast.train configs/upernet.py --launcher pytorch
#   python -m hst_fast.test configs/upernet.py work_dirs/upernet/iter_160000.pth --show-dir vis
#   python -m hst_fast.train configs/upernet_demo.py                  # no download: generated shapes, CPU
#
# mmseg's schedules/schedule_160k.py is not inherited: it defines a top-level `optimizer` (SGD) that nothing reads
# once optim_wrapper is replaced, which hst_fast's config check refuses as an unread mmdet 2.x-style key. Its
# settings are restated below (160k iterations, evaluation and checkpoints every 16k, logs every 50).
_base_ = [
    'mmseg::_base_/models/upernet_r50.py',
    'mmseg::_base_/datasets/ade20k.py',
    'mmseg::_base_/default_runtime.py',
]
custom_imports = dict(imports=['hst_fast.openmmlab'], allow_failed_imports=False)

# Google's ImageNet-21k ViT-B/16, as the released HST code (see configs/cascade.py). Local files only; read when
# training starts (HSTViT.init_weights), not when a checkpoint is loaded for testing or inference.
pretrained = 'pretrained/ViT-B_16.npz'
crop_size = (512, 512)
num_classes = 150

# Training crops are padded to 512x512 (mmseg's ViT configs: size=crop_size); test images, resized to a 512 short
# side, are padded to multiples of 32, the side network's coarsest stride (the base pads nothing at test time).
data_preprocessor = dict(size=crop_size, test_cfg=dict(size_divisor=32))
model = dict(
    data_preprocessor=data_preprocessor,
    pretrained=None,  # the base's ImageNet ResNet-50 (downloaded): the HST backbone names its ViT file itself
    # The ResNet-50 of the base is replaced by the HST backbone.
    backbone=dict(
        _delete_=True,
        type='HSTViT',
        vit_name='vit_base_patch16_224',
        task='det',  # HST.md §4 dense-prediction preset: side_dims [64,128,256,384], side_heads [2,4,8,12], G=8
        kernel_backend='auto',  # fused Triton kernels on CUDA, PyTorch references elsewhere
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    # UperNet on the four side-stage maps (strides 4/8/16/32): their widths are the side dims, not ResNet's; the FCN
    # auxiliary head reads the stride-16 map, as in the base (ResNet's stage 3).
    decode_head=dict(in_channels=[64, 128, 256, 384], num_classes=num_classes),
    auxiliary_head=dict(in_channels=256, num_classes=num_classes),
    # Slide inference over 512x512 windows with stride 341 (mmseg's ViT/Swin ADE20K recipe) instead of the base's
    # whole-image inference.
    test_cfg=dict(mode='slide', crop_size=crop_size, stride=(341, 341)),
)

# The base pipelines, each with CheckSegLabels after LoadAnnotations: a label outside the 150 classes (other than the
# ignore index 255) stops the run naming its file instead of failing in the loss or vanishing from the mIoU.
# LoadAnnotations takes reduce_zero_label (file value 0 = "other", ignored; v = class v - 1) from ADE20KDataset, which
# sets it: mmseg 1.x deprecates the transform's own argument, which the base still passes (and warns about).
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='CheckSegLabels', num_classes=num_classes),
    dict(type='RandomResize', scale=(2048, 512), ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(2048, 512), keep_ratio=True),
    dict(type='LoadAnnotations'),
    dict(type='CheckSegLabels', num_classes=num_classes),
    dict(type='PackSegInputs'),
]
# Batch 16 in total: 8 GPUs x 2 images (the base: 4 per GPU).
train_dataloader = dict(batch_size=2, dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(batch_size=1, dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
# mIoU through mmseg's IoUMetric: the base's val_evaluator / test_evaluator, unchanged.

# AdamW with 1500 linear warm-up iterations, then poly decay (power 1) to 0 at 160k: mmseg's ViT / Swin / ViT-Adapter
# UperNet recipe on ADE20K, instead of the base schedule's SGD for ResNets.
# Learning rate 1e-4 and weight decay 0.05 (those recipes: 6e-5, 0.01 for updating every pretrained ViT weight): here
# the pretrained ViT is frozen except its LayerNorm affine parameters, and what trains, the 10.5M-parameter side
# network and the UperNet / FCN heads, starts from scratch, so it takes the rate and decay of our detection configs
# (configs/cascade.py), where the same side network trains. No decay on LayerNorms (the tuned ViT LN1/LN2 and the
# side network's) nor on the meta tokens, as mmseg's ViT config exempts norms, the position embedding and class token.
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(custom_keys={'norm': dict(decay_mult=0.0), 'meta_tokens': dict(decay_mult=0.0)}),
)
max_iters = 160000
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type='PolyLR', eta_min=0.0, power=1.0, begin=1500, end=max_iters, by_epoch=False),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=16000)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
auto_scale_lr = dict(enable=False, base_batch_size=16)

# Full checkpoints (for --resume) every 16k iterations, the last 3 kept; adapter/ beside them holds only what HST
# trains plus the decode heads, the deployable part. SegVisualizationHook draws predictions for --show-dir.
default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=50, log_metric_by_epoch=False),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='ResumableCheckpointHook', by_epoch=False, interval=16000, max_keep_ckpts=3),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    visualization=dict(type='SegVisualizationHook'))
custom_hooks = [dict(type='AdapterCheckpointHook')]
# Under torchrun every BatchNorm normalizes by the whole distributed batch: the side stem's BatchNorm2d as well as the
# heads' (SyncBN in the base), so N processes of batch 2 train what one process of batch 2N would. Ignored by a
# one-process run.
sync_bn = 'torch'
