"""Ahead-of-time compiles every ``@triton.jit`` kernel of ``hst_fast.kernels`` for an H100 (sm_90), no GPU needed.

Run by ``test_compile_sm90.py`` in a fresh interpreter with ``TRITON_INTERPRET`` unset (under the interpreter
``@triton.jit`` returns interpreter functions, which cannot be compiled), or by hand::

    env -u TRITON_INTERPRET .venv/bin/python tests/kernels/compile_sm90.py              # prints every config
    env -u TRITON_INTERPRET .venv/bin/python tests/kernels/compile_sm90.py --table tests/kernels/compile_table.md
    # the same with the GPU machine's Triton (requirements/gpu-triton.txt, installed by make install):
    env -u TRITON_INTERPRET PYTHONPATH=.venv/triton-gpu .venv/bin/python tests/kernels/compile_sm90.py --table ...

``--table`` keeps one section per Triton version in the file, replacing the running Triton's.

A case is one kernel at one input dtype (fp32, bf16) and one HST width: the side widths of the classification
(32, 48, 64, 72) and detection (64, 128, 256, 384) configs, and ViT-B's 768 for ``layer_norm``. Each case compiles
every config the launcher can run: for autotuned kernels every config their ``early_config_prune`` keeps for that
width, otherwise the one the launcher's own helpers pick (``_block_sizes``, ``_bwd_launch_sizes``, ``_launch_meta``,
``dot_precision``; fp32 dots ``'ieee'`` as under PyTorch's default ``allow_tf32=False``), with every optional
output on (the training path: ``side_ffn`` with a drop-path scale, backward flags for dx and the weight grads).
Arguments are specialised as a launch from PyTorch would be: pointers and integers divisible by 16 carry
``tt.divisibility=16`` (not the ``do_not_specialize`` autotuning keys). Identical compilations (widths 48 and 64
share BLOCK_C and divisibility) run once, in ``--jobs`` forked processes.

Each compiled config reports registers per thread, spilled 32-bit values per thread (the local memory ptxas gives
the thread, stack frame included, / 4; cuobjdump's STACK + LOCAL) and the shared memory Triton requests; a config
is ``ok`` if it compiles, does not spill and fits the H100's shared memory.

This module imports nothing heavy at import time: the test reads ``CASES`` from it in the interpreter session.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import traceback

KERNELS = (
    "layer_norm_fwd", "layer_norm_bwd",
    "side_ffn_fwd", "side_ffn_bwd_dx", "side_ffn_bwd_dw",
    "side_attention_fwd", "side_attention_bwd",
    "fg_injection_fwd", "fg_injection_bwd_scatter", "fg_injection_bwd_gather",
)  # fmt: skip
DTYPES = ("fp32", "bf16")
SIDE_WIDTHS = (32, 48, 64, 72, 128, 256, 384)  # classification d = 32/48/64/72, detection d = 64/128/256/384
WIDTHS = {"layer_norm": SIDE_WIDTHS + (768,), "side_ffn": SIDE_WIDTHS, "side_attention": SIDE_WIDTHS,
          "fg_injection": SIDE_WIDTHS}  # fmt: skip

HEADS = 12  # runtime arguments below only matter through their divisibility by 16
NUM_KEYS = 9
ROWS = 2 * 256 * 256  # two 1024x1024 images at stride 4
H100_MAX_SHARED = 232448  # bytes of shared memory per block (opt-in), as the driver reports for sm_90
SKIP_EXIT = 3  # exit status meaning "cannot compile for CUDA here", with the reason on stdout


def case_id(kernel: str, dtype: str, width: int) -> str:
    return f"{kernel}-{dtype}-C{width}"


def _family(kernel: str) -> str:
    return next(f for f in WIDTHS if kernel.startswith(f))


CASES = [(k, d, c) for k in KERNELS for d in DTYPES for c in WIDTHS[_family(k)]]


def environment_problem() -> str | None:
    """Why this Triton cannot compile for sm_90 here, or None."""
    try:
        import triton
        from triton.backends import backends
    except Exception as exc:  # noqa: BLE001 - any import failure means no compiler
        return f"triton not importable: {exc!r}"
    if "nvidia" not in backends:
        return f"triton {triton.__version__} has no CUDA backend (backends: {sorted(backends)})"
    try:
        from triton.backends.nvidia.compiler import get_ptxas

        ptxas = get_ptxas(90).path
    except Exception as exc:  # noqa: BLE001
        return f"no ptxas for sm_90: {exc!r}"
    if not ptxas or not os.access(ptxas, os.X_OK):
        return f"ptxas not found or not executable: {ptxas!r}"
    return None


def _specs(kernel: str, dtype: str, width: int):
    """(jit function or autotuner, {arg: signature type}, {arg: value} of runtime args, constexprs, options dict or
    None for autotuned kernels). Values only matter for integer divisibility and pruning."""
    import torch
    import triton

    from hst_fast.kernels import fg_injection, layer_norm, side_attention, side_ffn
    from hst_fast.kernels._compat import dot_precision

    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]

    def ptrs(names: str, ty: str) -> dict:
        return {n: f"*{ty}" for n in names.split()}

    ints = {"M": ROWS, "C": width}
    if kernel.startswith("layer_norm"):
        block_m, block_c, num_warps = layer_norm._block_sizes(width)
        constexprs = {"BLOCK_M": block_m, "BLOCK_C": block_c}
        options = {"num_warps": num_warps}
        if kernel == "layer_norm_fwd":
            sig = {**ptrs("x_ptr y_ptr weight_ptr bias_ptr", dtype), **ptrs("mean_ptr rstd_ptr", "fp32")}
            sig.update(M="i32", C="i32", eps="fp32")
            return layer_norm._layer_norm_fwd_kernel, sig, {**ints, "eps": 1e-6}, constexprs, options
        sig = {**ptrs("x_ptr dy_ptr weight_ptr", dtype), **ptrs("mean_ptr rstd_ptr", "fp32"), **ptrs("dx_ptr", dtype)}
        sig.update(**ptrs("dweight_partial_ptr dbias_partial_ptr", "fp32"), M="i32", C="i32")
        return layer_norm._layer_norm_bwd_kernel, sig, ints, {**constexprs, "DX": True, "DAFFINE": True}, options

    if kernel.startswith("side_ffn"):
        x = torch.empty(2, ROWS // 2, width, dtype=torch_dtype, device="meta")
        meta = side_ffn._launch_meta(x, torch.ones(2, device="meta"))  # training: with a drop-path scale
        meta.pop("scale")
        values = {**ints, "H": 4 * width, "N": ROWS // 2, "ROWS_BUCKET": meta.pop("ROWS_BUCKET")}
        inputs = {
            **ptrs("x_ptr", dtype),
            **ptrs("norm_weight_ptr norm_bias_ptr fc1_weight_ptr fc1_bias_ptr fc2_weight_ptr", dtype),
        }
        stats = {**ptrs("scale_ptr mean_ptr rstd_ptr", "fp32")}
        scalars = {"M": "i32", "C": "i32", "H": "i32", "N": "i32", "ROWS_BUCKET": "i32"}
        if kernel == "side_ffn_fwd":
            sig = {**inputs, **ptrs("fc2_bias_ptr", dtype), "y_ptr": f"*{dtype}", **stats, **scalars, "eps": "fp32"}
            return side_ffn._side_ffn_fwd_kernel, sig, {**values, "eps": 1e-6}, meta, None
        inputs = {"x_ptr": f"*{dtype}", "dy_ptr": f"*{dtype}", **inputs}
        if kernel == "side_ffn_bwd_dx":
            outs = {"dx_ptr": f"*{dtype}", "partial_ptr": "*fp32"}
            sig = {**inputs, **stats, **outs, **scalars}
            return side_ffn._side_ffn_bwd_dx_kernel, sig, values, {**meta, "DX": True}, None
        sig = {**inputs, **stats, "partial_ptr": "*fp32", **scalars}
        return side_ffn._side_ffn_bwd_dw_kernel, sig, values, meta, None

    if kernel.startswith("side_attention"):
        # Folded tensors head-major as fold_attention makes them: strides (b, h) of keys/values (M*C, B*M*C), of
        # key_bias (M, B*M); out_bias unscaled, broadcast over the batch (stride 0).
        batch_stride, head_stride = NUM_KEYS * width, 2 * NUM_KEYS * width
        strides = {"stride_kb": batch_stride, "stride_kh": head_stride, "stride_bb": NUM_KEYS,
                   "stride_bh": 2 * NUM_KEYS, "stride_vb": batch_stride, "stride_vh": head_stride}  # fmt: skip
        values = {"N": ROWS // 2, "C": width, "M": NUM_KEYS, "H": HEADS, "eps": 1e-6, **strides}
        scalars = {"N": "i32", "C": "i32", "M": "i32", "H": "i32", **{name: "i32" for name in strides}}
        folded = ptrs("KF KB VF", "fp32")
        constexprs = {"BLOCK_M": side_attention.MAX_KEYS, "DOT_PRECISION": dot_precision(torch_dtype)}
        if kernel == "side_attention_fwd":
            sig = {"X": f"*{dtype}", **folded, "OB": "*fp32", "Y": f"*{dtype}", **scalars, "stride_ob": "i32",
                   "ROWS_BUCKET": "i32", "eps": "fp32"}  # fmt: skip
            values.update(stride_ob=0, ROWS_BUCKET=ROWS)
            constexprs["BLOCK_C"] = triton.next_power_of_2(width)
            return side_attention._side_attention_fwd_kernel, sig, values, constexprs, None
        block_n, block_c, num_warps, num_stages = side_attention._bwd_launch_sizes(width)
        sig = {**ptrs("X DY", dtype), **folded, "DX": f"*{dtype}", **ptrs("PARTIAL DS", "fp32"), **scalars,
               "S": "i32", "eps": "fp32"}  # fmt: skip
        constexprs.update(BLOCK_N=block_n, BLOCK_C=block_c, WRITE_DX=True, FOLD_GRADS=True)
        options = {"num_warps": num_warps, "num_stages": num_stages}
        return side_attention._side_attention_bwd_kernel, sig, {**values, "S": 16}, constexprs, options

    in_h = in_w = 64  # ViT-B/16 at 1024x1024 to the detection stage 1 (stride 4)
    out_h = out_w = 256
    values = {"C": width, "in_h": in_h, "in_w": in_w, "out_h": out_h, "out_w": out_w}
    values.update(scale_h=in_h / out_h, scale_w=in_w / out_w)
    scalars = {n: "i32" for n in ("C", "in_h", "in_w", "out_h", "out_w")}
    scalars.update(scale_h="fp32", scale_w="fp32")
    if kernel == "fg_injection_bwd_gather":
        block_p, block_c, num_warps = fg_injection._block_sizes(in_h * in_w, width)
        window = fg_injection._gather_window(in_h, out_h)
        values.update(window_h=window, window_w=window)
        sig = {**ptrs("DY DBR", dtype), **scalars, "window_h": "i32", "window_w": "i32"}
        constexprs = {"BLOCK_P": block_p, "BLOCK_C": block_c}
        return fg_injection._fg_injection_bwd_gather_kernel, sig, values, constexprs, {"num_warps": num_warps}
    block_t, block_c, num_warps = fg_injection._block_sizes(out_h * out_w, width)
    constexprs = {"BLOCK_T": block_t, "BLOCK_C": block_c}
    if kernel == "fg_injection_fwd":
        strides = {"stride_b": in_h * in_w * width, "stride_h": in_w * width, "stride_w": width, "stride_c": 1}
        sig = {**ptrs("X BR Y", dtype), **scalars, **{name: "i32" for name in strides}}
        values.update(strides)
        return fg_injection._fg_injection_fwd_kernel, sig, values, constexprs, {"num_warps": num_warps}
    sig = {"DY": f"*{dtype}", "DBR": "*fp32", **scalars}
    return fg_injection._fg_injection_bwd_scatter_kernel, sig, values, constexprs, {"num_warps": num_warps}


def _pruned_configs(autotuner, values: dict, constexprs: dict) -> list:
    """The configs the launcher's ``early_config_prune`` keeps for these arguments, in autotuning order."""
    configs = list(autotuner.configs)
    if autotuner.early_config_prune:
        configs = autotuner.early_config_prune(configs, dict(values), **constexprs)
    return configs


