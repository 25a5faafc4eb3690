"""HST configuration: the task presets of HST.md §4 and their validation."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional

from hst_fast.constants import BACKBONE_GRADS, NUM_STAGES, TASK_PRESETS

OVERRIDE_KEYS = ("side_dims", "side_heads", "num_meta_tokens", "block_indices", "drop_path_rate", "backbone_grad")


@dataclass
class HSTConfig:
    """Everything that defines an HST model's architecture (and its adapter file's config)."""

    vit_name: str
    task: str = "cls"
    num_classes: int = 1000
    side_dims: List[int] = field(default_factory=list)
    side_heads: List[int] = field(default_factory=list)
    num_meta_tokens: int = 1
    block_indices: Optional[List[int]] = None
    drop_path_rate: float = 0.0
    backbone_grad: str = "full"  # 'full': paper-faithful (MetaT + LN-tuning); 'none': frozen streaming
    timm_kwargs: Dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_task(cls, vit_name: str, task: str, num_classes: Optional[int], **overrides: Any) -> "HSTConfig":
        """The preset of ``task`` ('cls' | 'det') with ``overrides`` applied; other kwargs go to timm."""
        if task not in TASK_PRESETS:
            raise ValueError(f"task must be one of {sorted(TASK_PRESETS)}, got {task!r}")
        preset = dict(TASK_PRESETS[task])
        timm_kwargs = {k: v for k, v in overrides.items() if k not in OVERRIDE_KEYS}
        preset.update({k: v for k, v in overrides.items() if k in OVERRIDE_KEYS})
        if num_classes is None:
            num_classes = 1000 if task == "cls" else 0
        config = cls(vit_name=vit_name, task=task, num_classes=num_classes, timm_kwargs=timm_kwargs, **preset)
        config.validate()
        return config

    def validate(self) -> None:
        """Raises ``ValueError`` naming the first inconsistent field."""
        for name in ("side_dims", "side_heads"):
            values = getattr(self, name)
            if len(values) != NUM_STAGES or not all(isinstance(v, int) and v > 0 for v in values):
                raise ValueError(f"{name} must be {NUM_STAGES} positive ints, got {values!r}")
        for stage, (dim, heads) in enumerate(zip(self.side_dims, self.side_heads)):
            if dim % heads:
                raise ValueError(f"side_dims[{stage}]={dim} is not divisible by side_heads[{stage}]={heads}")
        if not isinstance(self.num_meta_tokens, int) or self.num_meta_tokens < 1:
            raise ValueError(f"num_meta_tokens must be an int >= 1, got {self.num_meta_tokens!r}")
        if not isinstance(self.num_classes, int) or self.num_classes < 0:
            raise ValueError(f"num_classes must be an int >= 0, got {self.num_classes!r}")
        if self.backbone_grad not in BACKBONE_GRADS:
            raise ValueError(f"backbone_grad must be one of {BACKBONE_GRADS}, got {self.backbone_grad!r}")
        if not 0.0 <= float(self.drop_path_rate) < 1.0:
            raise ValueError(f"drop_path_rate must be in [0, 1), got {self.drop_path_rate!r}")

    def stage_blocks(self, depth: int) -> List[range]:
        """The ViT block indices paired with each side stage (HST.md §2)."""
        indices = self.block_indices if self.block_indices is not None else default_block_indices(depth)
        if len(indices) != NUM_STAGES or list(indices) != sorted(set(indices)) or indices[0] < 0:
            raise ValueError(f"block_indices must be {NUM_STAGES} strictly increasing indices, got {indices!r}")
        if indices[-1] != depth - 1:
            raise ValueError(f"block_indices must end at the last ViT block ({depth - 1}), got {indices!r}")
        starts = [0] + [i + 1 for i in indices[:-1]]
        return [range(start, end + 1) for start, end in zip(starts, indices)]

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


def default_block_indices(depth: int) -> List[int]:
    """Last block of each of 4 equal stages: [2, 5, 8, 11] for depth 12."""
    if depth % NUM_STAGES:
        raise ValueError(f"ViT depth {depth} does not split into {NUM_STAGES} equal stages; pass block_indices")
    per_stage = depth // NUM_STAGES
    return [per_stage * (s + 1) - 1 for s in range(NUM_STAGES)]

