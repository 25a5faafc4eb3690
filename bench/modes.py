"""Saved activations, peak memory and step time of each training mode, beside the released code:
``python -m bench.modes [--against-released PATH] [--cases ...] [--rounds N] [--device cuda]``.

Models: hst_fast's modes (ViT-B/16, defaults otherwise) faithful (``backbone_grad='full'``, with the default
``grad_checkpointing='mlp'``), faithful without it (``grad_checkpointing=False``), faithful + checkpointing
(``grad_checkpointing=True``), frozen (``backbone_grad='none'``) and frozen + feature cache; with
``--against-released PATH`` (the released code's ``models/`` folder, see ``bench/released.py``) also the authors'
``ViT_HSN`` in the same configuration. Cases: issue 16's det 512px B=1 and cls 224px B=8 (default), and cls 224px
B=32, det 1024px B=1. fp32, train mode, random weights and images (memory and time do not depend on the values).

- autograd-saved MiB: the bytes autograd keeps for backward during one forward, counted over unique storages seen by
  ``saved_tensors_hooks``, the model's parameters excluded. Non-reentrant checkpointing keeps each ViT block's input
  in its recompute closure, out of the hooks' sight: 'faithful + checkpointing' misses one [B, N, D] per block.
- peak MiB (CUDA only): ``torch.cuda.max_memory_allocated`` over one forward + backward, weights included.
- step s: one forward + backward (the loss, a fixed random projection of the four stage outputs [B, H_s*W_s, d_s],
  is computed outside the counted region); every model is timed once per round, the order rotating each round, all
  in one process; the median over rounds. 'x released' is the median over rounds of released time / mode time; on
  CPU also in process CPU time ('x released, CPU time'), which other processes on a shared machine disturb less.

Prints a markdown table; set ``OMP_NUM_THREADS`` as wanted on CPU.
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import time
from typing import Callable, Dict, Iterator, List, Optional

import torch
import torch.nn as nn
from torch.autograd.graph import saved_tensors_hooks

from bench.released import ReleasedCodeError, build_released, check_folder, load_released, stage_tokens
from hst_fast import create_model
from hst_fast.feature_cache import FeatureCache

MODES = {
    "faithful": dict(),  # grad_checkpointing='mlp', the default
    "faithful, no mlp recompute": dict(grad_checkpointing=False),
    "faithful + checkpointing": dict(grad_checkpointing=True),
    "frozen": dict(backbone_grad="none"),
    "frozen + cache": dict(backbone_grad="none"),
}
RELEASED = "released (ViT_HSN)"
CASES = {
    "det 512px B=1": ("det", 512, 1),
    "cls 224px B=8": ("cls", 224, 8),
    "cls 224px B=32": ("cls", 224, 32),
    "det 1024px B=1": ("det", 1024, 1),
}
DEFAULT_CASES = ["det 512px B=1", "cls 224px B=8"]
StageTokens = Callable[[torch.Tensor], List[torch.Tensor]]  # images -> the four stage outputs [B, H_s*W_s, d_s]


@contextlib.contextmanager
def counting_saved(saved: Optional[Dict[int, int]], model: nn.Module) -> Iterator[None]:
    """Records {storage address: bytes} of every non-parameter tensor autograd saves meanwhile into ``saved``."""
    if saved is None:
        yield
        return
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weights:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    with saved_tensors_hooks(pack, lambda tensor: tensor):
        yield


def hst_stage_tokens(model: nn.Module, cache: Optional[FeatureCache]) -> StageTokens:
    """hst_fast's ``forward_stage_tokens``, fed from ``cache`` when given."""

    def run(images: torch.Tensor) -> List[torch.Tensor]:
        features = cache.block_features(model, list(range(len(images))), images) if cache else None
        return [tokens for tokens, _ in model.forward_stage_tokens(images, features)]

    return run


def released_stage_tokens(vit_hsn, task: str, image: int, num_classes: int, device: torch.device):
    """(model, StageTokens) of the released ``ViT_HSN`` in the case's configuration (``bench/released.py``)."""
    model = build_released(vit_hsn, task, image, num_classes).to(device).train()
    return model, lambda images: stage_tokens(model, images)


