"""Every Triton-version, hardware and interpreter difference the kernels depend on.

Kernels import what they need from here instead of checking versions or the environment
themselves. Feature detection only, never version strings.
"""
from __future__ import annotations

import os
from typing import Sequence

import torch
import triton
import triton.language as tl

__all__ = ["UnsupportedInput", "INTERPRET", "autotune_configs", "check_tensors", "TORCH_TO_TL"]

# Triton decides interpreter vs. compiler when a function is decorated with @triton.jit, so
# this must be read once, at import, exactly as Triton reads it.
INTERPRET: bool = os.environ.get("TRITON_INTERPRET", "0") == "1"

TORCH_TO_TL = {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}


class UnsupportedInput(ValueError):
    """An input a fused kernel does not handle. ``kernel_backend='auto'`` falls back to the
    PyTorch reference on it; ``'triton'`` lets it propagate, so it is never silently wrong."""


def autotune_configs(configs: Sequence[triton.Config]) -> list:
    """The autotuning space: all ``configs`` on a GPU, only the first under the interpreter
    (``@triton.autotune`` needs a device to time on)."""
    return list(configs[:1]) if INTERPRET else list(configs)


def check_tensors(op: str, *tensors: torch.Tensor) -> None:
    """Raises ``UnsupportedInput`` unless all tensors share one supported dtype and one device,
    and are contiguous. ``op`` names the caller in the message."""
    first = tensors[0]
    if first.dtype not in TORCH_TO_TL:
        raise UnsupportedInput(f"{op}: dtype {first.dtype} is not supported (float32, float16, bfloat16)")
    for t in tensors:
        if t.dtype != first.dtype:
            raise UnsupportedInput(f"{op}: mixed dtypes {first.dtype} and {t.dtype}; cast inputs to one dtype")
        if t.device != first.device:
            raise UnsupportedInput(f"{op}: tensors on different devices ({first.device} and {t.device})")
        if not t.is_contiguous():
            raise UnsupportedInput(f"{op}: non-contiguous input of shape {tuple(t.shape)}; call .contiguous()")
    if not first.is_cuda and not INTERPRET:
        raise UnsupportedInput(f"{op}: CPU tensors need Triton's interpreter (TRITON_INTERPRET=1 before import)")
