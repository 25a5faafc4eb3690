"""Kernel-test set-up: fresh buffers start as NaN, so anything a kernel forgets to write shows up."""
import pytest
import torch


@pytest.fixture(autouse=True)
def nan_filled_empty(monkeypatch):
    """Every float buffer from ``torch.empty``/``empty_like`` (launchers' outputs, partial sums) starts as NaN."""
    empty, empty_like = torch.empty, torch.empty_like

    def nan_empty(*args, **kwargs):
        out = empty(*args, **kwargs)
        return out.fill_(float("nan")) if out.is_floating_point() else out

    def nan_empty_like(*args, **kwargs):
        out = empty_like(*args, **kwargs)
        return out.fill_(float("nan")) if out.is_floating_point() else out

    monkeypatch.setattr(torch, "empty", nan_empty)
    monkeypatch.setattr(torch, "empty_like", nan_empty_like)
