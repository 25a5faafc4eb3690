"""Recomputation in backward: autograd keeps an op's inputs instead of its intermediates.

``recompute(fn, *args)`` returns ``fn(*args)``; autograd saves only the tensor arguments and reruns ``fn`` in
backward, under the forward's autocast state, to differentiate it. It is exact: the same ops run in the same order,
so values and gradients are those of ``fn`` itself. Unlike ``torch.utils.checkpoint``, the kept inputs are saved
through ``save_for_backward``, so ``saved_tensors_hooks`` (offloading, memory accounting) see them.

``lean_ops(ops)`` applies this to the side block's attention and feed-forward where they run the PyTorch reference:
per side block autograd then keeps the two [B, N, d] block inputs instead of the 4d-wide FFN hidden, its
pre-activation, LN outputs, queries and attention outputs (about 7x fewer bytes). The Triton kernels already save
only their inputs (and the FFN's LayerNorm row statistics), so they are left as they are.
"""
from __future__ import annotations

import dataclasses
import functools
import inspect
from typing import Any, Callable, Tuple

import torch

RECOMPUTED_OPS = ("side_attention", "side_ffn")  # the KernelOps whose reference keeps 4d-wide intermediates


class Recompute(torch.autograd.Function):
    """``fn(*args)`` saving only the tensors among ``args``; backward reruns ``fn`` with grad and differentiates it."""

    @staticmethod
    def forward(ctx, fn: Callable[..., torch.Tensor], *args: Any) -> torch.Tensor:
        positions = [i for i, arg in enumerate(args) if isinstance(arg, torch.Tensor)]
        ctx.save_for_backward(*(args[i] for i in positions))
        ctx.fn, ctx.positions = fn, positions
        ctx.args = [None if i in positions else arg for i, arg in enumerate(args)]
        device = args[positions[0]].device.type
        ctx.autocast = (device, torch.is_autocast_enabled(device), torch.get_autocast_dtype(device))
        return fn(*args)

    @staticmethod
    @torch.autograd.function.once_differentiable  # the recomputed graph is differentiated once, without create_graph
    def backward(ctx, grad_out: torch.Tensor) -> Tuple[Any, ...]:
        args = list(ctx.args)
        for i, saved in zip(ctx.positions, ctx.saved_tensors):
            args[i] = saved.detach().requires_grad_(ctx.needs_input_grad[1 + i])
        wanted = [i for i in ctx.positions if ctx.needs_input_grad[1 + i]]
        device, enabled, dtype = ctx.autocast
        with torch.enable_grad(), torch.autocast(device, dtype=dtype, enabled=enabled):
            out = ctx.fn(*args)
        grads = torch.autograd.grad(out, [args[i] for i in wanted], grad_out, allow_unused=True)
        by_position = dict(zip(wanted, grads))
        return (None, *(by_position.get(i) for i in range(len(args))))


def recompute(fn: Callable[..., torch.Tensor], *args: Any) -> torch.Tensor:
    """``fn(*args)`` (one tensor out), recomputed in backward; ``fn`` must be deterministic (no dropout, no
    in-place change of its inputs). Runs ``fn`` directly when no tensor argument needs a gradient."""
    if torch.is_grad_enabled() and any(isinstance(a, torch.Tensor) and a.requires_grad for a in args):
        return Recompute.apply(fn, *args)
    return fn(*args)


def recomputed(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """``fn`` with the same signature, computed through ``recompute`` (keyword arguments bound to positions)."""
    signature = inspect.signature(fn)

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> torch.Tensor:
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        if bound.kwargs:
            raise TypeError(f"{fn.__name__}: recompute passes arguments by position, not {list(bound.kwargs)}")
        return recompute(fn, *bound.args)

    return run


def lean_ops(ops: Any) -> Any:
    """A ``hst_fast.backend.KernelOps`` whose ``RECOMPUTED_OPS`` are recomputed in backward if ``ops`` is the
    PyTorch reference ('torch'); any other ``ops`` unchanged."""
    if ops.name != "torch":
        return ops
    return dataclasses.replace(ops, **{op: recomputed(getattr(ops, op)) for op in RECOMPUTED_OPS})
