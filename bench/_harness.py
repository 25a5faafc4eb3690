"""Shared machinery of the benchmark suite: device and size mode, shapes, providers, timing, memory.

Imports only torch (and, lazily, timm/hst_fast/xformers/pynvml): no mmengine, mmdet or matplotlib, so the
suite runs on a bare GPU box and collects on a CPU-only CI machine.

Size mode (``HST_BENCH_SIZE``): ``full`` (default on GPU) runs every side stage of the classification
config (ViT-B, 224px, B=128) and the detection config (ViT-B, 1024px, B=2); ``reduced`` (default on CPU)
keeps the widths, heads and key counts but shrinks batch and image, so a 2-core machine runs the suite
in minutes.
Dtype (``HST_BENCH_DTYPE``): ``bf16`` on GPU, ``fp32`` on CPU (see ``DTYPE_NAME``).
"""
from __future__ import annotations

import functools
import importlib
import importlib.util
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
import torch

ON_GPU = torch.cuda.is_available()
DEVICE = torch.device("cuda" if ON_GPU else "cpu")
SIZE = os.environ.get("HST_BENCH_SIZE", "full" if ON_GPU else "reduced")
if SIZE not in ("full", "reduced"):
    raise ValueError(f"HST_BENCH_SIZE must be 'full' or 'reduced', got {SIZE!r}")
# bf16 on GPU. On CPU float32: CPU bf16 matmuls without native bf16 units are a slow fallback path (a
# [16, 384] x [384, 384] bmm takes ~80 ms), which would turn a smoke run into a benchmark of that fallback.
DTYPE_NAME = os.environ.get("HST_BENCH_DTYPE", "bf16" if ON_GPU else "fp32")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
if DTYPE_NAME not in DTYPES:
    raise ValueError(f"HST_BENCH_DTYPE must be one of {sorted(DTYPES)}, got {DTYPE_NAME!r}")
DTYPE = DTYPES[DTYPE_NAME]

PASSES = ("fwd", "bwd", "fwdbwd")
PROVIDERS = ("reference", "compile", "xformers", "triton")
COMPILE_MODE = "max-autotune-no-cudagraphs"

# Timing: rounds of the timed function (after warm-up rounds). On GPU a timed call repeats a small op
# back to back until it moves about TARGET_CALL_S worth of copy-bandwidth bytes (at most MAX_REPS times),
# so launch and synchronization overhead stays a small part of what is measured.
ROUNDS, WARMUP = (30, 5) if ON_GPU else (3, 1)
TRAIN_ROUNDS, TRAIN_WARMUP = (10, 2) if ON_GPU else (2, 1)
TARGET_CALL_S = 2e-4
MAX_REPS = 64

SESSION: dict[str, Any] = {}  # filled by fixtures, read by the machine-info hook


# ----------------------------------------------------------------------------------------- shapes
# HST.md §4: side widths / heads per stage, meta tokens G (keys = G + 1), ViT-B width and patch 16.
CONFIGS = {
    "cls": {"dims": (32, 48, 64, 72), "heads": (2, 4, 8, 12), "meta": 1, "full": (128, 224), "reduced": (2, 64)},
    "det": {"dims": (64, 128, 256, 384), "heads": (2, 4, 8, 12), "meta": 8, "full": (2, 1024), "reduced": (1, 128)},
}
VIT_DIM = 768
PATCH = 16


