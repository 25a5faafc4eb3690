"""``python -m bench.gpu_check``: the GPU check (phases in the package docstring; how to run it in bench/README.md).

    PYTHONPATH=. python -m bench.gpu_check --out bench/results     # on the GPU machine, from the checkout's root
    python -m bench.gpu_check --dry-run [--out DIR]                 # CPU, Triton's interpreter, small shapes

Exit status: 0 when every phase ran in full and every check passed; 1 when a check failed or a phase raised; 2 when
the budget cut something short (what ran is in the JSON).
"""
from __future__ import annotations

import argparse
import datetime
import importlib
import os
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.gpu_check.budget import Budget, BudgetExceeded
from bench.gpu_check.shim import alias_kernels

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "bench" / "results"
FORMAT = "hst_fast gpu_check v1"
# Phase -> share of the budget (time a phase leaves unused goes to the later ones). Triton's compilations dominate
# correctness (autotuning every width) and the sweep; torch.compile's the performance phase, which runs it last.
PHASES = {"environment": 0.02, "correctness": 0.33, "sweep": 0.17, "performance": 0.30, "train": 0.15, "outputs": 0.03}
ALWAYS = ("environment", "outputs")
SKIPPED = "skipped"  # the start of an item's status when the budget left it out


@dataclass
class Context:
    """What the phases share: options, where results go, and the JSON being built (``data``)."""

    dry_run: bool
    out_dir: Path
    device_name: str
    slug: str
    compile_options: dict[str, Any]
    kernels_alias: str | None
    data: dict[str, Any] = field(default_factory=dict)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_check", description=__doc__.split("\n")[0])
    parser.add_argument("--out", help="output folder (default: bench/results; with --dry-run a new temporary folder)")
    parser.add_argument("--budget-s", type=float, default=480.0, help="global deadline in seconds (default 480)")
    parser.add_argument("--dry-run", action="store_true",
                        help="CPU, Triton's interpreter, small shapes: tests that the check runs (never bench/results)")
    parser.add_argument("--phases", default=",".join(PHASES),
                        help=f"comma-separated subset of {','.join(PHASES)} ({' and '.join(ALWAYS)} always run)")
    args = parser.parse_args(argv)
    requested = set(args.phases.split(","))
    if requested - set(PHASES):
        parser.error(f"unknown phases {sorted(requested - set(PHASES))}")
    args.phases = [p for p in PHASES if p in requested | set(ALWAYS)]
    args.out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="gpu_check-")) if args.dry_run else RESULTS
    if args.dry_run and args.out.resolve().is_relative_to(RESULTS.resolve()):
        parser.error(f"--dry-run never writes to {RESULTS}")
    return args


def prepare_environment(dry_run: bool) -> str | None:
    """Environment the harness and Triton read at import, then the ``hst_fast.kernels`` alias; before any import of
    torch or hst_fast."""
    os.environ["HST_BENCH_DTYPE"] = "bf16"
    if dry_run:
        # fp32: Triton's interpreter rounds fp32 -> bf16 toward zero (the GPU to nearest), which doubles bf16 errors
        os.environ.update(CUDA_VISIBLE_DEVICES="", TRITON_INTERPRET="1", HST_BENCH_SIZE="tiny", HST_BENCH_DTYPE="fp32")
    folder = alias_kernels()
    return str(folder) if folder else None


def incomplete_and_failed(data: dict) -> tuple[list[str], list[str]]:
    """(what did not run in full, what failed), from the phases' records."""
    incomplete, failed = [], []
    for name, phase in data["phases"].items():
        if phase["status"] == "error":
            failed.append(f"{name}: {phase.get('error')}")
        elif phase["status"] != "done":
            incomplete.append(f"{name}: {phase['status']}")
        if phase.get("failures"):
            failed.append(f"{name}: {phase['failures']} failed")
        if phase.get("errors"):
            failed.append(f"{name}: {len(phase['errors'])} errors")
        skipped = [item for key in ("cases", "runs") for item in phase.get(key, [])
                   if str(item.get("status", "")).startswith(SKIPPED)] + phase.get("skipped", [])
        if skipped:
            incomplete.append(f"{name}: {len(skipped)} items skipped for the budget")
    return incomplete, failed


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    kernels_alias = prepare_environment(args.dry_run)
    import torch

    from bench import _harness as h
    from bench.gpu_check import outputs
    from bench.gpu_check.correctness import short_error

    args.out.mkdir(parents=True, exist_ok=True)
    if not h.ON_GPU:  # as the bench suite on CPU: two OpenMP threads on a busy small machine are far slower than one
        torch.set_num_threads(1)
    device_name = torch.cuda.get_device_name() if h.ON_GPU else "cpu"
    compile_options = {"mode": "default", "dynamic": None, **({"backend": "eager"} if args.dry_run else {})}
    ctx = Context(args.dry_run, args.out, device_name, outputs.slug(device_name) + ("-dry-run" if args.dry_run else ""),
                  compile_options, kernels_alias)
    ctx.data.update(format=FORMAT, datetime=datetime.datetime.now().isoformat(timespec="seconds"), argv=sys.argv,
                    budget_s=args.budget_s, dry_run=args.dry_run, phases={}, benchmarks=[], machine_info={})
    json_path = args.out / f"{ctx.slug}.json"
    budget = Budget(args.budget_s, {p: PHASES[p] for p in args.phases}, reserve_s=min(15.0, 0.05 * args.budget_s))
    print(f"gpu_check: {device_name}, budget {args.budget_s:.0f} s, results in {args.out}", flush=True)
    expired = False
    for index, name in enumerate(args.phases, 1):
        out = ctx.data["phases"][name] = {"status": "running"}
        start, cpu_start = time.monotonic(), time.process_time()
        expired = expired or budget.remaining() <= budget.reserve_s
        try:
            if expired and name != "outputs":
                out["status"] = "skipped (global deadline)"
            else:
                budget.arm(reserve=name != "outputs")
                importlib.import_module(f"bench.gpu_check.{name}").run(ctx, out, budget.phase_clock(name))
                out["status"] = "done"
        except BudgetExceeded as error:
            expired = True
            out.update(status="interrupted", error=str(error))
        except Exception as error:  # noqa: BLE001 - a broken phase must not lose the others' results
            out.update(status="error", error=short_error(error), traceback=traceback.format_exc(limit=8))
        finally:
            budget.disarm()
        out["seconds"], out["cpu_seconds"] = time.monotonic() - start, time.process_time() - cpu_start
        if name == "environment":  # where bench.report reads the device (as in the suite's JSON)
            ctx.data["machine_info"] = {"hst_fast": out, "cpu": {"brand_raw": out.get("platform")}}
        outputs.write_json(json_path, ctx.data)
        print(f"[{index}/{len(args.phases)}] {name}: {out['status']}, {out['seconds']:.1f} s "
              f"({out['cpu_seconds']:.1f} s CPU): "
              f"{out.get('summary') or out.get('error', '')}", flush=True)
    incomplete, failed = incomplete_and_failed(ctx.data)
    status = 1 if failed else 2 if incomplete else 0
    ctx.data["result"] = {"exit_status": status, "failed": failed, "incomplete": incomplete,
                          "elapsed_s": budget.elapsed()}
    outputs.write_json(json_path, ctx.data)
    print(f"gpu_check: exit {status} after {budget.elapsed():.0f} s; failed: {failed or 'nothing'}; "
          f"incomplete: {incomplete or 'nothing'}", flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
