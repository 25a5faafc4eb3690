# Convpass (Jie & Deng, 2022): a convolutional bypass (1x1 down to 8 channels, QuickGELU, 3x3 conv on the patch
# grid, QuickGELU, 1x1 up) in parallel with the attention and with the MLP of every block. ViT-B/16:
# 24 x 13,648 = 327,552 parameters (the paper's 0.33M, head excluded), plus the head (76,900 with 100 classes).
_base_ = ['./_vtab_base.py']

model = dict(
    method='convpass',
    convpass_dim=8,
    convpass_scale=1.0,  # s; the paper tunes it per VTAB task
    convpass_targets=['attn', 'mlp'],  # ['attn'] is the paper's Convpass_attn (163,776 parameters)
    convpass_dropout=0.1,  # on the bypass hidden activations, as the authors' VTAB code
)
