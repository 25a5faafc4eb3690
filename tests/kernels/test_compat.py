"""``_compat.prune_by_registers``: the autotuning prune every autotuned kernel uses (the interpreter never calls it)."""

import torch
import triton

from hst_fast.kernels._compat import prune_by_registers

CONFIGS = [triton.Config({"BLOCK": block}, num_warps=warps) for block in (256, 128, 64, 32) for warps in (4, 8)]
# one [BLOCK, 64] tile, at most 16 values per thread
PRUNE = prune_by_registers(lambda meta: ((meta["BLOCK"] * meta["WIDTH"], 16),), keep=2)


def _blocks(configs):
    return [(c.kwargs["BLOCK"], c.num_warps) for c in configs]


def test_keeps_the_first_that_fit_in_order():
    # 64 * 64 / 128 threads = 32 > 16; 64 * 64 / 256 = 16 fits; 32 * 64 / 128 = 16 fits
    assert _blocks(PRUNE(CONFIGS, {"WIDTH": 64})) == [(64, 8), (32, 4)]


def test_falls_back_to_the_closest_when_none_fits():
    assert _blocks(PRUNE(CONFIGS, {"WIDTH": 1024})) == [(32, 8)]


def test_deterministic_mode_keeps_one():
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        assert _blocks(PRUNE(CONFIGS, {"WIDTH": 64})) == [(64, 8)]
    finally:
        torch.use_deterministic_algorithms(previous)
