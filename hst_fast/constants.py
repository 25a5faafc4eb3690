"""Constants every layer of hst_fast shares, defined once: task presets, strides, backend names.

Nothing here imports torch or timm, so benchmarks, configs and tests read the same numbers the model uses.
"""
from __future__ import annotations

from typing import Any, Dict, Tuple

# HST.md §4: the classification (VTAB-1k) and dense-prediction (COCO, ADE20K) side networks.
TASK_PRESETS: Dict[str, Dict[str, Any]] = {
    "cls": dict(side_dims=[32, 48, 64, 72], side_heads=[2, 4, 8, 12], num_meta_tokens=1),
    "det": dict(side_dims=[64, 128, 256, 384], side_heads=[2, 4, 8, 12], num_meta_tokens=8),
}
TASKS: Tuple[str, ...] = tuple(TASK_PRESETS)
NUM_STAGES = 4
STAGE_STRIDES: Tuple[int, ...] = (4, 8, 16, 32)  # side stage s runs at H / 2^(s+1) (HST.md §3)
STRIDE = STAGE_STRIDES[-1]  # the coarsest side stage: images must be multiples of it

KERNEL_BACKENDS: Tuple[str, ...] = ("auto", "triton", "torch")  # hst_fast.backend.resolve_ops
ATTN_BACKENDS: Tuple[str, ...] = ("sdpa", "xformers", "eager")  # how the ViT blocks compute attention
BACKBONE_GRADS: Tuple[str, ...] = ("full", "none")  # paper-faithful (MetaT + LN-tuning) | frozen streaming
GRAD_CHECKPOINTING: Tuple[Any, ...] = (False, "mlp", True)  # faithful ViT recompute: none | LN2+fc1+GELU | blocks
