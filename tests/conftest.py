"""Test set-up shared by every test module.

Triton chooses between its compiler and its CPU interpreter when a kernel is decorated, so
``TRITON_INTERPRET`` is set here, before any test imports ``hst_fast.kernels``.
"""
import os
import random
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures"


@pytest.fixture(autouse=True)
def _seed():
    random.seed(0)
    torch.manual_seed(0)


@pytest.fixture
def fixtures_dir() -> Path:
    """``../shared/fixtures`` beside the checkout; tests needing it skip in a user's clone."""
    if not FIXTURES.is_dir():
        pytest.skip(f"released-code fixtures not found at {FIXTURES} (only present beside the project checkout)")
    return FIXTURES
