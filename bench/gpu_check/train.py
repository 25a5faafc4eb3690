"""Phase 5: ViT-B HST train steps against the released-code-equivalent eager model.

Modes, built by ``bench/test_bench_train_step.py``: ``reference`` (``kernel_backend='torch'``, eager ViT attention:
the released code's computation), ``faithful`` (hst_fast as shipped: ``kernel_backend='auto'``, MetaT + LN-tuning)
and ``frozen`` (``backbone_grad='none'``), at detection 1024 px B=2 and classification 224 px B=128 (``--dry-run``:
ViT-Ti at the reduced sizes). A step is forward, backward and AdamW under bf16 autocast. 'auto' follows the dispatch
table the performance phase wrote. Records img/s (median step time, with its spread) and peak memory, in the suite's
train-step schema.
"""
from __future__ import annotations

import gc
import os

import torch

from bench import _harness as h
from bench import test_bench_train_step as train_step
from bench.gpu_check import correctness
from hst_fast.backend import DEFAULT_DISPATCH_TABLE, DISPATCH_TABLE_ENV

MODES = ("reference", "faithful", "frozen")
TASKS = ("det", "cls")
ROUNDS, WARMUP = (6, 2) if h.ON_GPU else (1, 1)


def measure(task: str, mode: str) -> dict:
    """One benchmark record: ``ROUNDS`` timed steps after ``WARMUP`` (autotuning, optimizer state), peak memory."""
    batch, image = h.batch_and_image(task)
    step, info = train_step.make_step(task, mode, batch, image)
    for _ in range(WARMUP):
        step()
    base = h.reset_peak()
    if h.ON_GPU:  # CPU has no allocator peak to read
        step()
    memory = h.peak_info(base)
    watch = h.Stopwatch()
    for _ in range(ROUNDS):
        with watch:
            step()
    timing = h.spread(watch.seconds())
    return {"name": f"train_step-{task}-{info['model']}-{image}px-B{batch}-{h.DTYPE_NAME}-{mode}",
            "stats": {"median": timing["ms"] / 1e3},
            "extra_info": {"kind": "train_step", "config": task, "mode": mode, "provider": mode, **timing,
                           "img_per_s": batch / timing["ms"] * 1e3, **info, **memory}}


def run(ctx, out: dict, clock) -> None:
    table = ctx.data["phases"].get("performance", {}).get("dispatch_table")
    if table:
        os.environ[DISPATCH_TABLE_ENV] = table
    out.update(dispatch_table=os.environ.get(DISPATCH_TABLE_ENV, str(DEFAULT_DISPATCH_TABLE)), rounds=ROUNDS,
               warmup_rounds=WARMUP, errors=[], skipped=[])
    records = {}
    for task in TASKS:
        for mode in MODES:
            if clock() <= 0:
                out["skipped"].append(f"{task} {mode}")
                continue
            try:
                records[task, mode] = measure(task, mode)
                ctx.data["benchmarks"].append(records[task, mode])
            except Exception as error:  # noqa: BLE001 - out of memory, ...: recorded, the phase goes on
                out["errors"].append({"task": task, "mode": mode, "error": correctness.short_error(error)})
            gc.collect()
            if h.ON_GPU:
                torch.cuda.empty_cache()
    ratios = []
    for (task, mode), record in records.items():
        reference = records.get((task, "reference"))
        if mode != "reference" and reference:
            speed = reference["extra_info"]["ms"] / record["extra_info"]["ms"]
            memory = record["extra_info"]["peak_mem_mb"], reference["extra_info"]["peak_mem_mb"]
            share = f"{memory[0] / memory[1]:.0%} memory" if None not in memory else "memory n/a"
            ratios.append(f"{task} {mode} {speed:.2f}x, {share}")
    out["summary"] = f"{len(records)} steps timed ({'; '.join(ratios) or 'no ratios'}), {len(out['errors'])} errors"
