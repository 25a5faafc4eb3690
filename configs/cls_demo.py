# The VTAB pipeline (configs/vtab/_base_.py) in about a minute on CPU, no download: HST classification on a
# generated VTAB-1k-format task (one coloured rectangle, ellipse or triangle per image, 3 classes).
#
#   python -m hst_fast.train configs/cls_demo.py
#
# Differences from the released recipe, all for size and speed: 32 px images, a 4-block ViT-Ti/16 frozen at its
# random initialization (no pretrained file), so the side network learns the shapes from its conv stem; 4000
# generated training images seen 4 times (a few hundred images overfit: 200 images x 10 epochs reached 55%
# top-1), lr 3e-3 (the released 1e-2 is for ViT-B features), a 1-epoch warm-up.
_base_ = './vtab/_base_.py'

data_root = 'work_dirs/cache/shapes_vtab/'  # written on first use by ShapesVTABDataset, deterministic by seed
num_classes = 3
image_size = 32  # multiple of 32 (the side network's coarsest stride)

model = dict(vit_name='vit_tiny_patch16_224', depth=4, num_classes=num_classes, init_cfg=None)
train_dataloader = dict(
    num_workers=1,
    dataset=dict(type='ShapesVTABDataset', data_root=data_root, image_size=image_size, num_classes=num_classes,
                 generator=dict(num_train=4000, num_test=300, image_size=image_size, seed=0)))
val_dataloader = dict(
    num_workers=1,
    dataset=dict(type='ShapesVTABDataset', data_root=data_root, image_size=image_size, num_classes=num_classes,
                 generator=train_dataloader['dataset']['generator']))
test_dataloader = val_dataloader

max_epochs = 4
train_cfg = dict(max_epochs=max_epochs, val_interval=max_epochs)
optim_wrapper = dict(optimizer=dict(lr=3e-3))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=True, begin=0, end=1, convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', T_max=max_epochs - 1, eta_min=1e-8, by_epoch=True, begin=1, end=max_epochs,
         convert_to_iter_based=True),
]
default_hooks = dict(logger=dict(interval=25), checkpoint=dict(interval=max_epochs))
# Under torchrun, the side stem's BatchNorm2d and the head's BatchNorm1d normalize by the statistics of the whole
# distributed batch (hst_fast.openmmlab.dist: GlooSyncBatchNorm on CPU), so N processes with batch b train the
# model one process trains with batch N*b. Ignored by a one-process run.
sync_bn = 'torch'
