"""Bad input to ``create_model`` is an error that names the problem: a pretrained file that cannot be read
(truncated, damaged, not a checkpoint) names the file and the format it should have, and ends the train CLI with
exit status 2 and that message alone; an HST-only option given to a baseline names the option and the method."""
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Dict

import pytest
import timm
import torch
from safetensors.torch import save_file
from test_pretrained import save_jax_npz

import hst_fast
from hst_fast.baselines import METHODS
from hst_fast.vit.lean_block import LeanBlock

REPO = Path(__file__).resolve().parents[1]
VIT_NAME = "vit_tiny_patch16_224"
VIT_KWARGS = dict(depth=4)
# What each suffix create_model reads must hold, as the error for an unreadable file says it.
FORMATS = {".pth": "torch.save checkpoint", ".pt": "torch.save checkpoint", ".bin": "torch.save checkpoint",
           ".safetensors": ".safetensors file", ".npz": ".npz archive"}


def create(pretrained: Path, **kwargs) -> torch.nn.Module:
    return hst_fast.create_model(VIT_NAME, pretrained=str(pretrained), kernel_backend="torch", **VIT_KWARGS, **kwargs)


@pytest.fixture(scope="module")
def source_vit() -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model(VIT_NAME, **VIT_KWARGS)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, source_vit) -> Dict[str, Path]:
    """{suffix: a readable checkpoint of ``source_vit`` in that format}."""
    folder = tmp_path_factory.mktemp("checkpoints")
    state = {key: tensor.contiguous() for key, tensor in source_vit.state_dict().items()}
    paths = {suffix: folder / f"vit{suffix}" for suffix in FORMATS}
    for suffix, path in paths.items():
        if suffix == ".safetensors":
            save_file(state, str(path))
        elif suffix == ".npz":
            save_jax_npz(source_vit, path)
        else:
            torch.save(state, path)
    return paths


def unreadable(path: Path) -> str:
    """The start of the error for ``path``, as a regular expression."""
    return rf"pretrained checkpoint \S*{path.name} is not a readable {FORMATS[path.suffix]} \(truncated"


@pytest.mark.parametrize("suffix", FORMATS)
def test_readable_checkpoint_loads(checkpoints, source_vit, suffix):
    expected = source_vit.state_dict()
    for key, tensor in create(checkpoints[suffix]).vit.state_dict().items():
        assert torch.equal(tensor, expected[key]), key


@pytest.mark.parametrize("suffix", FORMATS)
def test_truncated_checkpoint_names_the_file_and_its_format(checkpoints, tmp_path, suffix):
    path = tmp_path / f"truncated{suffix}"
    data = checkpoints[suffix].read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=unreadable(path)) as info:
        create(path)
    assert info.value.__cause__ is not None  # the reader's own error, shown by the CLI's --debug


@pytest.mark.parametrize("name, content", [
    ("bytes.pth", bytes(range(256)) * 16),
    ("text.pt", b"not a checkpoint\n" * 64),
    ("empty.safetensors", b""),
    ("text.npz", b"not an archive"),
], ids=["bytes-pth", "text-pt", "empty-safetensors", "text-npz"])
def test_file_that_is_no_checkpoint_is_unreadable_not_mismatched(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ValueError, match=unreadable(path)):
        create(path)


def test_pickle_that_is_no_state_dict_is_unreadable(tmp_path):
    path = tmp_path / "list.pth"
    torch.save([1, 2, 3], path)
    with pytest.raises(ValueError, match=unreadable(path)):
        create(path)


def test_npz_with_a_damaged_array_is_refused_before_loading(checkpoints, tmp_path):
    """The archive's directory is intact; one array's bytes are not (its CRC fails only when it is read)."""
    source = checkpoints[".npz"]
    with zipfile.ZipFile(source) as archive:
        largest = max(archive.infolist(), key=lambda info: info.file_size)
    data = bytearray(source.read_bytes())
    middle = largest.header_offset + 30 + len(largest.filename) + largest.file_size // 2  # inside the array's data
    data[middle:middle + 16] = bytes(255 - byte for byte in data[middle:middle + 16])
    path = tmp_path / "damaged.npz"
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=unreadable(path) + r".*Bad CRC-32"):
        create(path)


def test_train_cli_exits_2_naming_an_unreadable_pretrained_file(checkpoints, tmp_path):
    pytest.importorskip("mmdet.models", reason="mmdet (with mmcv ops) is not installed; `make install` builds it")
    path = tmp_path / "truncated.safetensors"
    path.write_bytes(checkpoints[".safetensors"].read_bytes()[:100])
    command = [sys.executable, "-m", "hst_fast.train", str(REPO / "configs" / "cls_demo.py"),
               "--work-dir", str(tmp_path / "work"), "--cfg-options", f"model.pretrained={path}",
               "model.kernel_backend=torch"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path,
                            env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO)))
    output = result.stdout + result.stderr
    assert result.returncode == 2, output[-3000:]
    assert f"hst_fast.train: error: pretrained checkpoint {path} is not a readable .safetensors file" in result.stderr
    assert "Traceback" not in output


# ----------------------------------------------------------------------------- HST-only options
@pytest.mark.parametrize("value", [False, "mlp", True])
@pytest.mark.parametrize("method", METHODS)
def test_grad_checkpointing_for_a_baseline_names_the_method(method, value):
    with pytest.raises(ValueError, match=rf"\['grad_checkpointing'\] apply to method='hst' only, not '{method}'"):
        hst_fast.create_model(VIT_NAME, method=method, grad_checkpointing=value, num_classes=3, **VIT_KWARGS)


@pytest.mark.parametrize("method", ("hst",) + tuple(METHODS))
def test_default_grad_checkpointing_is_the_methods_own(method):
    model = hst_fast.create_model(VIT_NAME, method=method, num_classes=3, kernel_backend="torch", **VIT_KWARGS)
    lean_blocks = sum(isinstance(block, LeanBlock) for block in model.vit.blocks)
    assert lean_blocks == (len(model.vit.blocks) if method == "hst" else 0)  # HST's default: 'mlp'


def test_explicit_grad_checkpointing_reaches_hst():
    model = hst_fast.create_model(VIT_NAME, grad_checkpointing=False, kernel_backend="torch", **VIT_KWARGS)
    assert not any(isinstance(block, LeanBlock) for block in model.vit.blocks)
