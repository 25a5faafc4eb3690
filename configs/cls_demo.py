# The VTAB pipeline (configs/vtab/_base_.py) in about a minute on CPU, no download: HST classification on a
# generated VTAB-1k-format task (one coloured rectangle, ellipse or triangle per image, 3 classes).
#
#   python -m hst_fast.train configs/cls_demo.py
#
# Differences from the released recipe, all for size and speed: 64 px images, a 4-block ViT-Ti/16 frozen at its
# random initialization (no pretrained file), 10 epochs with 1 warm-up epoch.
_base_ = './vtab/_base_.py'

data_root = 'work_dirs/cache/shapes_vtab/'  # written on first use by ShapesVTABDataset, deterministic by seed
num_classes = 3
image_size = 64  # multiple of 32 (the side network's coarsest stride)

model = dict(vit_name='vit_tiny_patch16_224', depth=4, num_classes=num_classes, init_cfg=None)
train_dataloader = dict(
    num_workers=1,
    dataset=dict(type='ShapesVTABDataset', data_root=data_root, image_size=image_size, num_classes=num_classes,
                 generator=dict(num_train=200, num_test=100, image_size=image_size, seed=0)))
val_dataloader = dict(
    num_workers=1,
    dataset=dict(type='ShapesVTABDataset', data_root=data_root, image_size=image_size, num_classes=num_classes,
                 generator=train_dataloader['dataset']['generator']))
test_dataloader = val_dataloader

max_epochs = 10
train_cfg = dict(max_epochs=max_epochs, val_interval=max_epochs)
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=True, begin=0, end=1, convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', T_max=max_epochs - 1, eta_min=1e-8, by_epoch=True, begin=1, end=max_epochs,
         convert_to_iter_based=True),
]
default_hooks = dict(logger=dict(interval=5), checkpoint=dict(interval=5))
