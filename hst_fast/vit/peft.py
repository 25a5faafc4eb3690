"""What every adaptation method's model shares (PEFT's habits): one trainable set, decided in one place."""
from __future__ import annotations

from typing import Iterator, Tuple

import torch.nn as nn


def trainable_summary(model: nn.Module) -> str:
    """PEFT's line: ``trainable params: X || all params: Y || trainable%: Z``."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return f"trainable params: {trainable:,d} || all params: {total:,d} || trainable%: {100 * trainable / total:.4f}"


def classifier_head(in_dim: int, num_classes: int) -> nn.Module:
    """Linear(in_dim -> num_classes), trunc-normal(.02) weight and zero bias; Identity when num_classes is 0."""
    if not num_classes:
        return nn.Identity()
    head = nn.Linear(in_dim, num_classes)
    nn.init.trunc_normal_(head.weight, std=0.02)
    nn.init.zeros_(head.bias)
    return head


class TrainableSubsetMixin:
    """For an ``nn.Module`` that trains the subset of its parameters ``is_trainable`` names.

    ``freeze()`` applies the subset and ``train(mode)`` re-applies it, so frozen parameters stay frozen.
    """

    def is_trainable(self, name: str) -> bool:
        """Whether the parameter called ``name`` (as in ``named_parameters``) trains."""
        raise NotImplementedError

    def trainable_named_parameters(self) -> Iterator[Tuple[str, nn.Parameter]]:
        for name, param in self.named_parameters():
            if self.is_trainable(name):
                yield name, param

    def freeze(self) -> None:
        """Sets ``requires_grad`` from the trainable set; the one place freezing is decided."""
        trainable = {name for name, _ in self.trainable_named_parameters()}
        for name, param in self.named_parameters():
            param.requires_grad_(name in trainable)

    def train(self, mode: bool = True):
        super().train(mode)
        self.freeze()
        return self

    def print_trainable_parameters(self) -> None:
        """Prints PEFT's line: ``trainable params: X || all params: Y || trainable%: Z``."""
        print(trainable_summary(self))

    def save_adapter(self, directory: str) -> None:
        """Writes only what this model trains (``hst_fast.adapter.save_adapter``)."""
        from hst_fast.adapter import save_adapter

        save_adapter(self, directory)
