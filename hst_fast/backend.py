"""The kernel-backend switch: which implementation of each fused op a model runs.

``resolve_ops(name)`` is called once, where a model is built; modules keep the returned
``KernelOps`` and call its functions, so no forward branches on the backend.

- ``'torch'``: the pure-PyTorch references (``hst_fast.kernels.reference``).
- ``'triton'``: the fused Triton kernels for every call. On CPU tensors they run under Triton's
  interpreter, which needs ``TRITON_INTERPRET=1`` in the environment before ``hst_fast.kernels``
  is first imported (tests do this).
- ``'auto'``: Triton on CUDA tensors, the reference elsewhere and for inputs a kernel does not
  handle (each kernel raises ``UnsupportedInput`` for those before doing any work).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

import torch

from hst_fast.constants import KERNEL_BACKENDS
from hst_fast.kernels import reference
from hst_fast.recompute import lean_ops

OP_NAMES = ("layer_norm", "side_attention", "side_ffn", "fg_injection")


@dataclass(frozen=True)
class KernelOps:
    """One implementation of each fused op; signatures as in ``hst_fast.kernels.reference``."""

    name: str
    layer_norm: Callable[..., torch.Tensor]
    side_attention: Callable[..., torch.Tensor]
    side_ffn: Callable[..., torch.Tensor]
    fg_injection: Callable[..., torch.Tensor]


def reference_ops() -> KernelOps:
    return KernelOps("torch", **{op: getattr(reference, f"{op}_reference") for op in OP_NAMES})


def _autocast_aware(kernel: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """Under autocast, runs ``kernel`` in the autocast dtype, as autocast runs a Linear: floating
    tensor arguments are cast (differentiably, so fp32 parameters get fp32 gradients) and autocast
    is off inside the kernel's own torch code. Outside autocast, calls ``kernel`` unchanged."""

    def run(x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        device_type = x.device.type
        if not torch.is_autocast_enabled(device_type):
            return kernel(x, *args, **kwargs)
        dtype = torch.get_autocast_dtype(device_type)

        def cast(value):
            return value.to(dtype) if isinstance(value, torch.Tensor) and value.is_floating_point() else value

        with torch.autocast(device_type, enabled=False):
            return kernel(cast(x), *map(cast, args), **{k: cast(v) for k, v in kwargs.items()})

    run.__name__ = kernel.__name__
    return run


def triton_ops() -> KernelOps:
    """The Triton kernels (imported here, lazily, so ``import hst_fast`` never imports Triton)."""
    from hst_fast.kernels import fg_injection, layer_norm, side_attention, side_ffn

    kernels = dict(
        layer_norm=layer_norm.layer_norm,
        side_attention=side_attention.side_attention,
        side_ffn=side_ffn.side_ffn,
        fg_injection=fg_injection.fg_injection,
    )
    return KernelOps("triton", **{op: _autocast_aware(fn) for op, fn in kernels.items()})


def _auto(kernel: Callable[..., torch.Tensor], fallback: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """Runs ``kernel`` on CUDA inputs it supports, ``fallback`` otherwise."""
    from hst_fast.kernels._compat import UnsupportedInput

    def dispatch(x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if x.is_cuda:
            try:
                return kernel(x, *args, **kwargs)
            except UnsupportedInput:
                pass
        return fallback(x, *args, **kwargs)

    dispatch.__name__ = f"auto_{kernel.__name__}"
    return dispatch


def resolve_ops(backend: str) -> KernelOps:
    """Returns the ops for ``backend`` ('auto' | 'triton' | 'torch'); raises on anything else."""
    if backend not in KERNEL_BACKENDS:
        raise ValueError(f"kernel_backend must be one of {KERNEL_BACKENDS}, got {backend!r}")
    if backend == "torch" or (backend == "auto" and not torch.cuda.is_available()):
        return reference_ops()  # 'auto' can never see a CUDA tensor here
    if backend == "triton" and not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError(
            "kernel_backend='triton' without a CUDA device runs Triton's interpreter: set TRITON_INTERPRET=1 "
            "in the environment before importing hst_fast, or use kernel_backend='torch'/'auto'."
        )
    kernels, refs = triton_ops(), lean_ops(reference_ops())  # fallbacks keep only their inputs for backward
    if backend == "triton":
        return kernels
    return KernelOps("auto", **{op: _auto(getattr(kernels, op), getattr(refs, op)) for op in OP_NAMES})
