"""Phase 4: Triton vs the eager reference vs ``torch.compile`` of it, per op, shape and pass, and the side block.

Each repetition runs with the L2 flushed (``h.OpPasses.time``: ``h.L2Flush`` and ``h.Stopwatch``). Records go to
the JSON's ``benchmarks`` list in the schema of the pytest suite's ``extra_info``, so ``bench.report`` reads them:
ms (median) and spread, GB/s and share of the copy bandwidth, TFLOP/s where the bench module has a FLOP model,
peak memory. Reference and Triton run first, torch.compile last (its compilations take most of the time, so a short
budget cuts them first). Then a torch.profiler breakdown of one stage-1 side block's fwd+bwd (Triton), the
autotuners' choices, and the dispatch table for ``kernel_backend='auto'`` (written at once, so the train phase's
models follow it).
"""
from __future__ import annotations

import time
from collections import defaultdict

import torch

from bench import _harness as h
from bench.gpu_check import cases as c
from bench.gpu_check import correctness, outputs, sweep

PROVIDER_GROUPS = (("reference", "triton"), ("compile",))
TARGETS = (c.BLOCK, *c.OPS)
TOP_KERNELS = 20


def time_case(case: c.Case, provider: str, compile_options: dict, copy_gbps: float) -> list[dict]:
    """One benchmark record per pass of ``case`` run by ``provider``."""
    fn, args = c.implementation(case.op, provider, compile_options), case.args()
    passes = h.OpPasses(lambda: fn(*args), h.grad_targets(args))
    records = []
    for pass_ in h.PASSES:
        memory = passes.peak_memory(pass_)
        timing = h.spread(passes.time(pass_))
        figures = h.op_figures(timing["ms"], pass_, case.nbytes(), case.flops(), copy_gbps)
        info = {"kind": "op", "op": case.op, "shape": case.shape, "pass": pass_, "provider": provider, **timing,
                **figures, **memory, **case.info}
        records.append({"name": f"{case.case_id}-{h.DTYPE_NAME}-{pass_}-{provider}", "group": f"{case.op}-{pass_}",
                        "stats": {"median": timing["ms"] / 1e3}, "extra_info": info})
    return records


def profile_block(case: c.Case) -> dict:
    """Kernels (GPU) or operators (CPU) of one warmed-up fwd+bwd of the Triton side block, by self time."""
    block, args = c.implementation(c.BLOCK, "triton", {}), case.args()
    passes = h.OpPasses(lambda: block(*args), h.grad_targets(args))
    passes.run("fwdbwd")
    activities = [torch.profiler.ProfilerActivity.CPU]
    if h.ON_GPU:
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as profiler:
        passes.run("fwdbwd")
        h.sync()
    attr = "self_device_time_total" if h.ON_GPU else "self_cpu_time_total"
    rows = [(event.key, event.count, getattr(event, attr, 0) / 1e3) for event in profiler.key_averages()]
    rows = sorted((row for row in rows if row[2] > 0), key=lambda row: -row[2])
    total = sum(row[2] for row in rows)
    return {"case": case.case_id, "time": "device (CUDA kernels)" if h.ON_GPU else "CPU (operators)",
            "total_ms": total, "top": [{"name": name, "calls": calls, "self_ms": ms, "share": ms / total}
                                       for name, calls, ms in rows[:TOP_KERNELS]]}


def autotune_choices() -> dict:
    """{op: {kernel: [{key, config}]}}: what each autotuner chose, per tuning key, in this process."""
    return {op: {name: [{"key": [str(k) for k in key], **sweep.config_info(config)}
                        for key, config in tuner.cache.items()] for name, tuner in sweep.autotuners(op).items()}
            for op in c.OPS}


def dispatch_entry(records: list[dict]) -> dict:
    """The dispatch table's entry for this GPU: per op and width, 'triton' where the kernel's fwd+bwd, summed over
    the shapes of that width, measured faster than the reference's (``hst_fast.backend.load_dispatch``)."""
    times: dict = defaultdict(dict)
    for record in records:
        info = record["extra_info"]
        if info["op"] in c.OPS and info["pass"] == "fwdbwd" and info["provider"] in ("reference", "triton"):
            times[(info["op"], info["dim"], info["shape"])][info["provider"]] = info["ms"]
    evidence: dict = defaultdict(lambda: defaultdict(lambda: {"triton_ms": 0.0, "torch_ms": 0.0, "shapes": []}))
    for (op, width, shape), by_provider in times.items():
        if len(by_provider) == 2:
            entry = evidence[op][str(width)]
            entry["triton_ms"] += by_provider["triton"]
            entry["torch_ms"] += by_provider["reference"]
            entry["shapes"].append(shape)
    ops = {op: {width: "triton" if e["triton_ms"] <= e["torch_ms"] else "torch" for width, e in widths.items()}
           for op, widths in evidence.items()}
    return {"pass": "fwdbwd", "ops": ops, "evidence": evidence}


def run(ctx, out: dict, clock) -> None:
    env = ctx.data["phases"]["environment"]
    out.update(compile_options=ctx.compile_options, **h.timing_info(), rounds=h.ROUNDS, warmup_rounds=h.WARMUP,
               errors=[], skipped=[])
    records = ctx.data["benchmarks"]
    for providers in PROVIDER_GROUPS:
        for target in TARGETS:
            for case in c.cases(target):
                for provider in providers:
                    if clock() <= 0:
                        out["skipped"].append(f"{case.case_id} {provider}")
                        continue
                    try:
                        records.extend(time_case(case, provider, ctx.compile_options, env["copy_gbps"]))
                    except Exception as error:  # noqa: BLE001 - recorded, the phase goes on
                        out["errors"].append({"case": case.case_id, "provider": provider,
                                              "error": correctness.short_error(error)})
    start = time.perf_counter()
    stage1 = next(case for case in c.cases(c.BLOCK) if case.info["config"] == "det" and case.info["stage"] == 1)
    attempt(out, "profile", lambda: profile_block(stage1))
    attempt(out, "autotune_choices", autotune_choices)
    attempt(out, "dispatch", lambda: dispatch_entry([r for r in records if r["extra_info"].get("kind") == "op"]))
    if "dispatch" in out:
        attempt(out, "dispatch_table", lambda: str(outputs.write_dispatch(
            ctx.out_dir / "dispatch.json", env["device_name"], {**out["dispatch"], "source": f"{ctx.slug}.json"})))
    out["extras_seconds"] = time.perf_counter() - start
    choices = [choice for widths in out.get("dispatch", {}).get("ops", {}).values() for choice in widths.values()]
    out["summary"] = (f"{len(records)} timings, {len(out['errors'])} errors, {len(out['skipped'])} skipped; dispatch: "
                      f"{choices.count('triton')} (op, width) Triton, {choices.count('torch')} reference")


def attempt(out: dict, key: str, make) -> None:
    """``out[key] = make()``; on an error, records it under ``errors`` instead."""
    try:
        out[key] = make()
    except Exception as error:  # noqa: BLE001 - one failed extra does not lose the timings
        out["errors"].append({"step": key, "error": correctness.short_error(error)})
