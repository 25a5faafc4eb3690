"""``bench/report.py`` on a small synthetic pytest-benchmark JSON: table, speedups, goals, CLI and plots."""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load_report():
    """bench/report.py by path: ``pytest`` (not ``python -m pytest``) does not put the checkout on sys.path."""
    spec = importlib.util.spec_from_file_location("bench_report", ROOT / "bench" / "report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


report = _load_report()


def _op(provider, ms, pass_="fwdbwd", op="side_block", shape="det-s1-B2-N65536-d64-h2-keys9-vit64x64", frac=None):
    gbps = None if frac is None else frac * 3000.0
    return {"name": f"test_{op}[{op}-{shape}-bf16-{pass_}-{provider}]", "stats": {"median": ms / 1e3},
            "extra_info": {"kind": "op", "op": op, "shape": shape, "pass": pass_, "provider": provider, "reps": 1,
                           "ms": ms, "gbps": gbps, "frac_copy_bw": frac, "tflops": 1.5, "peak_mem_mb": 100.0}}


def _train(mode, ms, mem, config="cls"):
    return {"name": f"test_train_step[{config}-{mode}]", "stats": {"median": ms / 1e3},
            "extra_info": {"kind": "train_step", "config": config, "mode": mode, "model": "vit_base_patch16_224",
                           "image": 224, "batch": 128, "ms": ms, "img_per_s": 128 / ms * 1e3, "peak_mem_mb": mem,
                           "trainable_params": 772140}}


@pytest.fixture
def results(tmp_path):
    data = {
        "machine_info": {"hst_fast": {"device": "cuda", "gpu_name": "NVIDIA H100 80GB HBM3", "copy_gbps": 3000.0,
                                      "size_mode": "full", "dtype": "bf16", "nvml": {"available": True}}},
        "datetime": "2026-01-01T00:00:00",
        "benchmarks": [
            _op("reference", 9.0), _op("compile", 4.0), _op("triton", 2.0, frac=0.85),
            _op("reference", 1.0, op="layer_norm", shape="cls-s1-B128-N3136-C32", pass_="fwd"),
            _op("triton", 0.25, op="layer_norm", shape="cls-s1-B128-N3136-C32", pass_="fwd", frac=0.7),
            # compute-bound side FFN widths are judged by TFLOP/s, never by copy bandwidth
            _op("triton", 0.5, op="side_ffn", shape="det-s3-B2-N4096-d256", pass_="fwd", frac=0.3),
            _op("triton", 0.5, op="side_ffn", shape="det-s1-B2-N65536-d64", pass_="fwd", frac=0.9),
            _train("reference", 400.0, 20000.0), _train("faithful", 180.0, 9000.0), _train("frozen", 90.0, 3000.0),
            {"name": "test_unrelated", "stats": {"median": 1.0}, "extra_info": {}},
        ],
    }
    path = tmp_path / "h100.json"
    path.write_text(json.dumps(data))
    return path


def test_rows_and_speedups(results):
    data = report.load(results)
    ops = report.op_rows(data)
    assert [r["provider"] for r in ops if r["op"] == "side_block"] == ["reference", "compile", "triton"]
    assert ops[0]["op"] == "layer_norm"  # ordered by op, then shape, pass and provider
    triton = next(r for r in ops if r["op"] == "side_block" and r["provider"] == "triton")
    assert triton["speedup"] == pytest.approx(4.5)
    train = {r["mode"]: r for r in report.train_rows(data)}
    assert train["faithful"]["speedup"] == pytest.approx(400 / 180)
    assert train["frozen"]["mem_frac"] == pytest.approx(0.15)


def test_goals(results):
    status = {goal: (measured, state) for goal, measured, state in report.goals(
        report.op_rows(report.load(results)), report.train_rows(report.load(results)))}
    assert status["layer_norm (Triton) >= 80% of copy bandwidth"][1] == "missed"
    assert status["side_attention (Triton) >= 80% of copy bandwidth"][1] == "no data"
    assert status["side block fwd+bwd (Triton) >= 3x eager"][1] == "met"
    assert status["side block fwd+bwd (Triton) >= 1.5x torch.compile"][1] == "met"
    assert status["side_ffn (Triton) >= 80% of copy bandwidth"][1] == "met"  # d256 excluded, d64 at 90%
    assert status["train step faithful >= 2x reference at <= 35% of its memory"][1] == "missed"  # 45% of memory
    assert status["train step frozen >= 4x reference at <= 15% of its memory"][1] == "met"


def test_markdown_table(results):
    text = report.markdown(report.load(results), "h100.json")
    assert "# hst_fast benchmarks: NVIDIA H100 80GB HBM3" in text
    header = "| op | shape | pass | provider | ms | GB/s | % of copy BW | TFLOP/s | peak MB | speedup vs reference |"
    assert header in text
    assert "| side_block | det-s1-B2-N65536-d64-h2-keys9-vit64x64 | fwdbwd | triton | 2.0000 | 2550.0 | 85.0 |" in text
    assert "| cls vit_base_patch16_224 224px B128 | frozen | 90.00 |" in text
    assert "test_unrelated" not in text


def test_cli_markdown_only(results, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "bench.report", str(results), "--out", str(out), "--no-plots"],
                          cwd=ROOT, capture_output=True, text=True, check=True)
    assert "## Goals" in proc.stdout
    assert (out / "h100.md").read_text().startswith("# hst_fast benchmarks")
    assert not list(out.glob("*.png"))


def test_plots(results, tmp_path):
    pytest.importorskip("matplotlib", reason="plots need matplotlib (installed with mmdet by make install)")
    written = report.plot(report.load(results), tmp_path, "h100")
    names = sorted(p.name for p in written)
    assert names == ["h100-speedup-layer_norm.png", "h100-speedup-side_block.png", "h100-train-step.png"]
    assert all(p.stat().st_size > 1000 for p in written)


def test_rejects_other_json(tmp_path):
    path = tmp_path / "other.json"
    path.write_text("{}")
    with pytest.raises(ValueError, match="not a pytest-benchmark JSON"):
        report.load(path)
