# Cascade Mask R-CNN (configs/cascade.py: data, schedule, heads, FPN) with the 'full' baseline on the same
# frozen-ViT setting instead of HST: a ViTDet-style simple feature pyramid from the last ViT block (strides
# 4/8/16/32, channels [64,128,256,384] = the FPN in_channels of configs/cascade.py) trains with the method.
_base_ = ['../cascade.py']

model = dict(backbone=dict(method='full'))
