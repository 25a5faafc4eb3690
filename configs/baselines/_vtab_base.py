# VTAB-1k classification with a baseline adaptation method on ViT-B/16, through the same driver, data and
# evaluation as HST (configs/vtab/_base_.py): only the model's `method` and the optimization recipe differ.
# The recipe is the usual VTAB-1k PETL protocol (NOAH, Convpass): AdamW lr 1e-3, weight decay 1e-4, batch 64,
# 100 epochs, 10 warm-up epochs then cosine decay, 224x224 inputs, no augmentation.
#
#   python -m hst_fast.train configs/baselines/vtab_lora.py
_base_ = ['../vtab/_base_.py']

# HSTClassifier builds hst_fast.create_model(..., method=...): a BaselineViT whose head reads the class token
# after the ViT's final norm (timm's global_pool='token' for this ViT).
model = dict(kernel_backend='torch')  # the baselines have no HST side network to fuse

train_dataloader = dict(batch_size=64)
optim_wrapper = dict(optimizer=dict(lr=1e-3, weight_decay=1e-4))
