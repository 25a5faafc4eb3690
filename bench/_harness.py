"""Shared machinery of the benchmark suite and ``bench.gpu_check``: device and size mode, shapes, providers,
timing (L2 flushed between repetitions), memory.

Imports torch and ``hst_fast.constants`` (and, lazily, timm/hst_fast's kernels/xformers/pynvml): no mmengine,
mmdet or matplotlib, so the suite runs on a bare GPU box and collects on a CPU-only CI machine.

Size mode (``HST_BENCH_SIZE``): ``full`` (default on GPU) runs every side stage of the classification
config (ViT-B, 224px, B=128) and the detection config (ViT-B, 1024px, B=2); ``reduced`` (default on CPU)
keeps the widths, heads and key counts but shrinks batch and image, so a 2-core machine runs the suite
in minutes; ``tiny`` (``bench.gpu_check --dry-run``) keeps stage 1 only, at 32 px (cls) and 64 px (det).
Dtype (``HST_BENCH_DTYPE``): ``bf16`` on GPU, ``fp32`` on CPU (see ``DTYPE_NAME``).
"""
from __future__ import annotations

import functools
import importlib
import importlib.util
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
import torch

from hst_fast.constants import STAGE_STRIDES, TASK_PRESETS

ON_GPU = torch.cuda.is_available()
DEVICE = torch.device("cuda" if ON_GPU else "cpu")
SIZE = os.environ.get("HST_BENCH_SIZE", "full" if ON_GPU else "reduced")
if SIZE not in ("full", "reduced", "tiny"):
    raise ValueError(f"HST_BENCH_SIZE must be 'full', 'reduced' or 'tiny', got {SIZE!r}")
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

# Timing: rounds of one op call each (after warm-up rounds), the L2 cache flushed before every round.
ROUNDS, WARMUP = (30, 5) if ON_GPU else (1, 0) if SIZE == "tiny" else (3, 1)
TRAIN_ROUNDS, TRAIN_WARMUP = (10, 2) if ON_GPU else (2, 1)

SESSION: dict[str, Any] = {}  # filled by fixtures, read by the machine-info hook


# ----------------------------------------------------------------------------------------- shapes
# (batch, image px) per task preset (hst_fast.constants.TASK_PRESETS: widths, heads, meta tokens) and size mode:
# the paper's classification (VTAB-1k, 224 px) and detection (COCO, 1024 px) inputs; ViT-B width and patch 16.
SIZES = {"cls": {"full": (128, 224), "reduced": (2, 64), "tiny": (2, 32)},
         "det": {"full": (2, 1024), "reduced": (1, 128), "tiny": (1, 64)}}
TINY_STAGES = (1,)  # the side stages the tiny size mode keeps: Triton's interpreter is slow at the wide ones
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


def batch_and_image(config: str, size: str = SIZE) -> tuple[int, int]:
    return SIZES[config][size]


def stage_shapes(size: str = SIZE) -> list[StageShape]:
    """Every side stage of both task presets (``TINY_STAGES`` in the tiny mode), at size mode ``size``."""
    shapes = []
    for config, preset in TASK_PRESETS.items():
        batch, image = batch_and_image(config, size)
        grid, keys = image // PATCH, preset["num_meta_tokens"] + 1
        for s, (dim, heads, stride) in enumerate(zip(preset["side_dims"], preset["side_heads"], STAGE_STRIDES)):
            if size != "tiny" or s + 1 in TINY_STAGES:
                side = image // stride
                shapes.append(StageShape(config, s + 1, batch, (side, side), dim, heads, keys, (grid, grid)))
    return shapes


