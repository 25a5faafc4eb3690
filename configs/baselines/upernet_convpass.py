# UperNet on ADE20K (configs/upernet.py: data, schedule, heads) with the 'convpass' baseline on the same frozen-ViT
# setting instead of HST: a ViTDet-style simple feature pyramid from the last ViT block (strides 4/8/16/32, channels
# [64,128,256,384] = the UperNet in_channels of configs/upernet.py) trains with the method.
_base_ = ['../upernet.py']

model = dict(backbone=dict(method='convpass'))
