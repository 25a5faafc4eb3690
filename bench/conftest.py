"""Benchmark session set-up: seeding, the device copy-bandwidth fixture, and device info in the JSON.

``pytest bench/ --benchmark-only --benchmark-json bench/results/<gpu>.json`` stores, under
``machine_info["hst_fast"]``, the accelerator (NVML: name, driver, memory, clocks, power), library
versions, the size mode and the copy bandwidth every GB/s figure is compared with.
"""
from __future__ import annotations

import contextlib
import gc
import importlib.metadata
import os
import platform
import random
from typing import Any

import pytest
import torch

from bench import _harness as h


def pytest_configure(config) -> None:
    if not h.ON_GPU:
        # One intra-op thread by default on CPU: on a shared, busy 2-core machine OpenMP's 2 threads made a
        # [512, 32] x [32, 128] matmul 200x slower (30 ms vs 0.15 ms). HST_BENCH_CPU_THREADS overrides.
        torch.set_num_threads(int(os.environ.get("HST_BENCH_CPU_THREADS", "1")))


def pytest_report_header(config) -> str:
    device = torch.cuda.get_device_name() if h.ON_GPU else f"CPU ({platform.processor() or platform.machine()})"
    return f"hst_fast bench: device {device}, size mode {h.SIZE!r} (HST_BENCH_SIZE), dtype {h.DTYPE_NAME}"


@pytest.fixture(autouse=True)
def _seed_and_free():
    random.seed(0)
    torch.manual_seed(0)
    yield
    if h.ON_GPU:  # give the next test the whole device (a full collection takes ~1 s on CPU: skipped there)
        gc.collect()
        torch.cuda.empty_cache()


@pytest.fixture(scope="session")
def copy_bandwidth() -> dict[str, Any]:
    """The device's copy bandwidth (GB/s, read + write) measured once in this session."""
    if "copy_gbps" not in h.SESSION:
        h.SESSION.update(h.measure_copy_bandwidth())
    return dict(h.SESSION)


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def nvml_info() -> dict[str, Any]:
    """Name, driver, memory, clocks and power of the current GPU from nvidia-ml-py; a note when unavailable."""
    if not h.ON_GPU:
        return {"available": False, "note": "no CUDA device: NVML not queried (CPU run)"}
    try:
        import pynvml
    except ImportError:
        return {"available": False, "note": "nvidia-ml-py is not installed (pip install nvidia-ml-py)"}
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as error:  # no driver library, no permission, ...
        return {"available": False, "note": f"nvmlInit failed: {error}"}
    info: dict[str, Any] = {"available": True}
    try:
        handle = _nvml_handle(pynvml)

        def query(key: str, name: str, *args, scale: float | None = None) -> None:
            """``info[key] = pynvml.<name>(*args)``; a note instead where this GPU or pynvml lacks it."""
            try:
                value = getattr(pynvml, name)(*args)
            except (pynvml.NVMLError, AttributeError, IndexError, TypeError) as error:  # e.g. NOT_SUPPORTED
                info[key] = f"unavailable ({error!r})"
                return
            if isinstance(value, bytes):
                value = value.decode()
            if isinstance(value, (tuple, list)):  # (current, pending) modes
                value = value[0]
            info[key] = value * scale if scale is not None and isinstance(value, (int, float)) else value

        sm, mem = pynvml.NVML_CLOCK_SM, pynvml.NVML_CLOCK_MEM
        query("name", "nvmlDeviceGetName", handle)
        query("driver_version", "nvmlSystemGetDriverVersion")
        query("cuda_driver_version", "nvmlSystemGetCudaDriverVersion_v2")
        query("memory_total_mib", "nvmlDeviceGetMemoryInfo", handle)
        if hasattr(info["memory_total_mib"], "total"):
            info["memory_total_mib"] = info["memory_total_mib"].total / 2**20
        query("sm_clock_mhz", "nvmlDeviceGetClockInfo", handle, sm)
        query("mem_clock_mhz", "nvmlDeviceGetClockInfo", handle, mem)
        query("max_sm_clock_mhz", "nvmlDeviceGetMaxClockInfo", handle, sm)
        query("max_mem_clock_mhz", "nvmlDeviceGetMaxClockInfo", handle, mem)
        query("applications_sm_clock_mhz", "nvmlDeviceGetApplicationsClock", handle, sm)
        query("power_draw_w", "nvmlDeviceGetPowerUsage", handle, scale=1e-3)
        query("power_limit_w", "nvmlDeviceGetEnforcedPowerLimit", handle, scale=1e-3)
        query("temperature_c", "nvmlDeviceGetTemperature", handle, pynvml.NVML_TEMPERATURE_GPU)
        query("performance_state", "nvmlDeviceGetPerformanceState", handle)
        query("mig_mode", "nvmlDeviceGetMigMode", handle)
        query("ecc_mode", "nvmlDeviceGetCurrentEccMode", handle)
    except pynvml.NVMLError as error:  # no handle for this device
        info.update(available=False, note=f"NVML device query failed: {error!r}")
    finally:
        pynvml.nvmlShutdown()
    return info


def _nvml_handle(pynvml):
    """The NVML handle of torch's current device, matched by PCI bus id (CUDA_VISIBLE_DEVICES reorders indices)."""
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    domain, bus, device = (getattr(props, name, None) for name in ("pci_domain_id", "pci_bus_id", "pci_device_id"))
    if None not in (domain, bus, device):
        with contextlib.suppress(pynvml.NVMLError):  # fall back to the index below
            return pynvml.nvmlDeviceGetHandleByPciBusId(f"{domain:08x}:{bus:02x}:{device:02x}.0")
    return pynvml.nvmlDeviceGetHandleByIndex(torch.cuda.current_device())


def device_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "device": str(h.DEVICE), "size_mode": h.SIZE, "dtype": h.DTYPE_NAME, "compile_mode": h.COMPILE_MODE,
        "rounds": h.ROUNDS, "warmup_rounds": h.WARMUP, "torch": torch.__version__, "cuda": torch.version.cuda,
        "triton": _version("triton"), "timm": _version("timm"), "xformers": _version("xformers"),
        "pytest_benchmark": _version("pytest-benchmark"), "hst_fast": _version("hst_fast"),
        "cpu_threads": torch.get_num_threads(),
    }
    if h.ON_GPU:
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        info.update(gpu_name=props.name, capability=f"{props.major}.{props.minor}",
                    sm_count=props.multi_processor_count, gpu_memory_mib=props.total_memory / 2**20)
    info["nvml"] = nvml_info()
    info.update({k: v for k, v in h.SESSION.items() if k.startswith("copy_")})
    return info


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["hst_fast"] = device_info()
