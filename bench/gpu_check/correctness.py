"""Phase 2: bf16 correctness of every op at the real HST shapes, forward and every gradient; determinism.

Per case, on the same bf16 inputs: an fp32 reference (the reference op on the inputs upcast to fp32), torch-bf16
(the reference op) and Triton (after NaN-poisoning the allocator). Errors against the fp32 reference, per tensor:
``rms`` = ||y - ref|| / ||ref|| and ``max`` = max|y - ref| / max|ref| (scales floored, see ``errors``). A Triton
tensor passes when it is finite and each error is at most max(RATIO x torch-bf16's, FLOOR); ``score`` is the largest
error / limit (<= 1 passes). (``--dry-run`` runs fp32 throughout: the fp32 "torch-bf16" equals the reference, so
Triton is held to FLOOR.)
Determinism: Triton's forward and backward run twice and are compared bitwise; ops whose backward adds with atomics
(``ATOMIC_BACKWARD``) must be bitwise deterministic under ``torch.use_deterministic_algorithms(True)`` instead, and
that path's outputs and gradients are checked against the reference too.
"""
from __future__ import annotations

import contextlib
import time
import traceback

import torch

from bench import _harness as h
from bench.gpu_check import cases as c

RATIO = 2.0
FLOOR = 2.0**-8  # one bf16 rounding (8 significant bits) relative to the tensor's scale
ATOMIC_BACKWARD = ("fg_injection",)
SMALL_BLOCK = 512 << 10  # below the caching allocator's 1 MiB small-pool limit


def short_error(error: BaseException) -> str:
    """The error's type and first non-empty line of its message, at most 300 characters."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[0] if lines else ''}"[:300]


def poison_allocator(nbytes: int) -> None:
    """Fills ``nbytes`` of fresh large-pool and 32 MiB of small-pool allocations with 0xFF bytes (a NaN in every
    float dtype) and frees them: the CUDA caching allocator hands these blocks to the next allocations, so an output
    element a kernel forgets to write reads as NaN. (On CPU, malloc may or may not reuse them.)"""
    blocks = [torch.empty(nbytes, dtype=torch.uint8, device=h.DEVICE)]
    blocks += [torch.empty(SMALL_BLOCK, dtype=torch.uint8, device=h.DEVICE) for _ in range(64)]
    for block in blocks:
        block.fill_(255)


def errors(y: torch.Tensor, ref: torch.Tensor, unit: float) -> dict[str, float]:
    """Relative RMS and max error of ``y`` against ``ref``, in fp64. The scales are ``ref``'s own, but at least
    ``unit`` per element: a tensor that is (nearly) zero in exact arithmetic, like the key bias's gradient (softmax
    ignores a shift shared by all keys), has only rounding noise to compare."""
    diff, ref = y.double() - ref.double(), ref.double()
    rms_scale, max_scale = max(ref.norm().item(), unit * ref.numel() ** 0.5), max(ref.abs().max().item(), unit)
    return {"rms": diff.norm().item() / rms_scale, "max": diff.abs().max().item() / max_scale}


def compare(names: list[str], triton: list, torch_bf16: list, fp32: list) -> list[dict]:
    """Per tensor: errors of Triton and torch-bf16 against fp32 (``errors``, the unit being the RMS per element of
    the op's fp32 output), finiteness, ``score`` (largest Triton error / its limit) and whether it passes."""
    unit = fp32[0].double().pow(2).mean().sqrt().item()
    rows = []
    for name, tri, ref16, ref32 in zip(names, triton, torch_bf16, fp32):
        tri_err, torch_err = errors(tri, ref32, unit), errors(ref16, ref32, unit)
        score = max(tri_err[k] / max(RATIO * torch_err[k], FLOOR) for k in tri_err)
        finite = bool(torch.isfinite(tri).all())
        rows.append({"tensor": name, "triton_rms": tri_err["rms"], "torch_rms": torch_err["rms"],
                     "triton_max": tri_err["max"], "torch_max": torch_err["max"], "finite": finite,
                     "score": score, "pass": finite and score <= 1.0})
    return rows


@contextlib.contextmanager
def deterministic_algorithms():
    """``torch.use_deterministic_algorithms(True, warn_only=True)``, restored after (warn_only: torch ops without a
    deterministic implementation warn instead of raising; the kernels read the flag)."""
    enabled = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(enabled, warn_only=warn_only)


def bitwise_equal(first: list, second: list) -> bool:
    return all(torch.equal(a, b) for a, b in zip(first, second))


def check_case(case: c.Case) -> dict:
    """Errors of every output and gradient, and determinism, of one case."""
    args = case.args()
    triton_op, reference = c.implementation(case.op, "triton", {}), c.implementation(case.op, "reference", {})
    fp32 = c.outputs(reference, c.upcast(args))
    torch_bf16 = c.outputs(reference, args)
    poison_bytes = 4 * sum(a.nbytes for a in args if isinstance(a, torch.Tensor))  # outputs, gradients, buffers
    poison_allocator(poison_bytes)
    triton = c.outputs(triton_op, args)
    names = ["out", *c.gradient_names(case.op, args)]
    tensors = compare(names, triton, torch_bf16, fp32)
    result = {"repeat_bitwise_equal": bitwise_equal(triton, c.outputs(triton_op, args))}
    if case.op in ATOMIC_BACKWARD:  # the deterministic path is checked like the default one, then repeated
        with deterministic_algorithms():
            poison_allocator(poison_bytes)
            triton = c.outputs(triton_op, args)
            tensors += compare([f"{name} (deterministic)" for name in names], triton, torch_bf16, fp32)
            result["deterministic_mode_bitwise_equal"] = bitwise_equal(triton, c.outputs(triton_op, args))
    result["deterministic"] = result.get("deterministic_mode_bitwise_equal", result["repeat_bitwise_equal"])
    passed = all(t["pass"] for t in tensors) and result["deterministic"]
    return {"status": "pass" if passed else "fail", "score": max(t["score"] for t in tensors), **result,
            "tensors": tensors}


def run(ctx, out: dict, clock) -> None:
    out.update(criterion=f"finite, and rms and max error vs fp32 <= max({RATIO:g} x torch-bf16's, {FLOOR:.3g})",
               floor=FLOOR, ratio=RATIO, atomic_backward=list(ATOMIC_BACKWARD), cases=[])
    for op in c.OPS:
        for case in c.cases(op):
            record = {"op": op, "case": case.case_id, "shape": case.shape, **case.info}
            out["cases"].append(record)
            if clock() <= 0:
                record["status"] = "skipped (phase budget)"
                continue
            start = time.perf_counter()
            try:
                record.update(check_case(case))
            except Exception as error:  # noqa: BLE001 - recorded per case, the check goes on
                record.update(status="error", error=short_error(error), traceback=traceback.format_exc(limit=4))
            record["seconds"] = time.perf_counter() - start
    statuses = [r["status"] for r in out["cases"]]
    scores = [r["score"] for r in out["cases"] if "score" in r]
    out["counts"] = {s: statuses.count(s) for s in sorted(set(statuses))}
    out["worst_score"] = max(scores, default=None)
    out["failures"] = statuses.count("fail") + statuses.count("error")
    nondeterministic = [r["case"] for r in out["cases"] if r.get("deterministic") is False]
    out["summary"] = (f"{len(statuses)} cases: {out['counts']}; worst error / limit "
                      f"{out['worst_score'] if out['worst_score'] is None else round(out['worst_score'], 3)}; "
                      f"not deterministic: {nondeterministic or 'none'}")
