"""Ahead-of-time compiles every ``@triton.jit`` kernel of ``hst_fast.kernels`` for an H100 (sm_90), no GPU needed.

Run by ``test_compile_sm90.py`` in a fresh interpreter with ``TRITON_INTERPRET`` unset (under the interpreter
``@triton.jit`` returns interpreter functions, which cannot be compiled), or by hand::

    env -u TRITON_INTERPRET .venv/bin/python tests/kernels/compile_sm90.py            # prints a table
    env -u TRITON_INTERPRET .venv/bin/python tests/kernels/compile_sm90.py --json out.json

Each case is one kernel at one input dtype and width. The launch configuration is the one its launcher picks,
read from the launcher's own helpers (``_block_sizes``, ``_bwd_block_sizes``, ``_launch_meta``, ``dot_precision``),
so the cases follow the launchers. Autotuned kernels compile the smallest of the configs their ``early_config_prune``
keeps for that width (``--all-configs``: every one; see ``compile_case``).
Arguments are specialised as a launch from PyTorch would be: pointers and integers divisible by 16 carry
``tt.divisibility=16``. For every compiled config the report gives the registers per thread and the spilled 32-bit
values (``n_regs`` and ``n_spills`` as Triton's driver would report them: ``cuobjdump`` REG and LOCAL / 4) and the
shared memory Triton requests, checked against the H100's limit.

This module imports nothing heavy at import time: the test reads ``CASES`` from it in the interpreter session.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
import traceback

# (kernel, input dtype, width C). Side ops at the detection config's narrowest and widest side stage
# (C = 64 with 2 heads, C = 384 with 12 heads, hidden 4C, G + 1 = 9 keys); layer_norm at the ViT-B width 768.
KERNELS = (
    "layer_norm_fwd", "layer_norm_bwd",
    "side_ffn_fwd", "side_ffn_bwd_dx", "side_ffn_bwd_dw",
    "side_attention_fwd", "side_attention_bwd",
    "fg_injection_fwd", "fg_injection_bwd",
)  # fmt: skip
DTYPES = ("fp32", "bf16", "fp16")
WIDTHS = {"layer_norm": (64, 768), "side_ffn": (64, 384), "side_attention": (64, 384), "fg_injection": (64, 384)}

HEADS = {64: 2, 128: 4, 256: 8, 384: 12, 768: 12}
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
    """(jit function or autotuner, {arg: signature type}, {arg: value} of non-constexpr args, constexprs,
    options dict or None for autotuned kernels). Values only matter for integer divisibility and pruning."""
    import torch
    import triton

    from hst_fast.kernels import fg_injection, layer_norm, side_attention, side_ffn
    from hst_fast.kernels._compat import dot_precision

    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    heads = HEADS[width]

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
        return layer_norm._layer_norm_bwd_kernel, sig, ints, constexprs, options

    if kernel.startswith("side_ffn"):
        x = torch.empty(2, ROWS // 2, width, dtype=torch_dtype, device="meta")
        meta = side_ffn._launch_meta(x, torch.ones(2, device="meta"))  # training: with a drop-path scale
        meta.pop("scale")
        values = {**ints, "H": 4 * width, "N": ROWS // 2}
        inputs = {
            **ptrs("x_ptr", dtype),
            **ptrs("norm_weight_ptr norm_bias_ptr fc1_weight_ptr fc1_bias_ptr fc2_weight_ptr", dtype),
        }
        stats = {**ptrs("scale_ptr mean_ptr rstd_ptr", "fp32")}
        scalars = {"M": "i32", "C": "i32", "H": "i32", "N": "i32"}
        if kernel == "side_ffn_fwd":
            sig = {**inputs, **ptrs("fc2_bias_ptr", dtype), "y_ptr": f"*{dtype}", **stats, **scalars, "eps": "fp32"}
            return side_ffn._side_ffn_fwd_kernel, sig, {**values, "eps": 1e-6}, meta, None
        inputs = {"x_ptr": f"*{dtype}", "dy_ptr": f"*{dtype}", **inputs}
        if kernel == "side_ffn_bwd_dx":
            outs = {"dx_ptr": f"*{dtype}", **ptrs("dnorm_weight_partial_ptr dnorm_bias_partial_ptr", "fp32")}
            outs.update(ptrs("dfc2_bias_partial_ptr", "fp32"))
            return side_ffn._side_ffn_bwd_dx_kernel, {**inputs, **stats, **outs, **scalars}, values, meta, None
        outs = ptrs("dfc1_weight_partial_ptr dfc1_bias_partial_ptr dfc2_weight_partial_ptr", "fp32")
        return side_ffn._side_ffn_bwd_dw_kernel, {**inputs, **stats, **outs, **scalars}, values, meta, None

    if kernel.startswith("side_attention"):
        values = {"N": ROWS // 2, "C": width, "M": NUM_KEYS, "H": heads, "eps": 1e-6}
        folded = ptrs("KF KB VF", "fp32")
        scalars = {"N": "i32", "C": "i32", "M": "i32", "H": "i32"}
        constexprs = {"BLOCK_M": side_attention.MAX_KEYS, "DOT_PRECISION": dot_precision(torch_dtype)}
        if kernel == "side_attention_fwd":
            sig = {"X": f"*{dtype}", **folded, "OB": "*fp32", "Y": f"*{dtype}", **scalars, "eps": "fp32"}
            constexprs["BLOCK_C"] = triton.next_power_of_2(width)
            return side_attention._side_attention_fwd_kernel, sig, values, constexprs, None
        block_n, block_c, num_warps = side_attention._bwd_block_sizes(width)
        sig = {**ptrs("X DY", dtype), **folded, "DX": f"*{dtype}", **ptrs("DKF DKB DVF DOB", "fp32")}
        sig.update(scalars, S="i32", eps="fp32")
        constexprs.update(BLOCK_N=block_n, BLOCK_C=block_c)
        return side_attention._side_attention_bwd_kernel, sig, {**values, "S": 16}, constexprs, {"num_warps": num_warps}

    out_h = out_w = 256
    in_h = in_w = 64
    block_t, block_c, num_warps = fg_injection._block_sizes(out_h * out_w, width)
    values = {"C": width, "in_h": in_h, "in_w": in_w, "out_h": out_h, "out_w": out_w}
    values.update(scale_h=in_h / out_h, scale_w=in_w / out_w)
    scalars = {n: "i32" for n in ("C", "in_h", "in_w", "out_h", "out_w")}
    scalars.update(scale_h="fp32", scale_w="fp32")
    constexprs = {"BLOCK_T": block_t, "BLOCK_C": block_c}
    if kernel == "fg_injection_fwd":
        sig = {**ptrs("X BR Y", dtype), **scalars}
        return fg_injection._fg_injection_fwd_kernel, sig, values, constexprs, {"num_warps": num_warps}
    sig = {"DY": f"*{dtype}", "DBR": "*fp32", **scalars}
    return fg_injection._fg_injection_bwd_kernel, sig, values, constexprs, {"num_warps": num_warps}


def _pruned_configs(autotuner, values: dict, constexprs: dict) -> list:
    """The configs the launcher's ``early_config_prune`` keeps for these arguments, in autotuning order."""
    configs = list(autotuner.configs)
    if autotuner.early_config_prune:
        configs = autotuner.early_config_prune(configs, dict(values), **constexprs)
    return configs


