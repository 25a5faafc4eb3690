"""Peak memory and step time of each training mode: ``python -m bench.modes [--device cuda] [--quick]``.

Modes: faithful, faithful + checkpointing, frozen, frozen + feature cache (ViT-B/16), at
classification 224px B=32 and one detection-size input 1024px B=1. One step is forward, backward
and AdamW over the trainable parameters. Memory: peak allocated on CUDA; everywhere, the bytes
autograd keeps for backward (unique non-parameter storages seen by ``saved_tensors_hooks``): what the
modes change. Prints a markdown table.
"""
from __future__ import annotations

import argparse
import tempfile
import time

import torch
from torch.autograd.graph import saved_tensors_hooks

from hst_fast.feature_cache import FeatureCache
from hst_fast import create_model

MODES = {
    "faithful": dict(),
    "faithful + checkpointing": dict(grad_checkpointing=True),
    "frozen": dict(backbone_grad="none"),
    "frozen + cache": dict(backbone_grad="none"),
}
CASES = {"cls 224px B=32": ("cls", 224, 32), "det 1024px B=1": ("det", 1024, 1)}


def measure(mode: str, task: str, image: int, batch: int, device: torch.device, cache_dir: str) -> dict:
    torch.manual_seed(0)
    model = create_model("vit_base_patch16_224", task=task, num_classes=100 if task == "cls" else 0,
                         **MODES[mode]).to(device).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    images = torch.randn(batch, 3, image, image, device=device)
    cache = FeatureCache(cache_dir, model) if mode.endswith("cache") else None
    generator = torch.Generator(device=device).manual_seed(0)
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}  # saved, but not activations

    def step(saved: dict) -> None:
        def keep(tensor: torch.Tensor) -> torch.Tensor:
            storage = tensor.untyped_storage()
            if storage.data_ptr() not in weights:
                saved[storage.data_ptr()] = storage.nbytes()
            return tensor

        features = cache.block_features(model, list(range(batch)), images) if cache else None
        with saved_tensors_hooks(keep, lambda t: t):
            stages = model.forward_stage_tokens(images, features)
            loss = sum((x * torch.randn(x.shape, device=device, generator=generator)).sum() for x, _ in stages)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()

    step({})  # warm-up: fills the cache, allocates optimizer state, autotunes kernels
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    saved: dict = {}
    began = time.perf_counter()
    step(saved)
    seconds = time.perf_counter() - began
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None
    return dict(seconds=seconds, saved_mb=sum(saved.values()) / 2**20, peak_mb=peak)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--cases", nargs="*", default=list(CASES), choices=list(CASES))
    args = parser.parse_args()
    device = torch.device(args.device)
    print("| case | mode | step s | autograd-saved MB | peak MB |\n|---|---|---|---|---|")
    for case in args.cases:
        task, image, batch = CASES[case]
        for mode in MODES:
            with tempfile.TemporaryDirectory() as cache_dir:
                r = measure(mode, task, image, batch, device, cache_dir)
            peak = f"{r['peak_mb']:.0f}" if r["peak_mb"] is not None else "n/a (CPU)"
            print(f"| {case} | {mode} | {r['seconds']:.2f} | {r['saved_mb']:.0f} | {peak} |", flush=True)


if __name__ == "__main__":
    main()