def vit_token_shapes(size: str = SIZE) -> list[tuple[str, int, int, int]]:
    """(config, B, tokens, D) of the ViT blocks' LayerNorm inputs: [meta, cls, patches]."""
    shapes = []
    for config, preset in TASK_PRESETS.items():
        batch, image = batch_and_image(config, size)
        shapes.append((config, batch, preset["num_meta_tokens"] + 1 + (image // PATCH) ** 2, VIT_DIM))
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
def compiled(fn: Callable, mode: str = COMPILE_MODE, dynamic: bool | None = False, backend: str = "inductor"):
    """``torch.compile(fn, mode=mode, dynamic=dynamic, backend=backend)``, one wrapper per function and options
    (the suite: ``mode='max-autotune-no-cudagraphs', dynamic=False``)."""
    set_compile_limits()
    return torch.compile(fn, mode=mode, dynamic=dynamic, backend=backend)


def compiled_module(module: torch.nn.Module) -> Callable:
    """``torch.compile`` of a module, same mode as ``compiled``; each module instance compiles its own graph."""
    set_compile_limits()
    return torch.compile(module, mode=COMPILE_MODE, dynamic=False)


def kernel_op(op: str) -> Callable:
    """The public Triton op ``hst_fast.kernels.<op>.<op>`` (imports Triton)."""
    return getattr(importlib.import_module(f"hst_fast.kernels.{op}"), op)


def triton_op(op: str) -> Callable:
    """``kernel_op(op)``; skips the test if it cannot be imported."""
    try:
        return kernel_op(op)
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


def grad_targets(args: Sequence[Any]) -> list[torch.Tensor]:
    """The tensors among an op's arguments that require a gradient."""
    return [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]


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


# ----------------------------------------------------------------------------------------- timing
FLUSH_MIN_BYTES = 256 << 20  # the cache buffer of triton.testing.do_bench


def l2_flush_plan() -> tuple[int, str]:
    """(bytes ``L2Flush`` zeroes, how): max(256 MiB, 2 x L2) on GPU, as ``triton.testing.do_bench``; 32 MiB (past a
    typical last-level cache) on CPU."""
    if not ON_GPU:
        nbytes, where = 32 << 20, "CPU"
    else:
        l2 = torch.cuda.get_device_properties(DEVICE).L2_cache_size
        nbytes, where = max(FLUSH_MIN_BYTES, 2 * l2), f"L2 {l2 / 2**20:.0f} MiB"
    return nbytes, f"zero_ of a {nbytes >> 20} MiB buffer before every repetition, untimed ({where})"


class L2Flush:
    """Evicts the cache before a timed repetition (``l2_flush_plan``). Create it after measuring peak memory:
    its buffer is allocated while it lives."""

    def __init__(self) -> None:
        nbytes, self.method = l2_flush_plan()
        self.buffer = torch.empty(nbytes, dtype=torch.uint8, device=DEVICE)

    def __call__(self) -> None:
        self.buffer.zero_()


class Stopwatch:
    """Times each ``with stopwatch:`` block. On GPU, CUDA events around the enqueued work (device time; the
    untimed flush before it keeps the device busy while the host launches, as in ``do_bench``); on CPU,
    ``time.perf_counter``."""

    method = "CUDA events around each repetition" if ON_GPU else "time.perf_counter around each repetition"

    def __init__(self) -> None:
        self._marks: list[tuple[Any, Any]] = []

    @staticmethod
    def _mark() -> Any:
        if not ON_GPU:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def __enter__(self) -> None:
        self._start = self._mark()

    def __exit__(self, *exc) -> None:
        self._marks.append((self._start, self._mark()))

    def seconds(self) -> list[float]:
        sync()
        return [start.elapsed_time(end) / 1e3 if ON_GPU else end - start for start, end in self._marks]


def spread(seconds: Sequence[float]) -> dict[str, Any]:
    """Median and spread of repetition times, in ms: ``ms`` (median), quartiles ``q1_ms``/``q3_ms``, ``iqr_ms``,
    ``min_ms``, ``max_ms``, and the count ``n``."""
    ms = sorted(1e3 * t for t in seconds)
    q1, _, q3 = statistics.quantiles(ms, n=4, method="inclusive") if len(ms) > 1 else ms * 3
    return {"ms": statistics.median(ms), "q1_ms": q1, "q3_ms": q3, "iqr_ms": q3 - q1, "min_ms": ms[0],
            "max_ms": ms[-1], "n": len(ms)}


class OpPasses:
    """The timed passes of one op on fixed inputs.

    forward(): runs the op (grad mode on, so it saves what its backward needs: the forward of a training step);
    grad_targets: every tensor that gets a gradient (inputs and parameters).
    - ``fwd``: forward only.
    - ``bwd``: backward only; its forward runs untimed before (``prepare``).
    - ``fwdbwd``: forward and backward.
    Backward is ``torch.autograd.grad`` (no accumulation into ``.grad``), with a fixed random output gradient.
    The first forward (in the constructor) triggers Triton autotuning and compilation.
    """

    def __init__(self, forward: Callable[[], torch.Tensor], grad_targets: Sequence[torch.Tensor]) -> None:
        self.forward, self.targets = forward, list(grad_targets)
        self.grad_out = torch.randn_like(forward())

    def prepare(self, pass_: str) -> tuple:
        """The untimed part of a repetition: the forward whose output ``bwd`` differentiates."""
        return (self.forward(),) if pass_ == "bwd" else ()

    def run(self, pass_: str, *prepared: torch.Tensor) -> None:
        if pass_ == "fwd":
            self.forward()
        else:
            torch.autograd.grad(prepared[0] if pass_ == "bwd" else self.forward(), self.targets, self.grad_out)

    def peak_memory(self, pass_: str) -> dict[str, Any]:
        """Peak memory of one warmed-up repetition (``peak_info``; on CPU, which has none, nothing runs)."""
        if not ON_GPU:
            return peak_info(0)
        self.run(pass_, *self.prepare(pass_))
        prepared = self.prepare(pass_)
        base = reset_peak()
        self.run(pass_, *prepared)
        return peak_info(base)

    def time(self, pass_: str, rounds: int = ROUNDS, warmup: int = WARMUP) -> list[float]:
        """Seconds per repetition of ``pass_``, the L2 flushed before each (``L2Flush``, ``Stopwatch``)."""
        flush, watch = L2Flush(), Stopwatch()
        for _ in range(warmup + rounds):
            prepared = self.prepare(pass_)
            flush()
            with watch:
                self.run(pass_, *prepared)
        return watch.seconds()[warmup:]


def timing_info() -> dict[str, str]:
    """How repetitions are timed (``Stopwatch``, ``L2Flush``)."""
    return {"timer": Stopwatch.method, "l2_flush": l2_flush_plan()[1]}


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
    """Times one pass of one op (``OpPasses``) and records ``extra_info``.

    nbytes / flops: {pass: bytes that must move / model FLOPs} from the op's byte model. Each round is one call,
    the L2 cache flushed in the untimed set-up before it; ``ms`` and its spread are the device time of the calls
    (``Stopwatch``). pytest-benchmark's own statistics are wall-clock rounds: they also hold the host's wait for the
    set-up's device work (the flush; bwd: the forward) and the synchronization.
    """
    try:
        passes = OpPasses(forward, grad_targets)
    except _unsupported_errors() as error:
        pytest.skip(f"{provider} does not handle this input: {error}")
    memory = passes.peak_memory(pass_)  # after a warm-up call (Triton autotuning, inductor compilation)
    flush, watch = L2Flush(), Stopwatch()

    def setup():
        prepared = passes.prepare(pass_)
        flush()
        return prepared, {}

    def timed(*prepared: torch.Tensor) -> None:
        with watch:
            passes.run(pass_, *prepared)
        sync()

    benchmark.group = f"{op}-{shape}-{DTYPE_NAME}-{pass_}"
    benchmark.pedantic(timed, setup=setup, rounds=ROUNDS, warmup_rounds=WARMUP)
    timing = spread(watch.seconds()[-ROUNDS:])
    benchmark.extra_info.update({"kind": "op", "op": op, "shape": shape, "pass": pass_, "provider": provider})
    benchmark.extra_info.update(op_figures(timing["ms"], pass_, nbytes, flops, copy_bandwidth["copy_gbps"]))
    benchmark.extra_info.update(**timing, **timing_info(), **memory, **info)
    SESSION.setdefault("ops_timed", 0)
    SESSION["ops_timed"] += 1


def op_figures(ms: float, pass_: str, nbytes: dict[str, int], flops: dict[str, int] | None,
               copy_gbps: float) -> dict[str, Any]:
    """Bytes, GB/s, fraction of the copy bandwidth, FLOPs and TFLOP/s of one pass taking ``ms``."""
    seconds = ms / 1e3
    gbps = nbytes[pass_] / seconds / 1e9 if seconds else None
    pass_flops = (flops or {}).get(pass_)
    return {"bytes": nbytes[pass_], "gbps": gbps, "copy_gbps": copy_gbps, "frac_copy_bw": gbps / copy_gbps if gbps
            else None, "flops": pass_flops, "tflops": pass_flops / seconds / 1e12 if pass_flops and seconds else None}


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