def _tile_size(config) -> tuple:
    """Orders configs by the product of their block sizes, then by more warps (fewer elements per thread)."""
    return math.prod(v for k, v in config.kwargs.items() if k.startswith("BLOCK")), -config.num_warps


def _resource_usage(cubin: bytes, name: str) -> tuple[int, int]:
    """(registers per thread, local memory bytes per thread) from ``cuobjdump --dump-resource-usage``."""
    from triton import knobs

    cuobjdump = knobs.nvidia.cuobjdump.path
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([cuobjdump, "--dump-resource-usage", f.name], capture_output=True, text=True).stdout
    match = re.search(rf"Function {re.escape(name)}:\s*REG:(\d+).*?LOCAL:(\d+)", out, re.S)
    if not match:
        raise RuntimeError(f"no resource usage for {name} in cuobjdump output:\n{out}")
    return int(match.group(1)), int(match.group(2))


def _short_error(exc: BaseException) -> str:
    """The compiler's message without the PTX dump or long tracebacks, at most ~1500 characters."""
    text = f"{type(exc).__name__}: {exc}"
    text = re.sub(r"\n{3,}", "\n\n", text).strip()
    return text if len(text) <= 1500 else text[:1500] + " [...]"


def _compile_one(jit_fn, signature: dict, values: dict, constexprs: dict, options: dict) -> dict:
    """One ``triton.compile`` for sm_90; its report (``ok`` False with ``error`` if it fails or does not fit)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    full_sig = {name: signature.get(name, "constexpr") for name in jit_fn.arg_names}
    # as the launcher's specialisation: 16-byte aligned pointers, integers divisible by 16 marked so
    attrs = {
        (i,): [["tt.divisibility", 16]]
        for i, (name, ty) in enumerate(full_sig.items())
        if ty.startswith("*") or (ty == "i32" and values[name] % 16 == 0)
    }
    entry = {
        "config": ", ".join(
            f"{k}={v}" for k, v in {**constexprs, **options}.items() if k.startswith("BLOCK") or k in options
        )
    }
    start = time.perf_counter()
    try:
        src = ASTSource(fn=jit_fn, signature=full_sig, constexprs=constexprs, attrs=attrs)
        compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=options)
        n_regs, local_bytes = _resource_usage(compiled.asm["cubin"], compiled.metadata.name)
        shared = compiled.metadata.shared
        entry.update(ok=True, n_regs=n_regs, n_spills=local_bytes // 4, shared=shared)
        if shared > H100_MAX_SHARED:
            entry.update(ok=False, error=f"needs {shared} B of shared memory, the H100 has {H100_MAX_SHARED}")
    except Exception as exc:  # noqa: BLE001 - reported per case
        entry.update(ok=False, error=_short_error(exc))
    entry["seconds"] = round(time.perf_counter() - start, 2)
    return entry


def compile_case(kernel: str, dtype: str, width: int, all_configs: bool = False) -> dict:
    """Compiles one case; returns {"id", "ok", "error", "compiled": [per-config reports]}.

    Autotuned kernels: the smallest of the configs the launcher's prune keeps (the one most likely to fit: if it does
    not compile, or needs more shared memory than an H100 has, no config does and the autotuner has nothing to run),
    or, with ``all_configs``, every one of them, the case passing if one compiles and fits.
    """
    result = {"id": case_id(kernel, dtype, width), "ok": False, "error": "", "compiled": []}
    try:
        fn, signature, values, constexprs, options = _specs(kernel, dtype, width)
        autotuned = options is None
        jit_fn = fn.fn if autotuned else fn
        configs = _pruned_configs(fn, {**values, **constexprs}, constexprs) if autotuned else [None]
        if autotuned and not all_configs:
            configs = [min(configs, key=_tile_size)]
        # keyword arguments of the launch that are runtime values, not constexprs (side_ffn's N)
        is_constexpr = {p.name: p.is_constexpr for p in jit_fn.params}
        for name in [n for n in constexprs if not is_constexpr[n]]:
            values[name] = constexprs.pop(name)
        missing = {n for n in jit_fn.arg_names if n not in signature and not is_constexpr[n]}
        if missing:
            raise KeyError(f"no signature type for runtime arguments {sorted(missing)} of {jit_fn.__name__}")
    except Exception as exc:  # noqa: BLE001 - reported per case
        result["error"] = "set-up failed: " + _short_error(exc) + "\n" + traceback.format_exc(limit=3)
        return result

    errors = []
    for config in configs:
        case_constexprs, case_options = dict(constexprs), dict(options or {})
        if config is not None:
            case_constexprs.update(config.kwargs)
            case_options.update(num_warps=config.num_warps, num_stages=config.num_stages)
        entry = _compile_one(jit_fn, signature, values, case_constexprs, case_options)
        result["compiled"].append(entry)
        if entry["ok"]:
            result["ok"] = True
            if not all_configs:
                break
        else:
            errors.append(f"[{entry['config']}] {entry['error']}")
    if not autotuned or not result["ok"]:
        result["error"] = "\n".join(errors)
    return result


def _compile_case(case):
    return compile_case(*case)


def run(cases, jobs: int) -> list[dict]:
    """``compile_case`` for every case (a tuple of its arguments), in ``jobs`` forked processes."""
    if jobs <= 1:
        return [compile_case(*case) for case in cases]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # Fork after the kernels are imported once, so workers do not each pay the torch / triton import.
    _specs(*cases[0][:3])
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("fork")) as pool:
        return list(pool.map(_compile_case, cases))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", help="write the per-case results here")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--only", help="regex on case ids")
    parser.add_argument("--all-configs", action="store_true", help="every pruned autotune config, not the first fit")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        print("TRITON_INTERPRET=1: kernels would be interpreter functions; unset it", file=sys.stderr)
        return 2
    problem = environment_problem()
    if problem:
        print(problem)
        return SKIP_EXIT
    cases = [(*c, args.all_configs) for c in CASES if not args.only or re.search(args.only, case_id(*c))]
    start = time.perf_counter()
    results = run(cases, args.jobs)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    for result in results:
        for entry in result["compiled"]:
            usage = (
                f"regs {entry['n_regs']:3d}  spills {entry['n_spills']:4d}  smem {entry['shared']:6d}"
                if "n_regs" in entry
                else "FAILED"
            )
            print(f"{result['id']:34s} {usage}  {entry['seconds']:6.2f}s  {entry['config']}")
        if not result["ok"]:
            print("    " + result["error"].strip().replace("\n", "\n    "))
    print(f"{len(results)} cases in {time.perf_counter() - start:.1f}s, {sum(not r['ok'] for r in results)} failed")
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
