# VTAB-1k classification with HST (classification preset, HST.md §4: side_dims [32,48,64,72], heads [2,4,8,12],
# G=1) on a frozen ViT-B/16: the released recipe. A task config sets data_root and num_classes; data is a
# VTAB-1k task folder (train800val200.txt, test.txt, lines `relative/path label`), as the released code reads it.
#
#   python -m hst_fast.train configs/vtab/cifar100.py
default_scope = 'mmengine'  # classification needs no mmdet component
custom_imports = dict(imports=['hst_fast.openmmlab'], allow_failed_imports=False)

# Google's ImageNet-21k ViT-B/16 (`imagenet21k/ViT-B_16.npz`, timm `vit_base_patch16_224.orig_in21k`), as the
# released code. Local files only.
pretrained = 'pretrained/ViT-B_16.npz'
data_root = 'data/vtab-1k/cifar/'
num_classes = 100
image_size = 224

model = dict(
    type='HSTClassifier',
    vit_name='vit_base_patch16_224',
    num_classes=num_classes,
    kernel_backend='auto',
    init_cfg=dict(type='Pretrained', checkpoint=pretrained),
    # The released code normalizes with ImageNet's mean/std (timm's IMAGENET_DEFAULT_*), on uint8 batches here.
    data_preprocessor=dict(type='ImgDataPreprocessor', mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375]))

# Resize-only 224 px (bicubic), no augmentation; train on all 1000 images (train800val200), report on test.
train_dataloader = dict(
    batch_size=32,
    num_workers=4,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=True),
    dataset=dict(type='VTABDataset', data_root=data_root, ann_file='train800val200.txt', image_size=image_size,
                 num_classes=num_classes))
val_dataloader = dict(
    batch_size=64,
    num_workers=4,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(type='VTABDataset', data_root=data_root, ann_file='test.txt', image_size=image_size,
                 num_classes=num_classes))
test_dataloader = val_dataloader
val_evaluator = dict(type='ClsAccuracy')  # top-1 %, the number VTAB-1k tables report
test_evaluator = val_evaluator

# 100 epochs, AdamW lr 1e-2, weight decay 5e-4, batch 32; 10 linear warm-up epochs, then cosine decay.
max_epochs = 100
train_cfg = dict(by_epoch=True, max_epochs=max_epochs, val_interval=10)
val_cfg = dict()
test_cfg = dict()
optim_wrapper = dict(optimizer=dict(type='AdamW', lr=1e-2, weight_decay=5e-4))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=True, begin=0, end=10, convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', T_max=max_epochs - 10, eta_min=1e-8, by_epoch=True, begin=10, end=max_epochs,
         convert_to_iter_based=True),
]

default_hooks = dict(
    logger=dict(type='LoggerHook', interval=10),
    checkpoint=dict(type='ResumableCheckpointHook', interval=10, max_keep_ckpts=2),
)
custom_hooks = [dict(type='AdapterCheckpointHook')]  # adapter/ beside the checkpoints: what HST trains
log_processor = dict(by_epoch=True)
randomness = dict(seed=42)
