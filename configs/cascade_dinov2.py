# Cascade Mask R-CNN on COCO 2017 with HST on DINOv2 ViT-B/14 with 4 register tokens (timm
# `vit_base_patch14_reg4_dinov2`) instead of the ImageNet-21k ViT-B/16 of cascade.py; everything else (detection
# preset, FPN, 3x schedule, AdamW) is cascade.py's.
#
#   python -m hst_fast.train configs/cascade_dinov2.py
#
# What differs for this family (README "ViT families"):
# - patch 14: the images stay multiples of 32 (the base's data preprocessor pads them so, for the side network's
#   stride-32 stage); the ViT pads each image at the bottom and right to a multiple of 14 itself (timm
#   dynamic_img_pad), and FG injection resizes its ceil(H/14) x ceil(W/14) grid to each side stage;
# - meta tokens enter before the class and register tokens, [m_k, cls, reg_1..4, patches]; LN-tuning trains every
#   block's norm1/norm2 as for ViT-B/16 (the LayerScale gammas stay frozen).
_base_ = ['./cascade.py']

# timm's DINOv2 file (`vit_base_patch14_reg4_dinov2.lvd142m`, model.safetensors) or Meta's original
# `dinov2_vitb14_reg4_pretrain.pth`, converted on load by timm's checkpoint filter. Local files only.
pretrained = 'pretrained/dinov2_vitb14_reg4_pretrain.pth'

model = dict(
    backbone=dict(
        vit_name='vit_base_patch14_reg4_dinov2',
        # set again: the base's init_cfg holds the base's `pretrained` path
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
)
