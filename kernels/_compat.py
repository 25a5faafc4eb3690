"""Every Triton-version, hardware and interpreter difference the kernels depend on.

Kernels import what they need from here instead of checking versions or the environment
themselves. Feature detection only, never version strings.

Differences between Triton 3.6 (torch 2.11's, the GPU machine's) and 3.7 (pinned) the kernels avoid rather than
detect: a ``@triton.jit`` helper's constexpr parameter takes no default (3.6 passes it on as a plain value), and
fp32 FMA tiles are chosen per kernel and width (``side_ffn._FMA_TILES``). Both are checked by compiling every kernel
for sm_90 with both Tritons (``tests/kernels/test_compile_sm90.py``). Triton 3.6's interpreter needs numpy < 2.4
(it converts 1-element arrays to loop bounds with ``int()``, which numpy 2.4 refuses); the pinned 3.7 has no limit.
"""
from __future__ import annotations

import functools
import os
from collections.abc import Callable
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


# --- Matrix products and launch sizes (appended for layer_norm / side_ffn) --------------------------------------

__all__ += ["dot_dtype", "dot_precision", "prune_by_registers", "sm_count"]


def dot_dtype(dtype: torch.dtype) -> tl.dtype:
    """What kernels cast ``tl.dot`` operands to for inputs of ``dtype`` (pass it as a ``tl.constexpr``).

    The input's own dtype on a GPU. float32 under the interpreter: it runs ``tl.dot`` through numpy, which has no
    bfloat16, and returns garbage for bf16 operands (values off by ~1e10); casting costs nothing there.
    """
    return tl.float32 if INTERPRET else TORCH_TO_TL[dtype]


def dot_precision(dtype: torch.dtype) -> str:
    """``tl.dot(..., input_precision=...)`` for inputs of ``dtype`` (pass it as a ``tl.constexpr``).

    fp32 inputs get ``'ieee'`` unless PyTorch itself allows TF32 matmuls, so an fp32 kernel matches ``F.linear``
    (Triton's default for fp32 dots is TF32). Ignored for 16-bit operands.
    """
    if dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32:
        return "ieee"
    return "tf32"


@functools.cache
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of ``device``, to size persistent grids; 4 for CPU tensors (interpreter), so
    small test inputs still spread over several programs."""
    if device.type != "cuda":
        return 4
    return _sm_count(device.index if device.index is not None else torch.cuda.current_device())


def prune_by_registers(tiles: Callable[[dict], Sequence[tuple[int, float]]], keep: int = 3) -> Callable:
    """An ``early_config_prune`` for ``@triton.autotune``: ``tiles(meta)`` (meta = kernel arguments + config kwargs)
    gives the kernel's register tiles as (elements, most 32-bit values per thread it may take); a config is dropped if
    any tile exceeds its share of the config's threads. Of the others, the first ``keep`` in list order (the configs'
    order of preference) survive; if none fits, the one closest to fitting.

    Under ``torch.use_deterministic_algorithms(True)`` it keeps only the first survivor, so which tiling (and so
    which summation order) runs never depends on autotuning's timings. Triton caches the choice per autotuning key,
    so set the mode before the first call (as for ``torch.backends.cudnn.benchmark``)."""

    def prune(configs, named_args, **kwargs):
        def load(config) -> tuple[float, float]:  # (worst, total) fraction of the per-thread limits
            meta = {**named_args, **kwargs, **config.kwargs}
            fractions = [elements / (config.num_warps * 32) / limit for elements, limit in tiles(meta)]
            return max(fractions), sum(fractions)

        kept = [config for config in configs if load(config)[0] <= 1][:keep] or [min(configs, key=load)]
        return kept[:1] if torch.are_deterministic_algorithms_enabled() else kept

    return prune
