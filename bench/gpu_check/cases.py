"""What the check runs: each op's cases (shapes, inputs, byte and FLOP models from ``bench/test_bench_<op>.py``), its
implementations, and how their outputs and gradients are computed and compared."""
from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from types import ModuleType
from typing import Any

import torch

from bench import _harness as h

OPS = ("layer_norm", "side_attention", "side_ffn", "fg_injection")
BLOCK = "side_block"
# The widths of the config sweep: stage 1 of detection (the most tokens), stage 4 of classification (a width that
# is not a power of two) and stage 4 of detection (the widest).
SWEEP_STAGES = (("det", 64), ("cls", 72), ("det", 384))


def module(op: str) -> ModuleType:
    return importlib.import_module(f"bench.test_bench_{op}")


@dataclass(frozen=True)
class Case:
    """One shape of one op (or the side block), as its bench module defines it."""

    op: str
    case_id: str
    payload: Any

    @property
    def module(self) -> ModuleType:
        return module(self.op)

    @cached_property
    def info(self) -> dict[str, Any]:
        return self.module.info(self.payload)

    @property
    def shape(self) -> str:
        return self.module.shape_name(self.payload)

    @property
    def width(self) -> int:
        return self.info["dim"]

    def args(self) -> tuple:
        """Fresh inputs (bench dtype, on the bench device; tensors that get a gradient require it)."""
        return self.module.make_args(self.payload)

    def nbytes(self) -> dict[str, int]:
        return self.module.byte_model(self.payload)

    def flops(self) -> dict[str, int] | None:
        flop_model = getattr(self.module, "flop_model", None)
        return flop_model(self.payload) if flop_model else None


def cases(op: str) -> list[Case]:
    return [Case(op, case_id, payload) for case_id, payload in module(op).SHAPES]


def sweep_cases(op: str) -> list[Case]:
    """The cases of ``op`` at ``SWEEP_STAGES`` (the first of each (config, width))."""
    chosen = {}
    for case in cases(op):
        key = (case.info["config"], case.width)
        if key in SWEEP_STAGES:
            chosen.setdefault(key, case)
    return [chosen[key] for key in SWEEP_STAGES if key in chosen]


def implementation(op: str, provider: str, compile_options: dict[str, Any]) -> Callable:
    """``op`` (or the side block) as run by ``provider``: 'reference' (eager), 'compile' (the reference under
    ``torch.compile(**compile_options)``) or 'triton'."""
    if op == BLOCK:
        return module(BLOCK).block_provider(provider, **compile_options)
    if provider == "triton":
        return h.kernel_op(op)
    reference = h.reference_op(op)
    return h.compiled(reference, **compile_options) if provider == "compile" else reference


def gradient_names(op: str, args: tuple) -> list[str]:
    """Names of the arguments that get a gradient, from the reference's signature."""
    names = list(inspect.signature(h.reference_op(op)).parameters)
    return [name for name, arg in zip(names, args) if isinstance(arg, torch.Tensor) and arg.requires_grad]


def upcast(args: tuple) -> tuple:
    """The same values in fp32, as fresh leaves (requiring grad where the originals do)."""
    return tuple(a.detach().float().requires_grad_(a.requires_grad) if isinstance(a, torch.Tensor) else a
                 for a in args)


def outputs(fn: Callable, args: tuple, grad_out: torch.Tensor | None = None) -> list[torch.Tensor]:
    """[output, gradient of each argument that requires one] of ``fn(*args)``, the backward fed ``grad_out`` (by
    default a random one seeded by the output's size and rounded to the bench dtype, so fp32 and bf16 runs get the
    same values)."""
    out = fn(*args)
    if grad_out is None:
        generator = torch.Generator(device=out.device).manual_seed(out.numel())
        grad_out = torch.randn(out.shape, generator=generator, device=out.device).to(h.DTYPE)
    grads = torch.autograd.grad(out, h.grad_targets(args), grad_out.to(out.dtype))
    return [out.detach(), *grads]