@dataclass(frozen=True)
class StageShape:
    """One side stage of one config: side tokens [B, H_s*W_s, d], keys [B, G+1, d], ViT patches [B, Hv, Wv, D]."""

    config: str
    stage: int  # 1..4
    batch: int
    hw: tuple[int, int]
    dim: int
    heads: int
    keys: int
    vit_hw: tuple[int, int]
    vit_dim: int = VIT_DIM

    @property
    def tokens(self) -> int:
        return self.hw[0] * self.hw[1]

    @property
    def prefix(self) -> str:
        return f"{self.config}-s{self.stage}-B{self.batch}-N{self.tokens}"

    @property
    def vit_tokens(self) -> int:
        return self.vit_hw[0] * self.vit_hw[1]

    def info(self) -> dict[str, Any]:
        return {"config": self.config, "stage": self.stage, "batch": self.batch, "tokens": self.tokens,
                "dim": self.dim, "heads": self.heads, "keys": self.keys, "vit_hw": list(self.vit_hw),
                "vit_dim": self.vit_dim, "dtype": DTYPE_NAME}


def batch_and_image(config: str) -> tuple[int, int]:
    return CONFIGS[config][SIZE]


def stage_shapes() -> list[StageShape]:
    """Every side stage of both configs, at the current size mode."""
    shapes = []
    for config, spec in CONFIGS.items():
        batch, image = batch_and_image(config)
        grid = image // PATCH
        for s, (dim, heads) in enumerate(zip(spec["dims"], spec["heads"])):
            side = image // 2 ** (s + 2)
            shapes.append(StageShape(config, s + 1, batch, (side, side), dim, heads, spec["meta"] + 1, (grid, grid)))
    return shapes


