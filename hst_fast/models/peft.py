"""What every adaptation method's model shares (PEFT's habits): one trainable set, decided in one place."""
from __future__ import annotations

from typing import Iterator, Tuple

import torch.nn as nn


def trainable_summary(model: nn.Module) -> str:
    """PEFT's line: ``trainable params: X || all params: Y || trainable%: Z``."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return f"trainable params: {trainable:,d} || all params: {total:,d} || trainable%: {100 * trainable / total:.4f}"


class TrainableSubsetMixin:
    """For an ``nn.Module`` that trains a subset of its parameters, named by ``trainable_named_parameters``.

    ``freeze()`` applies the subset and ``train(mode)`` re-applies it, so frozen parameters stay frozen.
    """

    def trainable_named_parameters(self) -> Iterator[Tuple[str, nn.Parameter]]:
        raise NotImplementedError

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
