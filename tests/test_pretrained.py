"""``pretrained=`` loads a local timm ViT checkpoint through timm, strictly, never downloading."""
import numpy as np
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
    names_file_and_model = r"(?s)partial.pth does not match VisionTransformer \(embed_dim 48, depth 4\).*size mismatch"
    with pytest.raises(RuntimeError, match=names_file_and_model):
        hst_fast.create_model("vit_base_patch16_224", pretrained=str(path), **VIT_KWARGS)


def save_jax_npz(vit, path) -> None:
    """Writes ``vit`` as a JAX/Flax ViT checkpoint (the layout of the released code's ``ViT-B_16.npz``)."""
    dim, heads = vit.embed_dim, vit.blocks[0].attn.num_heads
    arrays = {
        "embedding/kernel": vit.patch_embed.proj.weight.permute(2, 3, 1, 0),  # OIHW -> HWIO
        "embedding/bias": vit.patch_embed.proj.bias,
        "cls": vit.cls_token,
        "Transformer/posembed_input/pos_embedding": vit.pos_embed,
        "Transformer/encoder_norm/scale": vit.norm.weight,
        "Transformer/encoder_norm/bias": vit.norm.bias,
    }
    for i, block in enumerate(vit.blocks):
        prefix = f"Transformer/encoderblock_{i}/"
        attn = f"{prefix}MultiHeadDotProductAttention_1/"
        for name, weight, bias in zip(("query", "key", "value"), block.attn.qkv.weight.chunk(3),
                                      block.attn.qkv.bias.chunk(3)):
            arrays[f"{attn}{name}/kernel"] = weight.T.reshape(dim, heads, -1)  # [D_in, heads, head_dim]
            arrays[f"{attn}{name}/bias"] = bias.reshape(heads, -1)
        arrays[f"{attn}out/kernel"] = block.attn.proj.weight.T.reshape(heads, -1, dim)  # [heads, head_dim, D_out]
        arrays[f"{attn}out/bias"] = block.attn.proj.bias
        for norm, name in ((block.norm1, "LayerNorm_0"), (block.norm2, "LayerNorm_2")):
            arrays[f"{prefix}{name}/scale"], arrays[f"{prefix}{name}/bias"] = norm.weight, norm.bias
        for r, fc in enumerate((block.mlp.fc1, block.mlp.fc2)):
            arrays[f"{prefix}MlpBlock_3/Dense_{r}/kernel"] = fc.weight.T  # [D_in, D_out]
            arrays[f"{prefix}MlpBlock_3/Dense_{r}/bias"] = fc.bias
    np.savez(path, **{name: tensor.detach().numpy() for name, tensor in arrays.items()})


def test_jax_npz_checkpoint_loads_into_the_vit(tmp_path, timm_vit):
    path = tmp_path / "ViT-B_16.npz"
    save_jax_npz(timm_vit, path)
    model = hst_fast.create_model("vit_base_patch16_224", pretrained=str(path), kernel_backend="torch", **VIT_KWARGS)
    expected = timm_vit.state_dict()
    for key, tensor in model.vit.state_dict().items():
        assert torch.equal(tensor, expected[key]), key


@pytest.mark.parametrize("depth, message", [(6, "has 6 ViT blocks; the model is VisionTransformer"),
                                            (2, "has 2 ViT blocks; the model is VisionTransformer")],
                         ids=["more-blocks", "fewer-blocks"])
def test_jax_npz_of_another_depth_is_refused(tmp_path, depth, message):
    path = tmp_path / "deeper.npz"
    save_jax_npz(timm.create_model("vit_base_patch16_224", **{**VIT_KWARGS, "depth": depth}), path)
    with pytest.raises(KeyError, match=message):
        hst_fast.create_model("vit_base_patch16_224", pretrained=str(path), **VIT_KWARGS)


def test_jax_npz_of_another_width_names_the_file(tmp_path):
    path = tmp_path / "wider.npz"
    save_jax_npz(timm.create_model("vit_base_patch16_224", **{**VIT_KWARGS, "embed_dim": 96}), path)
    with pytest.raises(RuntimeError, match=r"wider.npz does not match VisionTransformer \(embed_dim 48, depth 4\)"):
        hst_fast.create_model("vit_base_patch16_224", pretrained=str(path), **VIT_KWARGS)


def test_unreadable_npz_is_a_clear_error(tmp_path):
    path = tmp_path / "broken.npz"
    path.write_bytes(b"not an archive")
    with pytest.raises(ValueError, match="broken.npz is not a readable .npz archive"):
        hst_fast.create_model("vit_base_patch16_224", pretrained=str(path), **VIT_KWARGS)
