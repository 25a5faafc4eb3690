"""Two gloo processes with batch b each compute what one process computes with batch 2b over the same samples:
the same loss at every iteration and the same final weights (relative 1e-5), BatchNorm statistics included
(``sync_bn='torch'`` in configs/cls_demo.py: ``GlooSyncBatchNorm`` on CPU, ``hst_fast.openmmlab.dist``)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

pytest.importorskip("mmdet.models", reason="mmdet (with mmcv ops) is not installed; `make install` builds it")

from det_helpers import CONFIGS, REPO, as_cli, tiny_cls_options  # noqa: E402

import hst_fast.openmmlab  # noqa: E402,F401  (torch.load's allow-list for mmengine checkpoints)
from hst_fast.openmmlab.dist import GlooSyncBatchNorm, convert_gloo_sync_batchnorm  # noqa: E402

BATCH = 4  # per process; the one-process run takes 2 * BATCH


def logged_losses(work: Path) -> list:
    """The loss logged at each iteration (``vis_data/scalars.json``: one line per logged iteration)."""
    lines = sorted(work.glob("*/vis_data/scalars.json"))[-1].read_text().splitlines()
    return [(record["step"], record["loss"]) for record in map(json.loads, lines) if "loss" in record]


def relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def test_two_processes_with_batch_b_equal_one_process_with_batch_2b(tmp_path):
    # One epoch of 32 images: 4 iterations either way (longer runs drift apart in float32 rounding: the stem's
    # conv -> BatchNorm -> conv -> LayerNorm cancels most of its gradient, amplifying rounding differences).
    # DefaultSampler shuffles one permutation (seeded by sampler seed + epoch) and gives rank r its elements r,
    # r+2, r+4...: the two batches of b at an iteration are exactly the one-process batch of 2b there (its
    # consecutive elements).
    # SGD rather than the config's AdamW: Adam divides each coordinate by its own gradient scale, so gradients that
    # are zero in exact arithmetic (the attention key biases: softmax ignores a shift shared by all keys; the last
    # stage norm, whose per-channel shift and scale the BatchNorm1d head norm cancels) turn their rounding noise,
    # which differs with any change of summation order, into lr-sized steps in those directions (measured: up to
    # 2.6e-3 apart, the loss unchanged). SGD moves every weight by its gradient, which is what DDP must reproduce.
    options = {**tiny_cls_options(tmp_path / "data", max_epochs=1, num_train=32), "train_dataloader.sampler.seed": 0,
               "log_processor.window_size": 1, "optim_wrapper.optimizer.type": "SGD",
               "optim_wrapper.optimizer.lr": 0.02, "optim_wrapper.optimizer.momentum": 0.9}
    env = dict(os.environ, OMP_NUM_THREADS="1")
    one = [sys.executable, "-m", "hst_fast.train", str(CONFIGS / "cls_demo.py"), "--work-dir", str(tmp_path / "one"),
           *as_cli({**options, "train_dataloader.batch_size": 2 * BATCH})]
    two = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "hst_fast.train", str(CONFIGS / "cls_demo.py"), "--launcher", "pytorch",
           "--work-dir", str(tmp_path / "two"), *as_cli({**options, "train_dataloader.batch_size": BATCH})]
    runs = [subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
                             cwd=REPO) for command in (one, two)]
    for run in runs:
        _, errors = run.communicate(timeout=600)
        assert run.returncode == 0, errors[-3000:]

    one_losses, two_losses = logged_losses(tmp_path / "one"), logged_losses(tmp_path / "two")
    assert len(one_losses) == 4 and [s for s, _ in one_losses] == [s for s, _ in two_losses]
    for (step, expected), (_, actual) in zip(one_losses, two_losses):
        assert actual == pytest.approx(expected, rel=1e-5), f"iteration {step}"

    reference = torch.load(tmp_path / "one" / "epoch_1.pth")["state_dict"]
    distributed = torch.load(tmp_path / "two" / "epoch_1.pth")["state_dict"]
    assert distributed.keys() == reference.keys()
    compared = 0
    for name, value in reference.items():  # weights and BatchNorm running statistics
        if not value.is_floating_point():
            continue
        if value.abs().max() < 1e-7:  # a zero-gradient parameter (above): only rounding noise around its zero init
            assert (distributed[name] - value).abs().max() < 1e-7, name
            continue
        assert relative_difference(distributed[name], value) <= 1e-5, name
        compared += 1
    assert compared > 100


def _sync_batchnorm_rank(rank: int, store: str) -> None:
    """Rank ``rank`` of 2 normalizes its half (rows rank, rank+2...) of a float64 batch; outputs, input and
    parameter gradients and running statistics must equal BatchNorm2d's over the whole batch."""
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        generator = torch.Generator().manual_seed(0)
        x = torch.randn(8, 6, 5, 7, generator=generator, dtype=torch.float64) * 3 + 1
        grad = torch.randn(8, 6, 5, 7, generator=generator, dtype=torch.float64)
        reference = torch.nn.BatchNorm2d(6).double()
        with torch.no_grad():
            reference.weight.uniform_(0.5, 1.5, generator=generator)
            reference.bias.normal_(generator=generator)
        synced = convert_gloo_sync_batchnorm(torch.nn.Sequential(torch.nn.BatchNorm2d(6).double()))[0]
        synced.load_state_dict(reference.state_dict())
        assert isinstance(synced, GlooSyncBatchNorm)
        whole = x.clone().requires_grad_()
        expected = reference(whole)
        (expected * grad).sum().backward()
        half = x[rank::2].clone().requires_grad_()
        out = synced(half)
        (out * grad[rank::2]).sum().backward()
        torch.testing.assert_close(out, expected[rank::2], rtol=0, atol=1e-12)
        torch.testing.assert_close(half.grad, whole.grad[rank::2], rtol=0, atol=1e-12)
        for name in ("weight", "bias"):  # per-rank sums: DDP adds (averages) them over ranks
            total = getattr(synced, name).grad.clone()
            dist.all_reduce(total)
            torch.testing.assert_close(total, getattr(reference, name).grad, rtol=0, atol=1e-12)
        for name in ("running_mean", "running_var"):
            torch.testing.assert_close(getattr(synced, name), getattr(reference, name), rtol=0, atol=1e-12)
    finally:
        dist.destroy_process_group()


def test_gloo_sync_batchnorm_equals_batchnorm_over_the_whole_batch(tmp_path):
    # spawn, not fork: a child forked from a process whose OpenMP pool already ran (the rest of the suite)
    # deadlocks in its first parallel op (libgomp is not fork-safe).
    mp.start_processes(_sync_batchnorm_rank, args=(str(tmp_path / "store"),), nprocs=2, start_method="spawn")
