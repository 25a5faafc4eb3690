"""``python -m bench.gpu_check``: correctness and performance of hst_fast's kernels on one GPU, within a budget.

Run from the checkout's root, without installing (``PYTHONPATH=. python -m bench.gpu_check --out bench/results``).
Phases, each a module here, the JSON rewritten after every one:

1. ``environment``: versions, GPU, SMs, L2, NVML clocks/power/MIG, copy bandwidth, bf16 GEMM peak.
2. ``correctness``: every op, forward and every gradient, at the real HST shapes: Triton's and torch-bf16's errors
   against an fp32 reference on the same inputs; NaN-poisoned allocations; bitwise determinism of the backward.
3. ``sweep``: every config of every Triton autotuner, pinned in turn, at three widths: compile errors, errors, times.
4. ``performance``: Triton vs eager vs torch.compile, fwd / bwd / fwd+bwd, L2 flushed; a side block; a profiler
   breakdown; the autotuners' choices; the dispatch table for ``kernel_backend='auto'``.
5. ``train``: ViT-B HST train steps (faithful, frozen) against the released-code-equivalent eager model.
6. ``outputs``: ``<gpu>.json``, ``<gpu>.md`` (+ plots), ``dispatch.json``.

``--dry-run`` runs the same code on CPU at small shapes under Triton's interpreter. Nothing here imports torch or
hst_fast at import time: ``__main__`` first sets the environment and makes ``hst_fast.kernels`` importable (``shim``).
"""