def _resource_usage(cubin: bytes, name: str) -> tuple[int, int]:
    """(registers per thread, local memory bytes per thread incl. the stack frame) from ``cuobjdump``."""
    from triton import knobs

    cuobjdump = knobs.nvidia.cuobjdump.path
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([cuobjdump, "--dump-resource-usage", f.name], capture_output=True, text=True).stdout
    match = re.search(rf"Function {re.escape(name)}:\s*REG:(\d+) STACK:(\d+) .*?LOCAL:(\d+)", out, re.S)
    if not match:
        raise RuntimeError(f"no resource usage for {name} in cuobjdump output:\n{out}")
    return int(match.group(1)), int(match.group(2)) + int(match.group(3))


def _short_error(exc: BaseException) -> str:
    """The compiler's message without the PTX dump or long tracebacks, at most ~1500 characters."""
    text = f"{type(exc).__name__}: {exc}"
    text = re.sub(r"\n{3,}", "\n\n", text).strip()
    return text if len(text) <= 1500 else text[:1500] + " [...]"


def _compilations(kernel: str, dtype: str, width: int) -> list[tuple]:
    """(jit function, full signature, attrs, constexprs, options) for every config the launcher can run."""
    fn, signature, values, constexprs, options = _specs(kernel, dtype, width)
    autotuned = options is None
    jit_fn = fn.fn if autotuned else fn
    configs = _pruned_configs(fn, {**values, **constexprs}, constexprs) if autotuned else [None]
    # keyword arguments of the launch that are runtime values, not constexprs (side_ffn's N)
    is_constexpr = {p.name: p.is_constexpr for p in jit_fn.params}
    for name in [n for n in constexprs if not is_constexpr[n]]:
        values[name] = constexprs.pop(name)
    missing = {n for n in jit_fn.arg_names if n not in signature and not is_constexpr[n]}
    if missing:
        raise KeyError(f"no signature type for runtime arguments {sorted(missing)} of {jit_fn.__name__}")
    full_sig = {name: signature.get(name, "constexpr") for name in jit_fn.arg_names}
    # as the launcher's specialisation: 16-byte aligned pointers, integers divisible by 16 marked so
    unspecialized = {p.name for p in jit_fn.params if p.do_not_specialize}
    attrs = {
        (i,): [["tt.divisibility", 16]]
        for i, (name, ty) in enumerate(full_sig.items())
        if ty.startswith("*") or (ty == "i32" and name not in unspecialized and values[name] % 16 == 0)
    }
    out = []
    for config in configs:
        case_constexprs, case_options = dict(constexprs), dict(options or {})
        if config is not None:
            case_constexprs.update(config.kwargs)
            case_options.update(num_warps=config.num_warps, num_stages=config.num_stages)
        out.append((jit_fn, full_sig, attrs, case_constexprs, case_options))
    return out


