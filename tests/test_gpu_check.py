"""``python -m bench.gpu_check --dry-run``: the GPU check runs end to end on CPU, so it cannot rot between GPU runs.

The check runs as the GPU machine runs it, from the checkout without installing: ``python -S`` (no site-packages
processing, so not this venv's editable install of hst_fast) with the checkout and the site-packages folder on
PYTHONPATH; ``hst_fast.kernels`` must then come from ``bench.gpu_check.shim``.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hst_fast.backend import OP_NAMES, load_dispatch

ROOT = Path(__file__).resolve().parents[1]
PHASES = ("environment", "correctness", "sweep", "performance", "train", "outputs")


def plain_python(*args, pythonpath, cwd, timeout):
    """``python -S *args`` with only ``pythonpath`` and the site-packages folder holding torch importable."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([*map(str, pythonpath), str(Path(torch.__file__).parents[1])])}
    return subprocess.run([sys.executable, "-S", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_shim_maps_kernels_beside_a_plain_checkout(tmp_path):
    for folder, body in (("hst_fast", ""), ("kernels", "WHERE = 'kernels'"), ("installed/hst_fast", ""),
                         ("installed/hst_fast/kernels", "WHERE = 'installed'")):
        (tmp_path / folder).mkdir(parents=True)
        (tmp_path / folder / "__init__.py").write_text(body)
    script = ("from bench.gpu_check.shim import alias_kernels; folder = alias_kernels(); "
              "import hst_fast.kernels as k; print(folder, k.WHERE)")
    plain = plain_python("-c", script, pythonpath=[tmp_path, ROOT], cwd=tmp_path, timeout=60)
    assert plain.stdout.split() == [str(tmp_path / "kernels"), "kernels"], plain.stderr
    installed = plain_python("-c", script, pythonpath=[tmp_path / "installed", ROOT], cwd=tmp_path / "installed",
                             timeout=60)
    assert installed.stdout.split() == ["None", "installed"], installed.stderr


def test_dry_run_never_writes_to_bench_results(tmp_path):
    result = plain_python("-m", "bench.gpu_check", "--dry-run", "--out", str(ROOT / "bench" / "results"),
                          pythonpath=[ROOT], cwd=tmp_path, timeout=60)
    assert result.returncode == 2 and "never writes to" in result.stderr


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    """(JSON, output folder, stdout) of one dry run, from a folder outside the checkout."""
    out = tmp_path_factory.mktemp("gpu_check")
    results_before = sorted((ROOT / "bench" / "results").iterdir())
    run = plain_python("-m", "bench.gpu_check", "--dry-run", "--out", str(out), "--budget-s", "600",
                       pythonpath=[ROOT], cwd=out, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert sorted((ROOT / "bench" / "results").iterdir()) == results_before
    return json.loads((out / "cpu-dry-run.json").read_text()), out, run.stdout


def test_every_phase_ran(dry_run):
    data, _, stdout = dry_run
    assert tuple(data["phases"]) == PHASES
    assert all(phase["status"] == "done" for phase in data["phases"].values()), data["phases"]
    assert all(f"] {name}: done" in stdout for name in PHASES)
    assert data["result"] == {**data["result"], "exit_status": 0, "failed": [], "incomplete": []}


def test_environment(dry_run):
    env = dry_run[0]["phases"]["environment"]
    assert env["device_name"] == "cpu" and env["dtype"] == "fp32" and env["size_mode"] == "tiny"
    assert env["copy_gbps"] > 0 and env["gemm_tflops"] > 0 and env["torch"] and env["triton"]
    assert env["kernels_aliased"] == str(ROOT / "kernels")  # not the editable install: the shim
    assert env["kernels_module"] == str(ROOT / "kernels" / "__init__.py")
    assert "zero_" in env["l2_flush"] and dry_run[0]["machine_info"]["hst_fast"] is not None


def test_correctness(dry_run):
    correctness = dry_run[0]["phases"]["correctness"]
    assert {case["op"] for case in correctness["cases"]} == set(OP_NAMES)
    for case in correctness["cases"]:
        assert case["status"] == "pass" and case["deterministic"], case
        assert case["tensors"][0]["tensor"] == "out" and len(case["tensors"]) > 2
        assert all(t["finite"] and 0 <= t["triton_rms"] < correctness["floor"] for t in case["tensors"])
        assert ("deterministic_mode_bitwise_equal" in case) == (case["op"] in correctness["atomic_backward"])


def test_sweep(dry_run):
    sweep = dry_run[0]["phases"]["sweep"]
    tuned = [(op, kernel) for op, kernels in sweep["kernels"].items() for kernel in kernels]
    assert tuned and {(run["op"], run["kernel"]) for run in sweep["runs"]} == set(tuned)
    assert all(run["status"] == "pass" and run["fwdbwd"]["ms"] > 0 for run in sweep["runs"])


def test_performance(dry_run):
    data, out, _ = dry_run
    performance = data["phases"]["performance"]
    ops = [b["extra_info"] for b in data["benchmarks"] if b["extra_info"]["kind"] == "op"]
    cases = {(info["op"], info["shape"]) for info in ops}
    assert {op for op, _ in cases} == {*OP_NAMES, "side_block"}
    assert len(ops) == 9 * len(cases)  # 3 providers x 3 passes
    assert all(info["ms"] > 0 and info["min_ms"] <= info["ms"] <= info["max_ms"] and info["gbps"] > 0 for info in ops)
    assert not performance["errors"] and performance["profile"]["top"]
    table = load_dispatch(lambda: "cpu", out / "dispatch.json")
    assert set(table) == set(OP_NAMES) and performance["dispatch_table"] == str(out / "dispatch.json")


def test_train(dry_run):
    data = dry_run[0]
    steps = [b["extra_info"] for b in data["benchmarks"] if b["extra_info"]["kind"] == "train_step"]
    assert {(s["config"], s["mode"]) for s in steps} == {(t, m) for t in ("cls", "det")
                                                        for m in ("reference", "faithful", "frozen")}
    assert all(s["img_per_s"] > 0 and s["trainable_params"] > 0 for s in steps)


def test_outputs(dry_run):
    data, out, _ = dry_run
    files = [Path(f) for f in data["phases"]["outputs"]["files"]]
    assert all(f.is_file() for f in files) and out / "cpu-dry-run.md" in files
    text = (out / "cpu-dry-run.md").read_text()
    for title in ("## Goals", "## Ops", "## Train step", "## Correctness", "## Config sweep", "## Profile",
                  "## Dispatch table"):
        assert title in text
