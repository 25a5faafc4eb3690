"""Adapters hold only what a task trains, round-trip exactly and refuse what does not fit."""
import json

import pytest
import torch
from safetensors.torch import load_file

import hst_fast
from hst_fast.adapter import CONFIG_NAME, WEIGHTS_NAME, AdapterError

TINY_VIT = dict(embed_dim=48, depth=4, num_heads=3)


def make_model(seed=0, **kwargs):
    torch.manual_seed(seed)
    return hst_fast.create_model("vit_base_patch16_224", num_classes=5, kernel_backend="torch", **TINY_VIT, **kwargs)


def trained_model():
    """A model whose trainable tensors and BatchNorm statistics moved away from init."""
    model = make_model()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model.train()
    model(torch.randn(4, 3, 64, 64)).logsumexp(dim=1).sum().backward()
    optimizer.step()
    return model


def test_round_trip_is_exact(tmp_path):
    source = trained_model()
    source.save_adapter(tmp_path)
    target = make_model()  # same seed: the same frozen backbone
    hst_fast.load_adapter(target, tmp_path)
    for key, tensor in source.state_dict().items():
        assert torch.equal(tensor, target.state_dict()[key]), key
    images = torch.randn(2, 3, 64, 64)
    assert torch.equal(source.eval()(images), target.eval()(images))


def test_adapter_holds_only_trained_tensors_and_side_bn_stats(tmp_path):
    model = trained_model()
    model.save_adapter(tmp_path)
    saved = load_file(str(tmp_path / WEIGHTS_NAME))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    buffers = set(saved) - trainable
    assert trainable <= set(saved)
    assert buffers == {n for n, _ in model.named_buffers() if "running_" in n or "num_batches" in n}
    config = json.loads((tmp_path / CONFIG_NAME).read_text())
    assert config["model"]["vit_name"] == "vit_base_patch16_224" and config["model"]["task"] == "cls"
    assert {"hst_fast", "torch", "timm"} <= set(config["versions"])


def test_different_backbone_is_refused_unless_forced(tmp_path):
    trained_model().save_adapter(tmp_path)
    other = make_model(seed=1)
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(AdapterError, match="different frozen backbone"):
        hst_fast.load_adapter(other, tmp_path)
    assert all(torch.equal(before[k], v) for k, v in other.state_dict().items())
    hst_fast.load_adapter(other, tmp_path, force=True)


def test_different_architecture_is_refused(tmp_path):
    trained_model().save_adapter(tmp_path)
    with pytest.raises(AdapterError, match="num_meta_tokens"):
        hst_fast.load_adapter(make_model(num_meta_tokens=2), tmp_path)


@pytest.mark.parametrize("damage", ["truncate", "flip-byte"])
def test_damaged_weights_are_an_error_not_a_partial_load(tmp_path, damage):
    trained_model().save_adapter(tmp_path)
    path = tmp_path / WEIGHTS_NAME
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    else:
        data[-3] ^= 0xFF
    path.write_bytes(bytes(data))
    target = make_model()
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(AdapterError, match="corrupted or truncated"):
        hst_fast.load_adapter(target, tmp_path)
    assert all(torch.equal(before[k], v) for k, v in target.state_dict().items())


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(FileNotFoundError, match=CONFIG_NAME):
        hst_fast.load_adapter(make_model(), tmp_path)
    (tmp_path / CONFIG_NAME).write_text("{not json")
    with pytest.raises(AdapterError, match="not valid JSON"):
        hst_fast.load_adapter(make_model(), tmp_path)
