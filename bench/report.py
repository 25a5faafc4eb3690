"""Turns a pytest-benchmark JSON of this suite into a markdown summary and PNG plots.

    python -m bench.report bench/results/h100.json [--out DIR] [--no-plots]
    python bench/report.py bench/results/h100.json

Writes ``DIR/<stem>.md`` (device, goals, per-op table, train-step table; also printed), and with matplotlib
installed ``DIR/<stem>-speedup-<op>.png`` (speedup over the reference per op, shape and pass) and
``DIR/<stem>-train-step.png`` (peak memory and throughput per train-step mode). DIR defaults to the JSON's
folder. Only the standard library is needed for the markdown; matplotlib is imported only to plot.
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from pathlib import Path
from typing import Any

OPS = ("layer_norm", "side_attention", "side_ffn", "fg_injection", "side_block")
KERNEL_OPS = OPS[:4]
PASSES = ("fwd", "bwd", "fwdbwd")
PROVIDERS = ("reference", "compile", "xformers", "triton")
# Train-step modes in display order (bench/test_bench_train_step.py); unknown modes sort last.
MODES = ("reference", "faithful", "faithful_ckpt", "frozen", "frozen_cache", "full", "linear", "lora", "convpass")

# The suite's goals (bench/README.md): (name, kind, target).
COPY_BW_GOAL = 0.80
BLOCK_VS_EAGER, BLOCK_VS_COMPILE = 3.0, 1.5
TRAIN_GOALS = {"faithful": (2.0, 0.35), "frozen": (4.0, 0.15)}  # (speedup >=, memory fraction <=) vs reference
# side_ffn at these widths is compute-bound (issue 17): judged by TFLOP/s in bench.gpu_check, not copy bandwidth.
COMPUTE_BOUND_FFN_WIDTHS = (256, 384)


def is_memory_bound(row: dict[str, Any]) -> bool:
    """Whether the copy-bandwidth goal applies to an op row (every op but side_ffn at its widest widths)."""
    width = re.search(r"-d(\d+)", row["shape"])
    return not (row["op"] == "side_ffn" and width and int(width.group(1)) in COMPUTE_BOUND_FFN_WIDTHS)


def load(path: str | Path) -> dict[str, Any]:
    with open(path, encoding="utf-8") as handle:
        data = json.load(handle)
    if "benchmarks" not in data:
        raise ValueError(f"{path} is not a pytest-benchmark JSON (no 'benchmarks' key)")
    return data


def _ms(bench: dict[str, Any]) -> float | None:
    """Milliseconds per op: ``extra_info['ms']``, else pytest-benchmark's median over ``reps``."""
    info = bench.get("extra_info", {})
    if info.get("ms") is not None:
        return float(info["ms"])
    median = (bench.get("stats") or {}).get("median")
    return median * 1e3 / info.get("reps", 1) if median else None


def _order(value: str, known: tuple) -> int:
    return known.index(value) if value in known else len(known)


