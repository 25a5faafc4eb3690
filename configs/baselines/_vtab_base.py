# VTAB-1k classification with a baseline adaptation method on ViT-B/16: what the four method configs share.
# The model is ``hst_fast.baselines.create_baseline(**baseline)`` (the same arguments as hst_fast.create_model
# plus ``method``); the recipe is the usual VTAB-1k PETL protocol (NOAH, Convpass): AdamW, batch 64,
# 100 epochs, 10 warm-up epochs then cosine decay, 224x224 inputs, no augmentation.
#
#   python -c "from mmengine import Config; from hst_fast.baselines import create_baseline; \
#              m = create_baseline(**Config.fromfile('configs/baselines/vtab_lora.py').baseline); \
#              m.print_trainable_parameters()"

# Google's ImageNet-21k ViT-B/16 (the checkpoint HST's configs use). Local files only, never downloaded.
pretrained = 'pretrained/ViT-B_16.npz'

baseline = dict(
    vit_name='vit_base_patch16_224',
    task='cls',
    num_classes=100,  # CIFAR-100; set per VTAB task
    pretrained=pretrained,
    # global_pool='token' (timm's default for this ViT): the head reads the class token after the final norm
)

train_dataloader = dict(batch_size=64)
optim_wrapper = dict(type='OptimWrapper', optimizer=dict(type='AdamW', lr=1e-3, weight_decay=1e-4))
train_cfg = dict(by_epoch=True, max_epochs=100, val_interval=10)
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=True, begin=0, end=10, convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', T_max=90, eta_min=1e-8, by_epoch=True, begin=10, end=100,
         convert_to_iter_based=True),
]
