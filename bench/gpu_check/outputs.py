"""The check's files and phase 6: ``<gpu>.json`` (rewritten after every phase), ``<gpu>.md`` (``bench.report``'s
device facts, goals and tables, then this check's own sections), ``bench.report``'s plots (with matplotlib) and
the dispatch table ``dispatch.json`` (one entry per GPU name, merged into an existing table)."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from bench import report
from hst_fast.backend import DISPATCH_FORMAT, load_dispatch

FFN_PEAK_GOAL, FFN_PEAK_WIDTHS = 0.50, (256, 384)  # side_ffn (Triton) >= 50% of the bf16 GEMM rate at these widths


def slug(device_name: str) -> str:
    """``'NVIDIA H100 80GB HBM3'`` -> ``'h100-80gb-hbm3'``: the results' file stem."""
    return re.sub(r"[^a-z0-9]+", "-", device_name.lower().replace("nvidia", "")).strip("-")


def write_json(path: Path, data: Any) -> Path:
    """Writes ``data`` to ``path`` through a temporary file, so a kill mid-write leaves the previous version."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(data, indent=1, default=str) + "\n", encoding="utf-8")
    temporary.replace(path)
    return path


def write_dispatch(path: Path, device_name: str, entry: dict) -> Path:
    """Puts ``entry`` under ``device_name`` in the dispatch table at ``path`` (other GPUs' entries kept), and reads it
    back as ``hst_fast.backend`` will."""
    table = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {"format": DISPATCH_FORMAT}
    table.setdefault("devices", {})[device_name] = entry
    write_json(path, table)
    load_dispatch(lambda: device_name, path)
    return path


def _rows(title: str, header: list[str], rows: list[list]) -> list[str]:
    fmt = [f"{v:.4g}" if isinstance(v, float) else str(v) for row in rows for v in row]
    cells = [fmt[i:i + len(header)] for i in range(0, len(fmt), len(header))]
    return ["", f"## {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(row) + " |" for row in cells)]


def check_sections(data: dict) -> list[str]:
    """The markdown this check adds to ``bench.report``'s: phases, correctness, FFN vs GEMM, spread, sweep,
    profile, autotuner choices, dispatch."""
    phases, env = data["phases"], data["phases"].get("environment", {})
    lines = _rows("Check", ["phase", "status", "seconds", "summary"],
                  [[name, p["status"], p.get("seconds", 0.0), p.get("summary", p.get("error", ""))]
                   for name, p in phases.items() if p["status"] != "running"])
    correctness = phases.get("correctness", {})
    header = ["op", "case", "status", "worst error / limit", "failed tensors", "deterministic"]
    lines += _rows(f"Correctness ({env.get('dtype')} vs an fp32 reference)", header,
                   [[r["op"], r["case"], r["status"], r.get("score", ""),
                     ", ".join(t["tensor"] for t in r.get("tensors", []) if not t["pass"]), r.get("deterministic", "")]
                    for r in correctness.get("cases", [])])
    if correctness:
        lines += ["", f"Criterion: {correctness.get('criterion')}. Ops with atomic backward "
                  f"({', '.join(correctness.get('atomic_backward', []))}) are checked for determinism under "
                  "`torch.use_deterministic_algorithms(True)`."]
    ops = [b["extra_info"] for b in data["benchmarks"] if b["extra_info"].get("kind") == "op"]
    peak = env.get("gemm_tflops")
    ffn = [i for i in ops if i["op"] == "side_ffn" and i["provider"] == "triton" and i["dim"] in FFN_PEAK_WIDTHS]
    lines += _rows(f"side_ffn vs the bf16 GEMM rate ({peak and round(peak, 1)} TFLOP/s; goal >= {FFN_PEAK_GOAL:.0%})",
                   ["shape", "pass", "TFLOP/s", "share", "status"],
                   [[i["shape"], i["pass"], i["tflops"], i["tflops"] / peak,
                     "met" if i["tflops"] / peak >= FFN_PEAK_GOAL else "missed"] for i in ffn if peak and i["tflops"]])
    lines += _rows("Spread (fwd+bwd, ms over repetitions, L2 flushed)", ["op", "shape", "provider", "median", "IQR",
                                                                         "min", "max"],
                   [[i["op"], i["shape"], i["provider"], i["ms"], i["iqr_ms"], i["min_ms"], i["max_ms"]]
                    for i in sorted(ops, key=_order) if i["pass"] == "fwdbwd"])
    sweep = phases.get("sweep", {})
    lines += _rows("Config sweep", ["op", "kernel", "width", "config", "status", "fwd+bwd ms", "error"],
                   [[r["op"], r["kernel"], r["width"], _config(r["config"]), r["status"],
                     r.get("fwdbwd", {}).get("ms", ""), r.get("error", "")] for r in sweep.get("runs", [])])
    performance = phases.get("performance", {})
    profile = performance.get("profile", {})
    lines += _rows(f"Profile: Triton side block fwd+bwd, {profile.get('case')} ({profile.get('time')})",
                   ["kernel", "calls", "self ms", "share"],
                   [[r["name"][:80], r["calls"], r["self_ms"], r["share"]] for r in profile.get("top", [])])
    lines += _rows("Autotuner choices", ["op", "kernel", "key", "config"],
                   [[op, name, " ".join(choice["key"]), _config(choice)]
                    for op, kernels in performance.get("autotune_choices", {}).items()
                    for name, choices in kernels.items() for choice in choices])
    lines += _rows(f"Dispatch table for kernel_backend='auto' ({performance.get('dispatch_table')})",
                   ["op", "width", "choice", "Triton ms", "reference ms"],
                   [[op, width, performance["dispatch"]["ops"][op][width], e["triton_ms"], e["torch_ms"]]
                    for op, widths in performance.get("dispatch", {}).get("evidence", {}).items()
                    for width, e in widths.items()])
    return lines


def _order(info: dict) -> tuple:
    """Rows in ``bench.report``'s op and provider order, shapes sorted by name."""
    return (report.OPS.index(info["op"]), info["shape"], report.PROVIDERS.index(info["provider"]))


def _config(config: dict) -> str:
    kwargs = " ".join(f"{k}={v}" for k, v in config["kwargs"].items())
    return f"{kwargs} w{config['num_warps']} s{config['num_stages']}"


def run(ctx, out: dict, clock) -> None:
    json_path = ctx.out_dir / f"{ctx.slug}.json"
    text = report.markdown(ctx.data, json_path.name) + "\n".join(check_sections(ctx.data)) + "\n"
    md = ctx.out_dir / f"{ctx.slug}.md"
    md.write_text(text, encoding="utf-8")
    files = [json_path, md]
    try:
        files += report.plot(ctx.data, ctx.out_dir, ctx.slug)
    except ImportError:
        out["plots"] = "matplotlib is not installed: no plots"
    table = ctx.out_dir / "dispatch.json"
    out["files"] = [str(path) for path in files + ([table] if table.is_file() else [])]
    out["summary"] = f"wrote {', '.join(path.name for path in files)} in {ctx.out_dir}"
