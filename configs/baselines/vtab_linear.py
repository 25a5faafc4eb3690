# Linear probe: only the head trains (76,900 parameters with 100 classes), on the frozen ViT's class token
# after its final norm: the feature the pretrained ViT's own classifier was trained on.
_base_ = ['./_vtab_base.py']

model = dict(method='linear')

# No weight decay: with a single linear layer on frozen features it only shrinks the logits.
optim_wrapper = dict(optimizer=dict(weight_decay=0.0))
