"""``pretrained=`` loads a local timm ViT checkpoint through timm, strictly, never downloading: every family's
timm files and its original checkpoints (converted by timm's filter), and names file and model when they differ."""
import re

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import save_file
from test_families import FAMILY_CASES

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


# ----------------------------------------------------------------------------- every ViT family
def family_vit(case, seed=3, **overrides):
    """A random timm model of one family (``test_families.FAMILY_CASES``), with whatever head timm gives it."""
    name, kwargs = FAMILY_CASES[case]
    torch.manual_seed(seed)
    return timm.create_model(name, pretrained=False, **{**kwargs, **overrides}).eval()


def load_into_hst(case, path):
    name, kwargs = FAMILY_CASES[case]
    return hst_fast.create_model(name, pretrained=str(path), backbone_grad="none", kernel_backend="torch", **kwargs)


def assert_vit_weights_equal(model, source):
    expected = source.state_dict()
    for key, tensor in model.vit.state_dict().items():
        assert torch.equal(tensor, expected[key]), key


@pytest.mark.parametrize("case", list(FAMILY_CASES))
def test_timm_file_of_every_family_loads_strictly(tmp_path, case):
    source = family_vit(case)
    path = tmp_path / f"{case}.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    assert_vit_weights_equal(load_into_hst(case, path), source)


def dinov2_original(state):
    """timm DINOv2 names -> facebookresearch/dinov2's (registers: class token and position embedding apart)."""
    original = {"mask_token": torch.zeros(1, state["cls_token"].shape[-1]), **state}
    if "reg_token" in state:
        original["register_tokens"] = original.pop("reg_token")
        pos = original.pop("pos_embed")  # timm folds the class token's position into the class token
        original["pos_embed"] = torch.cat([torch.zeros_like(pos[:, :1]), pos], dim=1)
    return original


def eva_original(state):
    """timm EVA-02 names -> BAAI's (SwiGLU w1/w2/w3, ffn_ln, q/v biases), wrapped in a 'module' entry."""
    renames = (("mlp.fc1_g", "mlp.w1"), ("mlp.fc1_x", "mlp.w2"), ("mlp.fc2", "mlp.w3"), ("mlp.norm", "mlp.ffn_ln"),
               ("attn.q_proj.bias", "attn.q_bias"), ("attn.v_proj.bias", "attn.v_bias"))
    original = {}
    for key, tensor in state.items():
        for new, old in renames:
            key = key.replace(new, old)
        original[key] = tensor
    return {"module": original}


def sam_original(state):
    """timm SAM ViT names -> segment-anything's full model (image encoder beside the prompt encoder)."""
    original = {f"image_encoder.{k.replace('mlp.fc', 'mlp.lin')}": v for k, v in state.items()}
    original["prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"] = torch.randn(2, 8)
    return original


def deit3_original(state):
    """timm DeiT-III names -> facebookresearch/deit's (LayerScale ``gamma_1``), under 'model'."""
    return {"model": {re.sub(r"ls([12])\.gamma", r"gamma_\1", k): v for k, v in state.items()}}


ORIGINAL_FORMATS = {"dinov2": dinov2_original, "dinov2-reg4": dinov2_original, "eva02": eva_original,
                    "sam": sam_original, "deit3": deit3_original}


@pytest.mark.parametrize("case", list(ORIGINAL_FORMATS))
def test_original_checkpoints_are_converted_as_timm_does(tmp_path, case):
    source = family_vit(case)
    original = ORIGINAL_FORMATS[case](source.state_dict())
    assert set(original) != set(source.state_dict())
    path = tmp_path / f"{case}_original.pth"
    torch.save(original, path)
    assert_vit_weights_equal(load_into_hst(case, path), source)


@pytest.mark.parametrize("source_case, target_case, family", [("eva02", "dinov2-reg4", "eva"),
                                                              ("sam", "vit-augreg", "sam"),
                                                              ("dinov2", "eva02", "vit")])
def test_file_of_another_family_names_both(tmp_path, source_case, target_case, family):
    path = tmp_path / "other.safetensors"
    save_file({k: v.contiguous() for k, v in family_vit(source_case).state_dict().items()}, str(path))
    target_class = {"dinov2-reg4": "VisionTransformer", "vit-augreg": "VisionTransformer", "eva02": "Eva"}[target_case]
    names_both = (rf"other.safetensors does not match {target_class} \(embed_dim 48, depth 4\)[\s\S]*"
                  rf"the file holds a checkpoint of family '{family}'")
    with pytest.raises((KeyError, RuntimeError), match=names_both):
        load_into_hst(target_case, path)


@pytest.mark.parametrize("case, overrides, message", [
    ("dinov2-reg4", dict(embed_dim=96), r"embed_dim 48, depth 4\), family 'vit'[\s\S]*holds [\s\S]*width 96"),
    ("sam", dict(depth=6, global_attn_indexes=[1, 5]), r"embed_dim 48, depth 4\), family 'sam'[\s\S]*6 blocks"),
], ids=["dinov2-wider", "sam-deeper"])
def test_file_of_another_size_names_both(tmp_path, case, overrides, message):
    path = tmp_path / "other_size.safetensors"
    save_file({k: v.contiguous() for k, v in family_vit(case, **overrides).state_dict().items()}, str(path))
    with pytest.raises((KeyError, RuntimeError), match=message):
        load_into_hst(case, path)


def test_jax_npz_loads_into_vision_transformers_only(tmp_path, timm_vit):
    path = tmp_path / "ViT-B_16.npz"
    save_jax_npz(timm_vit, path)
    with pytest.raises(ValueError, match=r"ViT-B_16.npz: .npz \(JAX/Flax\) files load into timm VisionTransformer"):
        load_into_hst("eva02", path)
