"""Phase 1: the machine. Library versions, GPU name and capability, SM count, L2 size, NVML (driver, clocks, power,
MIG mode: ``bench.conftest.nvml_info``), the device copy bandwidth (1 GiB device-to-device, read + write: what the
memory-bound kernels are measured against) and a bf16 GEMM's TFLOP/s (what side_ffn's TFLOP/s are measured against).
"""
from __future__ import annotations

import platform
import sys

import torch

from bench import _harness as h
from bench.conftest import device_info

GEMM_N, GEMM_ROUNDS, GEMM_WARMUP = (8192, 10, 3) if h.ON_GPU else (256, 3, 1)


def gemm_peak() -> dict:
    """TFLOP/s of a square bf16 ``torch.matmul`` (cuBLAS on GPU): the tensor-core rate this machine reaches."""
    a, b = (torch.randn(GEMM_N, GEMM_N, device=h.DEVICE).to(torch.bfloat16) for _ in range(2))
    watch = h.Stopwatch()
    for _ in range(GEMM_WARMUP + GEMM_ROUNDS):
        with watch:
            a @ b
    timing = h.spread(watch.seconds()[GEMM_WARMUP:])
    return {"gemm_tflops": 2 * GEMM_N**3 / timing["ms"] / 1e9, "gemm_ms": timing["ms"], "gemm_iqr_ms": timing["iqr_ms"],
            "gemm_method": f"torch.matmul of two bf16 [{GEMM_N}, {GEMM_N}], median of {GEMM_ROUNDS}"}


def run(ctx, out: dict, clock) -> None:
    h.SESSION.update(h.measure_copy_bandwidth())
    out.update(device_info())
    import hst_fast.kernels

    out.update(
        device_name=ctx.device_name, slug=ctx.slug, dry_run=ctx.dry_run, python=sys.version.split()[0],
        platform=platform.platform(), compile_mode=f"torch.compile({ctx.compile_options})",
        kernels_module=hst_fast.kernels.__file__, kernels_aliased=ctx.kernels_alias,
        matmul_allow_tf32=torch.backends.cuda.matmul.allow_tf32, **h.timing_info(), **gemm_peak(),
    )
    if h.ON_GPU:
        out["l2_cache_bytes"] = torch.cuda.get_device_properties(h.DEVICE).L2_cache_size
    nvml = out["nvml"]
    clocks = f"SM {nvml.get('sm_clock_mhz')}/{nvml.get('max_sm_clock_mhz')} MHz, MIG {nvml.get('mig_mode')}"
    out["summary"] = (f"{ctx.device_name}: copy {out['copy_gbps']:.0f} GB/s, bf16 GEMM {out['gemm_tflops']:.1f} TFLOP/s"
                      f", torch {out['torch']}, triton {out['triton']}" + (f", {clocks}" if nvml["available"] else ""))