def _unit_key(unit: tuple) -> str:
    jit_fn, full_sig, attrs, constexprs, options = unit
    return repr((jit_fn.__name__, sorted(full_sig.items()), sorted(attrs), sorted(constexprs.items()),
                 sorted(options.items())))  # fmt: skip


def _config_label(constexprs: dict, options: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in {**constexprs, **options}.items() if k.startswith("BLOCK") or k in options)


def _compile_one(unit: tuple) -> dict:
    """One ``triton.compile`` for sm_90; its report (``ok`` False with ``error`` if it fails, spills or does not
    fit)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    jit_fn, full_sig, attrs, constexprs, options = unit
    entry = {"config": _config_label(constexprs, options)}
    start = time.perf_counter()
    try:
        src = ASTSource(fn=jit_fn, signature=full_sig, constexprs=constexprs, attrs=attrs)
        compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=options)
        n_regs, local_bytes = _resource_usage(compiled.asm["cubin"], compiled.metadata.name)
        shared = compiled.metadata.shared
        entry.update(ok=True, n_regs=n_regs, n_spills=local_bytes // 4, shared=shared)
        if local_bytes:
            entry.update(ok=False, error=f"spills: {local_bytes} B of local memory per thread")
        if shared > H100_MAX_SHARED:
            entry.update(ok=False, error=f"needs {shared} B of shared memory, the H100 has {H100_MAX_SHARED}")
    except Exception as exc:  # noqa: BLE001 - reported per config
        entry.update(ok=False, error=_short_error(exc))
    entry["seconds"] = round(time.perf_counter() - start, 2)
    return entry


_UNITS: list[tuple] = []  # filled before the worker processes fork


def _compile_unit(index: int) -> dict:
    return _compile_one(_UNITS[index])


def run(cases, jobs: int) -> list[dict]:
    """Compiles every config of every case (identical ones once, in ``jobs`` forked processes); returns per case
    {"id", "ok", "error", "compiled": [per-config reports]}."""
    results, unit_index = [], {}
    for case in cases:
        result = {"id": case_id(*case), "ok": False, "error": "", "units": []}
        try:
            for unit in _compilations(*case):
                result["units"].append(unit_index.setdefault(_unit_key(unit), len(_UNITS)))
                if result["units"][-1] == len(_UNITS):
                    _UNITS.append(unit)
        except Exception as exc:  # noqa: BLE001 - reported per case
            result["error"] = "set-up failed: " + _short_error(exc) + "\n" + traceback.format_exc(limit=3)
        results.append(result)
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    def tile_size(i: int) -> int:
        return sum(v for k, v in _UNITS[i][3].items() if k.startswith("BLOCK"))

    reports = {}
    order = sorted(range(len(_UNITS)), key=tile_size, reverse=True)  # big tiles compile longest: start them first
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("fork")) as pool:
        futures = {pool.submit(_compile_unit, i): i for i in order}
        for done, future in enumerate(as_completed(futures), 1):
            i = futures[future]
            reports[i] = entry = future.result()
            jit_fn, full_sig = _UNITS[i][:2]
            dtype = next(ty for ty in full_sig.values() if ty.startswith("*"))[1:]
            usage = {k: entry[k] for k in ("n_regs", "n_spills", "shared") if k in entry}
            print(f"[{done}/{len(_UNITS)}] {jit_fn.__name__} {dtype} {entry['config']}: {usage} "
                  f"{entry['seconds']}s", file=sys.stderr, flush=True)  # fmt: skip
    for result in results:
        result["compiled"] = [reports[i] for i in result.pop("units")]
        if result["compiled"]:
            result["ok"] = all(entry["ok"] for entry in result["compiled"])
            errors = [f"[{entry['config']}] {entry['error']}" for entry in result["compiled"] if not entry["ok"]]
            result["error"] = "\n".join(errors)
    return results


def table(results: list[dict]) -> str:
    """Markdown: per kernel and dtype, the worst registers, spills and shared memory over its widths and configs."""
    rows = {}
    for result in results:
        kernel, dtype, width = result["id"].rsplit("-", 2)
        row = rows.setdefault((kernel, dtype), {"widths": [], "configs": 0, "regs": 0, "spills": 0, "shared": 0})
        row["widths"].append(width[1:])
        for entry in result["compiled"]:
            row["configs"] += 1
            for key, field in (("regs", "n_regs"), ("spills", "n_spills"), ("shared", "shared")):
                row[key] = max(row[key], entry.get(field, 0))
    lines = [
        "| kernel | dtype | widths C | configs | max registers | max spills | max shared memory |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for (kernel, dtype), row in rows.items():
        lines.append(
            f"| {kernel} | {dtype} | {'/'.join(row['widths'])} | {row['configs']} | {row['regs']} | {row['spills']} | "
            f"{row['shared'] / 1024:.1f} KiB |"
        )
    return "\n".join(lines)


def write_table_section(path: str, results: list[dict], summary: str) -> None:
    """The markdown file ``path``: a title, then one section per Triton version (the running one's replaced)."""
    import triton

    sections = {}
    if os.path.exists(path):
        for part in open(path).read().split("\n## Triton ")[1:]:
            version, body = part.split("\n", 1)
            sections[version] = body.strip("\n")
    sections[triton.__version__] = f"{summary}.\n\n{table(results)}"
    with open(path, "w") as f:
        f.write("# sm_90 compile table\n\nWorst registers, spills and shared memory per kernel and dtype, over its "
                "widths and configs, by Triton version (`tests/kernels/compile_sm90.py --table`, an empty Triton "
                "cache unless reruns).\n")
        f.write("".join(f"\n## Triton {version}\n\n{sections[version]}\n" for version in sorted(sections)))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", help="write the per-case results here")
    parser.add_argument("--table", help="write the markdown table of worst registers / spills / shared memory here")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--only", help="regex on case ids")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        print("TRITON_INTERPRET=1: kernels would be interpreter functions; unset it", file=sys.stderr)
        return 2
    problem = environment_problem()
    if problem:
        print(problem)
        return SKIP_EXIT
    cases = [c for c in CASES if not args.only or re.search(args.only, case_id(*c))]
    start = time.perf_counter()
    results = run(cases, args.jobs)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    for result in results:
        for entry in result["compiled"]:
            usage = (
                f"regs {entry['n_regs']:3d}  spills {entry['n_spills']:5d}  smem {entry['shared']:6d}"
                if "n_regs" in entry
                else "FAILED"
            )
            print(f"{result['id']:36s} {usage}  {entry['seconds']:6.2f}s  {entry['config']}")
        if not result["ok"]:
            print("    " + result["error"].strip().replace("\n", "\n    "))
    elapsed = time.perf_counter() - start
    failed = sum(not r["ok"] for r in results)
    summary = f"{len(results)} cases, {len(_UNITS)} compilations in {elapsed:.1f}s, {failed} failed"
    import triton

    print(f"Triton {triton.__version__}: {summary}")
    if args.table:
        write_table_section(args.table, results, f"{summary} with {args.jobs} jobs")
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
