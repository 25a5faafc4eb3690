"""Baseline configuration: which adaptation method, its options, and their validation."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional

from hst_fast.constants import TASK_PRESETS, TASKS

METHODS = ("full", "linear", "lora", "convpass")
LORA_TARGETS = ("qkv", "proj", "fc1", "fc2")  # timm Block: attn.qkv, attn.proj, mlp.fc1, mlp.fc2
CONVPASS_TARGETS = ("attn", "mlp")  # ["attn", "mlp"] is Convpass, ["attn"] is Convpass_attn (baselines.md)
# HST's detection side widths, so the baselines' FPN takes the same in_channels as HST's configs
DEFAULT_PYRAMID_CHANNELS = list(TASK_PRESETS["det"]["side_dims"])

# Options that only mean something for one method; giving them to another is an error (a typo, usually).
METHOD_OPTIONS: Dict[str, tuple] = {
    "lora": ("lora_rank", "lora_alpha", "lora_targets", "lora_dropout"),
    "convpass": ("convpass_dim", "convpass_scale", "convpass_targets", "convpass_dropout"),
}
COMMON_OPTIONS = ("pyramid_channels", "drop_path_rate")
OPTION_KEYS = COMMON_OPTIONS + tuple(key for keys in METHOD_OPTIONS.values() for key in keys)


@dataclass
class BaselineConfig:
    """Everything that defines a baseline model's architecture (and its adapter file's config).

    Lists (never tuples) so that ``to_dict()`` equals the JSON round trip ``hst_fast.adapter`` compares.
    """

    vit_name: str
    method: str
    task: str = "cls"
    num_classes: int = 1000
    lora_rank: int = 8
    lora_alpha: Optional[float] = None  # None: equal to lora_rank (scale alpha / r = 1)
    lora_targets: List[str] = field(default_factory=lambda: ["qkv"])
    lora_dropout: float = 0.0
    convpass_dim: int = 8
    convpass_scale: float = 1.0
    convpass_targets: List[str] = field(default_factory=lambda: list(CONVPASS_TARGETS))
    convpass_dropout: float = 0.1  # the authors' released VTAB code drops the bypass hidden activations
    pyramid_channels: List[int] = field(default_factory=lambda: list(DEFAULT_PYRAMID_CHANNELS))
    drop_path_rate: float = 0.0
    timm_kwargs: Dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_args(
        cls, vit_name: str, method: str, task: str = "cls", num_classes: Optional[int] = None, **overrides: Any
    ) -> "BaselineConfig":
        """``method`` with ``overrides`` (method options, ``pyramid_channels``, ``drop_path_rate``); other
        kwargs go to timm. num_classes defaults to 1000 for 'cls' and 0 (no head) for 'det', as HST's."""
        if method not in METHODS:
            hint = " (HST itself is built by hst_fast.create_model)" if method == "hst" else ""
            raise ValueError(f"method must be one of {list(METHODS)}, got {method!r}{hint}")
        if task not in TASKS:
            raise ValueError(f"task must be one of {list(TASKS)}, got {task!r}")
        for other, keys in METHOD_OPTIONS.items():
            given = sorted(k for k in keys if k in overrides)
            if other != method and given:
                raise ValueError(f"{given} only apply to method {other!r}, not {method!r}")
        options = {k: v for k, v in overrides.items() if k in OPTION_KEYS}
        for key in ("lora_targets", "convpass_targets", "pyramid_channels"):
            if isinstance(options.get(key), (tuple, list)):
                options[key] = list(options[key])
            elif isinstance(options.get(key), str):
                options[key] = [options[key]]
        timm_kwargs = {k: v for k, v in overrides.items() if k not in OPTION_KEYS}
        if num_classes is None:
            num_classes = 1000 if task == "cls" else 0
        config = cls(vit_name=vit_name, method=method, task=task, num_classes=num_classes, timm_kwargs=timm_kwargs,
                     **options)
        if config.lora_alpha is None:
            config.lora_alpha = float(config.lora_rank) if _is_positive_int(config.lora_rank) else None
        config.validate()
        return config

    def validate(self) -> None:
        """Raises ``ValueError`` naming the first inconsistent field."""
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {list(METHODS)}, got {self.method!r}")
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {list(TASKS)}, got {self.task!r}")
        if not isinstance(self.num_classes, int) or isinstance(self.num_classes, bool) or self.num_classes < 0:
            raise ValueError(f"num_classes must be an int >= 0, got {self.num_classes!r}")
        if self.method == "linear" and self.task == "cls" and self.num_classes == 0:
            raise ValueError("method 'linear' with num_classes=0 trains nothing; give num_classes")
        if not _is_positive_int(self.lora_rank):
            raise ValueError(f"lora_rank must be a positive int, got {self.lora_rank!r}")
        if not isinstance(self.lora_alpha, (int, float)) or isinstance(self.lora_alpha, bool) or self.lora_alpha <= 0:
            raise ValueError(f"lora_alpha must be a positive number, got {self.lora_alpha!r}")
        _check_subset("lora_targets", self.lora_targets, LORA_TARGETS)
        _check_subset("convpass_targets", self.convpass_targets, CONVPASS_TARGETS)
        if not _is_positive_int(self.convpass_dim):
            raise ValueError(f"convpass_dim must be a positive int, got {self.convpass_dim!r}")
        if not isinstance(self.convpass_scale, (int, float)) or isinstance(self.convpass_scale, bool):
            raise ValueError(f"convpass_scale must be a number, got {self.convpass_scale!r}")
        for name in ("lora_dropout", "convpass_dropout", "drop_path_rate"):
            if not 0.0 <= float(getattr(self, name)) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)!r}")
        channels = self.pyramid_channels
        if not isinstance(channels, list) or len(channels) != 4 or not all(_is_positive_int(c) for c in channels):
            raise ValueError(f"pyramid_channels must be 4 positive ints (strides 4, 8, 16, 32), got {channels!r}")

    @property
    def lora_scale(self) -> float:
        """The LoRA update's multiplier alpha / r."""
        return float(self.lora_alpha) / self.lora_rank

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


def _is_positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _check_subset(name: str, values: Any, allowed: tuple) -> None:
    if not isinstance(values, list) or not values or len(set(values)) != len(values) or set(values) - set(allowed):
        raise ValueError(f"{name} must be a non-empty list of distinct names from {list(allowed)}, got {values!r}")
