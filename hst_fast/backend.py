"""The kernel-backend switch: which implementation of each fused op a model runs.

``resolve_ops(name)`` is called once, where a model is built; modules keep the returned
``KernelOps`` and call its functions, so no forward branches on the backend.

- ``'torch'``: the pure-PyTorch references (``hst_fast.kernels.reference``).
- ``'triton'``: the fused Triton kernels for every call. On CPU tensors they run under Triton's
  interpreter, which needs ``TRITON_INTERPRET=1`` in the environment before ``hst_fast.kernels``
  is first imported (tests do this).
- ``'auto'``: Triton on CUDA tensors, the reference elsewhere and for inputs a kernel does not
  handle (each kernel raises ``UnsupportedInput`` for those before doing any work). Where a
  dispatch table measured on this GPU model gives an (op, width) to the reference, that width
  runs the reference on CUDA too (``load_dispatch``).

The dispatch table (``bench/results/dispatch.json`` of the checkout, or ``$HST_DISPATCH_TABLE``) is
written by ``python -m bench.gpu_check`` from its timings: per GPU name, op and width ``x.shape[-1]``,
``"triton"`` where the kernel's forward + backward measured faster than the reference, ``"torch"``
where not. It is optional: without it, or for a GPU or width it does not list, 'auto' uses Triton.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Mapping, Optional

import torch

from hst_fast.constants import KERNEL_BACKENDS
from hst_fast.kernels import reference
from hst_fast.recompute import lean_ops

OP_NAMES = ("layer_norm", "side_attention", "side_ffn", "fg_injection")

DISPATCH_FORMAT = "hst_fast dispatch table v1"
DISPATCH_TABLE_ENV = "HST_DISPATCH_TABLE"
DEFAULT_DISPATCH_TABLE = Path(__file__).resolve().parents[1] / "bench" / "results" / "dispatch.json"


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


def load_dispatch(device_name: Callable[[], str], path: Optional[Path] = None) -> Dict[str, Dict[int, bool]]:
    """{op: {width: True for Triton, False for the reference}} of the dispatch table at ``path`` (default
    ``$HST_DISPATCH_TABLE``, else ``DEFAULT_DISPATCH_TABLE``) for the GPU named ``device_name()`` (called only if
    the table exists, so no table never initializes CUDA). {} without a table or an entry for that GPU; raises
    ``ValueError`` for a malformed table."""
    path = Path(path or os.environ.get(DISPATCH_TABLE_ENV) or DEFAULT_DISPATCH_TABLE)
    if not path.is_file():
        return {}
    try:
        table = json.loads(path.read_text(encoding="utf-8"))
        if table.get("format") != DISPATCH_FORMAT:
            raise ValueError(f"format is {table.get('format')!r}, expected {DISPATCH_FORMAT!r}")
        entry = table["devices"].get(device_name(), {"ops": {}})
        widths = {op: {int(width): choice for width, choice in entry["ops"].get(op, {}).items()} for op in OP_NAMES}
        bad = {(op, w, c) for op, ws in widths.items() for w, c in ws.items() if c not in ("triton", "torch")}
        if bad:
            raise ValueError(f"choices must be 'triton' or 'torch', got {sorted(bad)}")
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise ValueError(f"malformed kernel dispatch table {path}: {error!r}") from error
    return {op: {w: c == "triton" for w, c in ws.items()} for op, ws in widths.items() if ws}


def _auto(
    kernel: Callable[..., torch.Tensor], fallback: Callable[..., torch.Tensor], use_triton: Mapping[int, bool]
) -> Callable[..., torch.Tensor]:
    """Runs ``kernel`` on CUDA inputs it supports unless ``use_triton`` (width ``x.shape[-1]`` -> bool, from the
    dispatch table) says False for their width; ``fallback`` otherwise."""
    from hst_fast.kernels._compat import UnsupportedInput

    def dispatch(x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if x.is_cuda and use_triton.get(x.shape[-1], True):
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
    table = load_dispatch(torch.cuda.get_device_name)
    auto = {op: _auto(getattr(kernels, op), getattr(refs, op), table.get(op, {})) for op in OP_NAMES}
    return KernelOps("auto", **auto)
