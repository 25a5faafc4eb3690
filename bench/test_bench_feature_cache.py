"""Feature cache (frozen mode): the first epoch runs the ViT and writes the cache, later epochs read it.

One "epoch" is a forward + backward + AdamW step of the side network over every batch of a small
fixed dataset. ``extra_info`` records both epochs' seconds and the speedup (goal on CPU: >= 5x);
the timed function is the cached epoch.
"""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from bench import _harness as h

VIT_NAME = "vit_base_patch16_224"  # the classification config of the paper
NUM_IMAGES, BATCH, IMAGE, NUM_CLASSES = (256, 32, 224, 100) if h.SIZE == "full" else (16, 8, 224, 10)


def test_feature_cache_epochs(benchmark, tmp_path):
    from hst_fast import create_model
    from hst_fast.feature_cache import FeatureCache

    torch.manual_seed(0)
    model = create_model(VIT_NAME, num_classes=NUM_CLASSES, backbone_grad="none").to(h.DEVICE).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    images = torch.randn(NUM_IMAGES, 3, IMAGE, IMAGE, device=h.DEVICE)
    labels = torch.randint(0, NUM_CLASSES, (NUM_IMAGES,), device=h.DEVICE)
    cache = FeatureCache(tmp_path, model)

    def epoch() -> None:
        for start in range(0, NUM_IMAGES, BATCH):
            ids = list(range(start, start + BATCH))
            features = cache.block_features(model, ids, images[start:start + BATCH])
            stages = model.forward_stage_tokens(images[start:start + BATCH], features)
            loss = F.cross_entropy(model.forward_head(stages[-1][0]), labels[start:start + BATCH])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        h.sync()

    began = time.perf_counter()
    epoch()
    first = time.perf_counter() - began
    assert cache.misses == NUM_IMAGES and cache.hits == 0
    benchmark.group = "feature_cache"
    benchmark.pedantic(epoch, rounds=3, warmup_rounds=0)
    cached = h.median_seconds(benchmark)
    benchmark.extra_info.update(
        kind="feature_cache", model=VIT_NAME, images=NUM_IMAGES, batch=BATCH, image=IMAGE,
        first_epoch_s=first, cached_epoch_s=cached, speedup=first / cached if cached else None,
    )
