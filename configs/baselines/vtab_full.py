# Full fine-tuning: every ViT weight and the head train (85,875,556 trainable parameters with 100 classes).
_base_ = ['./_vtab_base.py']

model = dict(method='full')

# lr 1e-4 instead of the PETL methods' 1e-3: AdamW at 1e-3 on all 86M weights with 1k examples wipes out the
# pretrained features; full fine-tuning is the one method whose lr must be searched lowest (VPT's grid).
optim_wrapper = dict(optimizer=dict(lr=1e-4))
