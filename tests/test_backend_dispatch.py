"""``kernel_backend='auto'`` with a dispatch table (``hst_fast.backend.load_dispatch``), on CPU.

CUDA is faked where 'auto' asks for it (``torch.cuda.is_available``, ``get_device_name``) and inputs are stand-ins
with ``is_cuda`` and ``shape``; the ops are recording fakes, so the test checks which implementation runs.
"""
import json
from types import SimpleNamespace

import pytest

from hst_fast import backend
from hst_fast.kernels._compat import UnsupportedInput

GPU = "NVIDIA Fake GPU"
TABLE = {
    "format": backend.DISPATCH_FORMAT,
    "devices": {GPU: {"ops": {"side_ffn": {"64": "triton", "384": "torch"}, "layer_norm": {"768": "torch"}}},
                "Another GPU": {"ops": {"side_ffn": {"64": "torch"}}}},
}


def write_table(tmp_path, table=TABLE):
    path = tmp_path / "dispatch.json"
    path.write_text(json.dumps(table))
    return path


def test_load_dispatch(tmp_path):
    path = write_table(tmp_path)
    assert backend.load_dispatch(lambda: GPU, path) == {"side_ffn": {64: True, 384: False}, "layer_norm": {768: False}}
    assert backend.load_dispatch(lambda: "Unlisted GPU", path) == {}


def test_no_table_never_asks_for_the_device(tmp_path):
    def no_device():
        raise AssertionError("the device name was queried without a table")

    assert backend.load_dispatch(no_device, tmp_path / "missing.json") == {}


@pytest.mark.parametrize("table", [
    {"format": "something else", "devices": {}},
    {"format": backend.DISPATCH_FORMAT, "devices": {GPU: {"ops": {"side_ffn": {"64": "cuda"}}}}},
    {"format": backend.DISPATCH_FORMAT, "devices": {GPU: {"ops": {"side_ffn": {"wide": "torch"}}}}},
    {"format": backend.DISPATCH_FORMAT},
], ids=["format", "choice", "width", "no-devices"])
def test_malformed_table_raises(tmp_path, table):
    with pytest.raises(ValueError, match="malformed kernel dispatch table"):
        backend.load_dispatch(lambda: GPU, write_table(tmp_path, table))


def fake_ops(name: str, calls: list, unsupported_width: int = -1) -> backend.KernelOps:
    """KernelOps whose functions record (name, op, width); the Triton fakes reject ``unsupported_width``."""

    def make(op):
        def run(x, *args, **kwargs):
            if x.shape[-1] == unsupported_width:
                raise UnsupportedInput(f"{op}: width {unsupported_width}")
            calls.append((name, op, x.shape[-1]))
            return name

        return run

    return backend.KernelOps(name, **{op: make(op) for op in backend.OP_NAMES})


@pytest.fixture
def auto_ops(tmp_path, monkeypatch):
    """``resolve_ops('auto')`` on a faked CUDA machine named GPU, the table in $HST_DISPATCH_TABLE; and its calls."""
    calls: list = []
    monkeypatch.setattr(backend.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(backend.torch.cuda, "get_device_name", lambda: GPU)
    monkeypatch.setattr(backend, "triton_ops", lambda: fake_ops("triton", calls, unsupported_width=96))
    monkeypatch.setattr(backend, "reference_ops", lambda: fake_ops("torch", calls))
    monkeypatch.setenv(backend.DISPATCH_TABLE_ENV, str(write_table(tmp_path)))
    return backend.resolve_ops("auto"), calls


def cuda(width: int, is_cuda: bool = True):
    return SimpleNamespace(is_cuda=is_cuda, shape=(2, 10, width))


@pytest.mark.parametrize("op, width, is_cuda, expected", [
    ("side_ffn", 64, True, "triton"),  # the table: Triton
    ("side_ffn", 384, True, "torch"),  # the table: the reference
    ("side_ffn", 128, True, "triton"),  # a width the table does not list: Triton, as without a table
    ("layer_norm", 768, True, "torch"),
    ("side_attention", 768, True, "triton"),  # an op the table does not list
    ("side_ffn", 64, False, "torch"),  # CPU tensors: always the reference
    ("side_ffn", 96, True, "torch"),  # the kernel raises UnsupportedInput: fallback
])
def test_auto_follows_the_table(auto_ops, op, width, is_cuda, expected):
    ops, calls = auto_ops
    assert getattr(ops, op)(cuda(width, is_cuda)) == expected
    assert calls == [(expected, op, width)]


def test_auto_without_table_uses_triton_on_cuda(auto_ops, monkeypatch, tmp_path):
    monkeypatch.setenv(backend.DISPATCH_TABLE_ENV, str(tmp_path / "missing.json"))
    ops = backend.resolve_ops("auto")
    assert ops.side_ffn(cuda(384)) == "triton" and ops.layer_norm(cuda(768)) == "triton"
