# LoRA r=8 on every block's fused qkv projection: 12 x (768*8 + 8*2304) = 294,912 parameters, plus the head
# (76,900 with 100 classes) = 371,812. B starts at zero, so training starts from the pretrained ViT;
# model.merge() folds the updates into the qkv weights for inference.
_base_ = ['./_vtab_base.py']

model = dict(
    method='lora',
    lora_rank=8,
    lora_alpha=8,  # update scale alpha / r = 1
    lora_targets=['qkv'],  # add 'proj', 'fc1', 'fc2' for the attention output and MLP (1,179,648 at r=8)
    lora_dropout=0.0,
)