def vit_token_shapes() -> list[tuple[str, int, int, int]]:
    """(config, B, tokens, D) of the ViT blocks' LayerNorm inputs: [meta, cls, patches]."""
    shapes = []
    for config, spec in CONFIGS.items():
        batch, image = batch_and_image(config)
        shapes.append((config, batch, spec["meta"] + 1 + (image // PATCH) ** 2, VIT_DIM))
    return shapes


# ----------------------------------------------------------------------------------------- providers
def provider_marks(provider: str) -> list:
    """Skip marks, decided at collection, for providers this machine cannot time meaningfully."""
    if provider == "compile" and not ON_GPU:
        return [pytest.mark.skip(reason="torch.compile providers run on GPU only: on CPU, inductor compile time "
                                        "would dominate a short smoke run")]
    if provider == "triton" and not ON_GPU:
        return [pytest.mark.skip(reason="Triton kernels are timed on GPU only: on CPU they run under Triton's "
                                        "interpreter, which is not a performance path")]
    if provider == "xformers":
        if not ON_GPU:
            return [pytest.mark.skip(reason="xformers memory_efficient_attention needs a CUDA device")]
        if importlib.util.find_spec("xformers") is None:
            return [pytest.mark.skip(reason="xformers is not installed (pip install xformers)")]
    return []


def cases(items: Sequence[tuple[str, Any]], providers: Sequence[str] = ("reference", "compile", "triton")) -> list:
    """pytest params for every (id, payload) x pass x provider, ids ``<id>-<pass>-<provider>``."""
    params = []
    for case_id, payload in items:
        for pass_ in PASSES:
            for provider in providers:
                params.append(pytest.param((payload, pass_, provider), id=f"{case_id}-{DTYPE_NAME}-{pass_}-{provider}",
                                           marks=provider_marks(provider)))
    return params


def set_compile_limits() -> None:
    """Every shape compiles its own static graph of the same function: lift dynamo's recompile limit so none
    silently falls back to eager (the option was renamed ``recompile_limit`` from ``cache_size_limit``)."""
    import torch._dynamo

    for name in ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit", "accumulated_cache_size_limit"):
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, max(getattr(torch._dynamo.config, name), 4096))


@functools.cache
def compiled(fn: Callable) -> Callable:
    """``torch.compile(fn, mode='max-autotune-no-cudagraphs', dynamic=False)``, one wrapper per function."""
    set_compile_limits()
    return torch.compile(fn, mode=COMPILE_MODE, dynamic=False)


def compiled_module(module: torch.nn.Module) -> Callable:
    """``torch.compile`` of a module, same mode as ``compiled``; each module instance compiles its own graph."""
    set_compile_limits()
    return torch.compile(module, mode=COMPILE_MODE, dynamic=False)


def triton_op(op: str) -> Callable:
    """The public Triton op ``hst_fast.kernels.<op>.<op>``; skips the test if it cannot be imported."""
    try:
        return getattr(importlib.import_module(f"hst_fast.kernels.{op}"), op)
    except (ImportError, AttributeError) as error:
        pytest.skip(f"Triton op hst_fast.kernels.{op} is not available: {error!r}")


def reference_op(op: str) -> Callable:
    from hst_fast.kernels import reference

    return getattr(reference, f"{op}_reference")


def op_provider(op: str, provider: str) -> Callable:
    """The function timed for ``provider``, with the reference's signature."""
    if provider == "reference":
        return reference_op(op)
    if provider == "compile":
        return compiled(reference_op(op))
    if provider == "triton":
        return triton_op(op)
    raise ValueError(f"provider {provider!r} has no generic implementation for {op}")


# ----------------------------------------------------------------------------------------- device helpers
def sync() -> None:
    if ON_GPU:
        torch.cuda.synchronize()


def rand(*shape: int, scale: float = 1.0, grad: bool = True) -> torch.Tensor:
    tensor = (torch.randn(*shape, device=DEVICE, dtype=torch.float32) * scale).to(DTYPE)
    return tensor.requires_grad_(grad)


def measure_copy_bandwidth() -> dict[str, Any]:
    """Device copy bandwidth in GB/s, counting read + write: a 1 GiB device-to-device ``copy_`` on GPU,
    a 64 MiB ``clone`` (memcpy) on CPU. The ceiling that every memory-bound kernel is measured against."""
    nbytes = (1 << 30) if ON_GPU else (64 << 20)
    src = torch.empty(nbytes, dtype=torch.uint8, device=DEVICE).fill_(1)
    dst = torch.empty_like(src)
    reps = 20 if ON_GPU else 5
    dst.copy_(src)
    if ON_GPU:
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        times = []
        for _ in range(reps):
            start.record()
            dst.copy_(src)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        method = "torch.Tensor.copy_ of 1 GiB, device to device, CUDA events"
    else:
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            src.clone()
            times.append(time.perf_counter() - t0)
        method = "torch.Tensor.clone of 64 MiB on CPU, perf_counter"
    best = min(times)
    median = sorted(times)[len(times) // 2]
    del src, dst
    if ON_GPU:
        torch.cuda.empty_cache()
    return {"copy_gbps": 2 * nbytes / median / 1e9, "copy_gbps_best": 2 * nbytes / best / 1e9, "copy_bytes": nbytes,
                "copy_method": method}


def reset_peak() -> int:
    """Resets the peak-memory counter; returns the bytes allocated now (0 on CPU)."""
    if not ON_GPU:
        return 0
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    return torch.cuda.memory_allocated()


def peak_info(base: int) -> dict[str, Any]:
    """Peak memory since ``reset_peak``: absolute (inputs and parameters included) and above ``base``."""
    if not ON_GPU:
        return {"peak_mem_mb": None, "peak_extra_mb": None,
                    "peak_mem_note": "CPU: no allocator peak statistics (torch CPU allocations bypass tracemalloc)"}
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    return {"peak_mem_mb": peak / 2**20, "peak_extra_mb": (peak - base) / 2**20}


def median_seconds(benchmark) -> float | None:
    """The median of the timed calls, or None when pytest-benchmark is disabled (a plain test run)."""
    stats = getattr(benchmark, "stats", None)
    return getattr(getattr(stats, "stats", None), "median", None)


# ----------------------------------------------------------------------------------------- op benchmark
def run_op(
    benchmark,
    copy_bandwidth: dict[str, Any],
    *,
    op: str,
    provider: str,
    pass_: str,
    forward: Callable[[], torch.Tensor],
    grad_targets: Sequence[torch.Tensor],
    nbytes: dict[str, int],
    flops: dict[str, int] | None = None,
    shape: str,
    info: dict[str, Any],
) -> None:
    """Times one pass of one op and records ``extra_info``.

    forward(): runs the op on fixed inputs (grad mode on, so it saves what its backward needs: the
    forward of a training step); grad_targets: every tensor that gets a gradient (inputs and parameters);
    nbytes / flops: {pass: bytes that must move / model FLOPs} from the op's byte model.

    - ``fwd``: forward only.
    - ``bwd``: backward only; forwards run in the untimed set-up of each round.
    - ``fwdbwd``: forward and backward.
    Backward is ``torch.autograd.grad`` (no accumulation into ``.grad``), with a fixed random output gradient.
    """
    unsupported = _unsupported_errors()
    try:
        out = forward()
    except unsupported as error:
        pytest.skip(f"{provider} does not handle this input: {error}")
    grad_out = torch.randn_like(out)
    del out
    targets = list(grad_targets)

    def backward(output: torch.Tensor) -> None:
        torch.autograd.grad(output, targets, grad_out)

    copy_gbps = copy_bandwidth["copy_gbps"]
    reps = 1
    if ON_GPU:
        reps = max(1, min(MAX_REPS, math.ceil(TARGET_CALL_S * copy_gbps * 1e9 / max(nbytes[pass_], 1))))

    def fwd(count: int = reps) -> None:
        for _ in range(count):
            forward()
        sync()

    def fwdbwd(count: int = reps) -> None:
        for _ in range(count):
            backward(forward())
        sync()

    def bwd_setup(count: int = reps):
        outputs = [forward() for _ in range(count)]
        sync()
        return (outputs,), {}

    def bwd(outputs: list[torch.Tensor]) -> None:
        while outputs:
            backward(outputs.pop())
        sync()

    # Warm-up outside the timer (Triton autotuning, inductor compilation), then one call for peak memory.
    if pass_ == "bwd":
        bwd(*bwd_setup(1)[0])
        (outputs,), _ = bwd_setup(1)
        base = reset_peak()
        bwd(outputs)
    else:
        target = fwd if pass_ == "fwd" else fwdbwd
        target(1)
        base = reset_peak()
        target(1)
    memory = peak_info(base)

    benchmark.group = f"{op}-{shape}-{DTYPE_NAME}-{pass_}"
    if pass_ == "bwd":
        benchmark.pedantic(bwd, setup=bwd_setup, rounds=ROUNDS, warmup_rounds=WARMUP)
    else:
        benchmark.pedantic(fwd if pass_ == "fwd" else fwdbwd, rounds=ROUNDS, warmup_rounds=WARMUP)

    seconds = median_seconds(benchmark)
    per_op = seconds / reps if seconds else None
    gbps = nbytes[pass_] / per_op / 1e9 if per_op else None
    pass_flops = (flops or {}).get(pass_)
    benchmark.extra_info.update({"kind": "op", "op": op, "shape": shape, "pass": pass_, "provider": provider})
    benchmark.extra_info.update(
        reps=reps,
        ms=per_op * 1e3 if per_op else None, bytes=nbytes[pass_], gbps=gbps, copy_gbps=copy_gbps,
        frac_copy_bw=gbps / copy_gbps if gbps else None, flops=pass_flops,
        tflops=pass_flops / per_op / 1e12 if per_op and pass_flops else None, **memory, **info,
    )
    SESSION.setdefault("ops_timed", 0)
    SESSION["ops_timed"] += 1


@functools.cache
def _unsupported_errors() -> tuple:
    """Errors meaning 'this provider does not handle this input' (skip), not 'the benchmark is broken'."""
    errors: list = [NotImplementedError]
    if ON_GPU:
        try:
            from hst_fast.kernels._compat import UnsupportedInput

            errors.append(UnsupportedInput)
        except ImportError:
            pass
    return tuple(errors)