def step(model: nn.Module, run: StageTokens, images: torch.Tensor, projections: List[torch.Tensor],
         saved: Optional[Dict[int, int]] = None) -> None:
    """One forward + backward; with ``saved``, records what autograd keeps during the forward."""
    with counting_saved(saved, model):
        outputs = run(images)
    loss = sum((out * projection).sum() for out, projection in zip(outputs, projections))
    for p in model.parameters():
        p.grad = None
    loss.backward()
    if images.is_cuda:
        torch.cuda.synchronize()


def measure_case(case: str, rounds: int, device: torch.device, released_path: Optional[str], cache_dir: str) -> None:
    """Builds every model of ``case``, measures it and prints its table rows."""
    task, image, batch = CASES[case]
    num_classes = 100 if task == "cls" else 0
    models: Dict[str, tuple] = {}
    for mode, kwargs in MODES.items():  # hst_fast's models first (bench/released.py: the registry stays intact)
        torch.manual_seed(0)
        model = create_model("vit_base_patch16_224", task=task, num_classes=num_classes, **kwargs).to(device).train()
        cache = FeatureCache(f"{cache_dir}/{case}", model) if mode.endswith("cache") else None
        models[mode] = (model, hst_stage_tokens(model, cache))
    if released_path is not None:
        models[RELEASED] = released_stage_tokens(load_released(released_path), task, image, num_classes, device)

    generator = torch.Generator(device=device).manual_seed(0)
    images = torch.randn(batch, 3, image, image, device=device, generator=generator)
    with torch.no_grad():
        shapes = [out.shape for out in models["frozen"][1](images)]
    projections = [torch.randn(shape, device=device, generator=generator) for shape in shapes]

    saved_mb, peak_mb = {}, {}
    seconds, cpu_seconds = {name: [] for name in models}, {name: [] for name in models}
    for name, (model, run) in models.items():
        step(model, run, images, projections)  # warm-up: fills the cache, allocates, autotunes kernels
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        saved: Dict[int, int] = {}
        step(model, run, images, projections, saved)
        saved_mb[name] = sum(saved.values()) / 2**20
        peak_mb[name] = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None
    names = list(models)
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            began, cpu_began = time.perf_counter(), time.process_time()
            step(*models[name], images, projections)
            seconds[name].append(time.perf_counter() - began)
            cpu_seconds[name].append(time.process_time() - cpu_began)

    for name, (model, _) in models.items():
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        row = [case, name, f"{trainable:,}", f"{statistics.median(seconds[name]):.2f}"]
        if released_path is not None:
            for times in (seconds, cpu_seconds) if device.type == "cpu" else (seconds,):
                row += [f"{statistics.median(a / b for a, b in zip(times[RELEASED], times[name])):.2f}x"]
            row += [f"{saved_mb[name]:.0f}", f"{saved_mb[name] / saved_mb[RELEASED]:.2f}x"]
        else:
            row += [f"{saved_mb[name]:.0f}"]
        row += [f"{peak_mb[name]:.0f}" if peak_mb[name] is not None else "n/a (CPU)"]
        print("| " + " | ".join(row) + " |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against-released", metavar="PATH",
                        help="the released code's models/ folder (AFeng-x/HST): adds its ViT_HSN beside hst_fast")
    parser.add_argument("--cases", nargs="+", default=DEFAULT_CASES, choices=list(CASES))
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds (each times every model once)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error(f"--rounds must be >= 1, got {args.rounds}")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    if args.against_released is not None:
        try:
            check_folder(args.against_released)
        except ReleasedCodeError as error:
            parser.error(f"--against-released: {error}")
    columns = ["case", "mode", "trainable", "step s"]
    if args.against_released is not None:
        columns += ["x released"] + (["x released, CPU time"] if device.type == "cpu" else [])
        columns += ["autograd-saved MiB", "saved / released"]
    else:
        columns += ["autograd-saved MiB"]
    columns += ["peak MiB"]
    print(f"device {device}, {torch.get_num_threads()} threads, {args.rounds} rounds, fp32, train mode")
    print("| " + " | ".join(columns) + " |\n|" + "---|" * len(columns), flush=True)
    with tempfile.TemporaryDirectory() as cache_dir:
        for case in args.cases:
            try:
                measure_case(case, args.rounds, device, args.against_released, cache_dir)
            except ReleasedCodeError as error:
                parser.error(f"--against-released: {error}")


if __name__ == "__main__":
    main()
