"""``pretrained=`` loads a local timm ViT checkpoint through timm, strictly, never downloading."""
import pytest
import timm
import torch
from safetensors.torch import save_file

import hst_fast

VIT_KWARGS = dict(embed_dim=48, depth=4, num_heads=3)


@pytest.fixture
def timm_vit():
    torch.manual_seed(3)
    return timm.create_model("vit_base_patch16_224", pretrained=False, **VIT_KWARGS)  # with its 1000-class head


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_local_checkpoint_loads_into_the_vit(tmp_path, timm_vit, suffix):
    path = tmp_path / f"vit{suffix}"
    state = {k: v.contiguous() for k, v in timm_vit.state_dict().items()}
    torch.save(state, path) if suffix == ".pth" else save_file(state, str(path))
    model = hst_fast.create_model("vit_base_patch16_224", pretrained=str(path), kernel_backend="torch", **VIT_KWARGS)
    for key, tensor in model.vit.state_dict().items():
        assert torch.equal(tensor, state[key]), key
    assert hst_fast.trainable_parameters(model) > 0


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        hst_fast.create_model("vit_base_patch16_224", pretrained=str(tmp_path / "nope.pth"), **VIT_KWARGS)


def test_checkpoint_of_another_vit_is_refused(tmp_path, timm_vit):
    path = tmp_path / "partial.pth"
    state = timm_vit.state_dict()
    del state["blocks.3.mlp.fc2.weight"]
    torch.save(state, path)
    with pytest.raises(KeyError, match="blocks.3.mlp.fc2.weight"):
        hst_fast.create_model("vit_base_patch16_224", pretrained=str(path), **VIT_KWARGS)
    wider = timm.create_model("vit_base_patch16_224", embed_dim=96, depth=4, num_heads=3)
    torch.save(wider.state_dict(), path)
    with pytest.raises(RuntimeError, match="size mismatch"):
        hst_fast.create_model("vit_base_patch16_224", pretrained=str(path), **VIT_KWARGS)