def op_rows(data: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per op benchmark, with ``speedup`` over the reference of the same op, shape and pass."""
    rows = []
    for bench in data["benchmarks"]:
        info = bench.get("extra_info", {})
        if info.get("kind") != "op":
            continue
        rows.append({
            "op": info["op"], "shape": info["shape"], "pass": info["pass"], "provider": info["provider"],
            "ms": _ms(bench), "gbps": info.get("gbps"), "frac_copy_bw": info.get("frac_copy_bw"),
            "tflops": info.get("tflops"), "peak_mem_mb": info.get("peak_mem_mb"), "name": bench.get("name"),
        })
    reference = {(r["op"], r["shape"], r["pass"]): r["ms"] for r in rows if r["provider"] == "reference"}
    for row in rows:
        ref = reference.get((row["op"], row["shape"], row["pass"]))
        row["speedup"] = ref / row["ms"] if ref and row["ms"] else None
    shape_order = {}
    for row in rows:
        shape_order.setdefault((row["op"], row["shape"]), len(shape_order))
    rows.sort(key=lambda r: (_order(r["op"], OPS), shape_order[(r["op"], r["shape"])], _order(r["pass"], PASSES),
                             _order(r["provider"], PROVIDERS)))
    return rows


def train_rows(data: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per train-step benchmark, with speed and memory relative to the reference mode."""
    rows = []
    for bench in data["benchmarks"]:
        info = bench.get("extra_info", {})
        if info.get("kind") != "train_step":
            continue
        rows.append({
            "config": info["config"], "input": f"{info['config']} {info.get('model', '')} {info.get('image')}px "
            f"B{info.get('batch')}", "mode": info["mode"], "ms": _ms(bench), "img_per_s": info.get("img_per_s"),
            "peak_mem_mb": info.get("peak_mem_mb"), "trainable_params": info.get("trainable_params"),
        })
    reference = {r["input"]: r for r in rows if r["mode"] == "reference"}
    for row in rows:
        ref = reference.get(row["input"])
        row["speedup"] = ref["ms"] / row["ms"] if ref and ref["ms"] and row["ms"] else None
        ref_mem = ref["peak_mem_mb"] if ref else None
        row["mem_frac"] = row["peak_mem_mb"] / ref_mem if ref_mem and row["peak_mem_mb"] is not None else None
    rows.sort(key=lambda r: (r["input"], _order(r["mode"], MODES)))
    return rows


def goals(ops: list[dict[str, Any]], train: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """(goal, measured, status) for each goal of bench/README.md; status 'met', 'missed' or 'no data'."""
    results = []
    for op in KERNEL_OPS:
        fracs = [(r["frac_copy_bw"], r) for r in ops if r["op"] == op and r["provider"] == "triton"
                 and r["frac_copy_bw"] is not None and is_memory_bound(r)]
        goal = f"{op} (Triton) >= {COPY_BW_GOAL:.0%} of copy bandwidth"
        if not fracs:
            results.append((goal, "no Triton timings", "no data"))
            continue
        worst, row = min(fracs, key=lambda item: item[0])
        median = statistics.median(f for f, _ in fracs)
        results.append((goal, f"worst {worst:.0%} ({row['shape']} {row['pass']}), median {median:.0%}",
                        "met" if worst >= COPY_BW_GOAL else "missed"))
    block = {(r["shape"], r["provider"]): r for r in ops if r["op"] == "side_block" and r["pass"] == "fwdbwd"}
    for baseline, target in (("reference", BLOCK_VS_EAGER), ("compile", BLOCK_VS_COMPILE)):
        base = {shape: row["ms"] for (shape, provider), row in block.items() if provider == baseline and row["ms"]}
        ratios = [(base[shape] / row["ms"], shape) for (shape, provider), row in block.items()
                  if provider == "triton" and row["ms"] and shape in base]
        goal = f"side block fwd+bwd (Triton) >= {target:g}x {'eager' if baseline == 'reference' else 'torch.compile'}"
        if not ratios:
            results.append((goal, f"no Triton and {baseline} timings", "no data"))
            continue
        worst, shape = min(ratios)
        results.append((goal, f"worst {worst:.2f}x ({shape})", "met" if worst >= target else "missed"))
    for mode, (speed_target, mem_target) in TRAIN_GOALS.items():
        goal = f"train step {mode} >= {speed_target:g}x reference at <= {mem_target:.0%} of its memory"
        mode_rows = [r for r in train if r["mode"] == mode and r["speedup"] is not None]
        if not mode_rows:
            results.append((goal, "no timings", "no data"))
            continue
        parts, met, known = [], True, True
        for row in mode_rows:
            mem = f"{row['mem_frac']:.0%} memory" if row["mem_frac"] is not None else "memory not recorded"
            parts.append(f"{row['config']}: {row['speedup']:.2f}x, {mem}")
            met &= row["speedup"] >= speed_target and (row["mem_frac"] is None or row["mem_frac"] <= mem_target)
            known &= row["mem_frac"] is not None
        results.append((goal, "; ".join(parts), ("met" if known else "speed met, memory unknown") if met else "missed"))
    return results


def _fmt(value: Any, spec: str) -> str:
    return "" if value is None else format(value, spec)


def markdown(data: dict[str, Any], source: str = "") -> str:
    ops, train = op_rows(data), train_rows(data)
    machine = data.get("machine_info", {})
    info = machine.get("hst_fast", {})
    nvml = info.get("nvml", {})
    device = info.get("gpu_name") or nvml.get("name") or f"CPU ({machine.get('cpu', {}).get('brand_raw', '?')})"
    lines = [f"# hst_fast benchmarks: {device}", ""]
    if source:
        lines += [f"Source: `{source}`, {data.get('datetime', '')}", ""]
    facts = [("size mode", info.get("size_mode")), ("dtype", info.get("dtype")), ("torch", info.get("torch")),
             ("CUDA", info.get("cuda")), ("triton", info.get("triton")), ("driver", nvml.get("driver_version")),
             ("power limit W", nvml.get("power_limit_w")), ("SM clock MHz", nvml.get("sm_clock_mhz")),
             ("copy bandwidth GB/s", _fmt(info.get("copy_gbps"), ".1f")), ("copy method", info.get("copy_method"))]
    lines += [f"- {name}: {value}" for name, value in facts if value not in (None, "")]
    if nvml and not nvml.get("available", False):
        lines.append(f"- NVML: {nvml.get('note', 'unavailable')}")
    lines += ["", "## Goals", ""]
    if info.get("device") == "cpu":
        lines += ["CPU smoke run (reduced shapes, torch providers only): the goals are for GPU runs.", ""]
    lines += ["| goal | measured | status |", "|---|---|---|"]
    lines += [f"| {goal} | {measured} | {status} |" for goal, measured, status in goals(ops, train)]
    lines += ["", "## Ops", "", "ms per op (median); GB/s counts only the bytes the op must move (byte model in "
              "each `bench/test_bench_<op>.py`); speedup is over the eager reference of the same op, shape and pass.",
              "", "| op | shape | pass | provider | ms | GB/s | % of copy BW | TFLOP/s | peak MB "
              "| speedup vs reference |",
              "|---|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in ops:
        pct = _fmt(r["frac_copy_bw"] * 100 if r["frac_copy_bw"] is not None else None, ".1f")
        lines.append(f"| {r['op']} | {r['shape']} | {r['pass']} | {r['provider']} | {_fmt(r['ms'], '.4f')} | "
                     f"{_fmt(r['gbps'], '.1f')} | {pct} | {_fmt(r['tflops'], '.2f')} | "
                     f"{_fmt(r['peak_mem_mb'], '.1f')} | {_fmt(r['speedup'], '.2f')} |")
    lines += ["", "## Train step", "", "Forward, backward and AdamW over the trainable parameters, bf16 autocast.", "",
              "| input | mode | ms | img/s | peak MB | trainable params | speedup vs reference | memory vs reference |",
              "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in train:
        mem = _fmt(r["mem_frac"] * 100 if r["mem_frac"] is not None else None, ".0f")
        lines.append(f"| {r['input']} | {r['mode']} | {_fmt(r['ms'], '.2f')} | {_fmt(r['img_per_s'], '.1f')} | "
                     f"{_fmt(r['peak_mem_mb'], '.0f')} | {_fmt(r['trainable_params'], ',d')} | "
                     f"{_fmt(r['speedup'], '.2f')} | {mem + '%' if mem else ''} |")
    return "\n".join(lines) + "\n"


def plot(data: dict[str, Any], out_dir: Path, stem: str) -> list[Path]:
    """Speedup over the reference per op (one panel per pass), and memory/throughput per train-step mode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    ops, train = op_rows(data), train_rows(data)
    for op in OPS:
        rows = [r for r in ops if r["op"] == op and r["provider"] != "reference" and r["speedup"] is not None]
        if not rows:
            continue
        shapes = list(dict.fromkeys(r["shape"] for r in ops if r["op"] == op))
        providers = [p for p in PROVIDERS if any(r["provider"] == p for r in rows)]
        fig, axes = plt.subplots(1, len(PASSES), figsize=(max(8, 1.1 * len(shapes) * len(PASSES)), 4.5), sharey=True)
        width = 0.8 / len(providers)
        for ax, pass_ in zip(axes, PASSES):
            speed = {(r["shape"], r["provider"]): r["speedup"] for r in rows if r["pass"] == pass_}
            for i, provider in enumerate(providers):
                xs = [k + (i - (len(providers) - 1) / 2) * width for k in range(len(shapes))]
                ax.bar(xs, [speed.get((s, provider), 0.0) for s in shapes], width, label=provider)
            ax.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
            ax.set_xticks(range(len(shapes)))
            ax.set_xticklabels([_short(s) for s in shapes], rotation=60, ha="right", fontsize=7)
            ax.set_title(pass_)
        axes[0].set_ylabel("speedup over eager reference (x)")
        axes[-1].legend(fontsize=8)
        fig.suptitle(op)
        fig.tight_layout()
        path = out_dir / f"{stem}-speedup-{op}.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)
    if train:
        inputs = list(dict.fromkeys(r["input"] for r in train))
        modes = sorted({r["mode"] for r in train}, key=lambda m: (_order(m, MODES), m))
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
        width = 0.8 / len(modes)
        for ax, key, label in ((axes[0], "peak_mem_mb", "peak memory (MiB)"), (axes[1], "img_per_s", "img/s")):
            values = {(r["input"], r["mode"]): r[key] for r in train}
            if all(v is None for v in values.values()):
                ax.text(0.5, 0.5, f"{label} not recorded (CPU run)", ha="center", va="center", transform=ax.transAxes)
            for i, mode in enumerate(modes):
                xs = [k + (i - (len(modes) - 1) / 2) * width for k in range(len(inputs))]
                ax.bar(xs, [values.get((s, mode)) or 0.0 for s in inputs], width, label=mode)
            ax.set_xticks(range(len(inputs)))
            ax.set_xticklabels(inputs, fontsize=8)
            ax.set_ylabel(label)
        axes[0].legend(fontsize=8)
        fig.suptitle("train step per mode")
        fig.tight_layout()
        path = out_dir / f"{stem}-train-step.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)
    return written


def _short(shape: str) -> str:
    """``det-s1-B2-N65536-d64-keys9`` -> ``det-s1-N65536-d64``: the parts that differ between stages."""
    parts = shape.split("-")
    return "-".join(p for p in parts if not p.startswith(("B", "keys", "vit", "h", "D")) or p in ("det", "cls"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.report", description=__doc__.split("\n")[0])
    parser.add_argument("results", help="pytest-benchmark JSON (pytest bench/ --benchmark-json FILE)")
    parser.add_argument("--out", help="output folder (default: the JSON's folder)")
    parser.add_argument("--no-plots", action="store_true", help="markdown only")
    args = parser.parse_args(argv)
    source = Path(args.results)
    data = load(source)
    out_dir = Path(args.out) if args.out else source.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    text = markdown(data, source.name)
    (out_dir / f"{source.stem}.md").write_text(text, encoding="utf-8")
    print(text)
    print(f"wrote {out_dir / (source.stem + '.md')}", file=sys.stderr)
    if not args.no_plots:
        try:
            written = plot(data, out_dir, source.stem)
        except ImportError:
            print("matplotlib is not installed: no plots (pip install matplotlib)", file=sys.stderr)
        else:
            for path in written:
                print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
