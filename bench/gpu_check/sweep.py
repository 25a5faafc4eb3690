"""Phase 3: every config of every Triton autotuner of the ops, pinned in turn, at three widths (``SWEEP_STAGES``).

Each config runs the public op forward + backward (the op's other autotuned kernels keep their tuned choice), is
checked against the fp32 reference as in ``correctness`` and timed (fwd+bwd, L2 flushed). A config may fail to
compile or launch (e.g. it needs more shared memory than the GPU has, where the autotuner's pruning would drop it):
recorded, not a failure. One that runs and fails the check is.
"""
from __future__ import annotations

import contextlib
import importlib
import time

from bench import _harness as h
from bench.gpu_check import cases as c
from bench.gpu_check import correctness

ROUNDS, WARMUP = (5, 1) if h.ON_GPU else (1, 0)


def autotuners(op: str) -> dict:
    """{name: triton.runtime.Autotuner} of the op's kernel module."""
    from triton.runtime import Autotuner

    module = importlib.import_module(f"hst_fast.kernels.{op}")
    return {name: value for name, value in vars(module).items() if isinstance(value, Autotuner)}


@contextlib.contextmanager
def pinned(autotuner, config):
    """``autotuner`` launches ``config`` only. The same with Triton 3.6 and 3.7: ``Autotuner.run`` neither prunes
    nor benchmarks when ``configs`` holds one config, it launches ``configs[0]``; its cache of tuned keys is left
    alone, so the tuned choices are back once the full list is."""
    configs = autotuner.configs
    autotuner.configs = [config]
    try:
        yield
    finally:
        autotuner.configs = configs


def config_info(config) -> dict:
    return {"kwargs": dict(config.kwargs), "num_warps": config.num_warps, "num_stages": config.num_stages}


def run_config(case: c.Case, autotuner, config, args: tuple, references: tuple) -> dict:
    """Checks and times ``case``'s op with ``autotuner`` pinned to ``config``."""
    op = c.implementation(case.op, "triton", {})
    names, torch_bf16, fp32 = references
    with pinned(autotuner, config):
        start = time.perf_counter()
        try:
            triton = c.outputs(op, args)
            h.sync()
        except Exception as error:  # noqa: BLE001 - a config that does not compile or launch is a result
            return {"status": "compile or launch error", "error": correctness.short_error(error)}
        first_call_s = time.perf_counter() - start
        tensors = correctness.compare(names, triton, torch_bf16, fp32)
        timing = h.spread(h.OpPasses(lambda: op(*args), h.grad_targets(args)).time("fwdbwd", ROUNDS, WARMUP))
    failed = [t["tensor"] for t in tensors if not t["pass"]]
    return {"status": "fail" if failed else "pass", "first_call_s": first_call_s, "fwdbwd": timing,
            "score": max(t["score"] for t in tensors), "failed_tensors": failed}


def run(ctx, out: dict, clock) -> None:
    tuners = {op: autotuners(op) for op in c.OPS}
    kernels = {op: {name: [config_info(k) for k in tuner.configs] for name, tuner in by_name.items()}
               for op, by_name in tuners.items()}
    out.update(stages=[list(stage) for stage in c.SWEEP_STAGES], kernels=kernels, runs=[])
    for stage in c.SWEEP_STAGES:
        for op in c.OPS:
            case = next((k for k in c.sweep_cases(op) if (k.info["config"], k.width) == stage), None)
            if case is None:
                continue
            args = references = None
            for name, tuner in tuners[op].items():
                for config in list(tuner.configs):
                    record = {"op": op, "kernel": name, "case": case.case_id, "width": case.width,
                              "config": config_info(config)}
                    out["runs"].append(record)
                    if clock() <= 0:
                        record["status"] = "skipped (phase budget)"
                        continue
                    if references is None:
                        args = case.args()
                        reference = c.implementation(op, "reference", {})
                        names = ["out", *c.gradient_names(op, args)]
                        references = (names, c.outputs(reference, args), c.outputs(reference, c.upcast(args)))
                    record.update(run_config(case, tuner, config, args, references))
    statuses = [r["status"] for r in out["runs"]]
    out["counts"] = {s: statuses.count(s) for s in sorted(set(statuses))}
    out["failures"] = statuses.count("fail")
    tuned = {op: list(names) for op, names in kernels.items() if names}
    out["summary"] = f"{len(statuses)} config runs of {tuned or 'no autotuned kernels'}: {out['counts']}"
