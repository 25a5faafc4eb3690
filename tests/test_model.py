"""The create_model contract: presets, trainable counts, shapes, freezing, released names, errors."""
import pytest
import torch

import hst_fast

TINY_VIT = dict(embed_dim=48, depth=4, num_heads=3)  # one ViT block per side stage


def tiny_model(task="cls", **kwargs):
    return hst_fast.create_model("vit_base_patch16_224", task=task, num_classes=kwargs.pop("num_classes", 5),
                                 kernel_backend="torch", **TINY_VIT, **kwargs)


@pytest.mark.parametrize(
    "vit_name, task, num_classes, expected",
    [
        ("vit_base_patch16_224", "cls", 100, 772_140),
        ("vit_base_patch16_224", "det", None, 10_468_608),
        ("vit_large_patch16_224", "cls", 100, 1_367_844),
        ("vit_large_patch16_224", "det", None, 19_308_352),
    ],
    ids=["B16-cls100", "B16-det", "L16-cls100", "L16-det"],
)
def test_trainable_counts_match_released(vit_name, task, num_classes, expected):
    with torch.device("meta"):  # shapes only: no memory, no init cost
        model = hst_fast.create_model(vit_name, task=task, num_classes=num_classes, kernel_backend="torch")
    assert hst_fast.trainable_parameters(model) == expected


def test_print_trainable_parameters_peft_line(capsys):
    model = tiny_model()
    model.print_trainable_parameters()
    trainable = hst_fast.trainable_parameters(model)
    total = sum(p.numel() for p in model.parameters())
    assert capsys.readouterr().out.strip() == (
        f"trainable params: {trainable:,d} || all params: {total:,d} || trainable%: {100 * trainable / total:.4f}"
    )


@pytest.mark.parametrize("height, width", [(64, 64), (64, 96), (96, 32)], ids=["64x64", "64x96", "96x32"])
def test_stage_maps_for_any_multiple_of_32(height, width):
    model = tiny_model(task="det").eval()
    maps = model.forward_features(torch.randn(2, 3, height, width))
    assert [tuple(m.shape) for m in maps] == [
        (2, dim, height // 2 ** (s + 2), width // 2 ** (s + 2)) for s, dim in enumerate(model.config.side_dims)
    ]
    assert all(torch.isfinite(m).all() for m in maps)


@pytest.mark.parametrize("method", ["hst", "full", "linear", "lora", "convpass"])
def test_stage_maps_are_contiguous_nchw(method):
    """Detection heads' RoIAlign (mmcv) reads raw NCHW memory: a channels-last map is read as wrong values."""
    model = tiny_model(task="det", method=method).eval()
    with torch.no_grad():
        maps = model.forward_features(torch.randn(1, 3, 64, 96))
    assert all(m.is_contiguous() for m in maps), [m.stride() for m in maps]


def test_logits_shape():
    model = tiny_model(num_classes=7).eval()
    assert model(torch.randn(3, 3, 64, 32)).shape == (3, 7)


@pytest.mark.parametrize(
    "images, message",
    [
        (torch.randn(2, 3, 48, 64), "multiples of 32"),
        (torch.randn(2, 3, 64, 80), "multiples of 32"),
        (torch.randn(3, 64, 64), r"\[B, 3, H, W\]"),
        (torch.randn(2, 1, 64, 64), r"\[B, 3, H, W\]"),
        (torch.zeros(2, 3, 64, 64, dtype=torch.uint8), "floating-point"),
    ],
    ids=["48x64", "64x80", "3d", "1-channel", "uint8"],
)
def test_bad_inputs_raise(images, message):
    with pytest.raises(ValueError, match=message):
        tiny_model()(images)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(task="seg"), "task must be one of"),
        (dict(side_dims=[32, 48, 64]), "side_dims must be 4"),
        (dict(side_dims=[32, 50, 64, 72]), "not divisible"),
        (dict(num_meta_tokens=0), "num_meta_tokens"),
        (dict(block_indices=[0, 1, 2]), "block_indices"),
        (dict(block_indices=[0, 1, 2, 2]), "block_indices"),
        (dict(kernel_backend="cuda"), "kernel_backend must be one of"),
    ],
    ids=["task", "dims-len", "dims-heads", "meta", "indices-len", "indices-order", "backend"],
)
def test_bad_config_raises(kwargs, message):
    with pytest.raises(ValueError, match=message):
        args = dict(task="cls", num_classes=5, kernel_backend="torch", **TINY_VIT)
        args.update(kwargs)
        hst_fast.create_model("vit_base_patch16_224", **args)


def test_unknown_vit_raises():
    with pytest.raises(ValueError, match="unknown timm model"):
        hst_fast.create_model("vit_base_patch16_2244")


def test_depth_not_divisible_needs_block_indices():
    with pytest.raises(ValueError, match="pass block_indices"):
        hst_fast.create_model(
            "vit_base_patch16_224", embed_dim=48, depth=6, num_heads=3, kernel_backend="torch")
    model = hst_fast.create_model("vit_base_patch16_224", embed_dim=48, depth=6, num_heads=3,
                                  block_indices=[0, 1, 3, 5], kernel_backend="torch")
    assert [len(s.blocks) for s in model.side_stages] == [1, 1, 2, 2]


def test_frozen_parameters_stay_frozen_and_get_no_grad():
    model = tiny_model()
    model.requires_grad_(True)  # a careless caller; train() re-applies the trainable set
    model.train()
    model(torch.randn(2, 3, 64, 64)).sum().backward()
    for name, param in model.named_parameters():
        trainable = name.startswith(("side_stages.", "meta_tokens.", "head.")) or (
            name.startswith("vit.blocks.") and (".norm1." in name or ".norm2." in name)
        )
        assert param.requires_grad == trainable, name
        assert (param.grad is not None) == trainable, name


def test_official_state_dict_round_trip():
    source, target = tiny_model(task="det"), tiny_model(task="det")
    official = source.official_state_dict()
    assert official["m_embeddings.0"].shape == (1, 8, 48)
    assert "m_patch_embed1.conv.3.weight" in official and "m_proj_norm4.weight" in official
    target.load_official_state_dict(official)
    for key, tensor in source.state_dict().items():
        assert torch.equal(tensor, target.state_dict()[key]), key
    assert set(target.official_state_dict()) == set(official)


def test_load_official_state_dict_names_every_problem():
    model = tiny_model()
    official = model.official_state_dict()
    del official["T_Bridge_2.weight"]
    official["m_block9.0.norm1.weight"] = torch.zeros(3)
    official["head.weight"] = torch.zeros(3, 3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(KeyError) as info:
        model.load_official_state_dict(official)
    message = str(info.value)
    assert "T_Bridge_2.weight" in message and "m_block9.0.norm1.weight" in message and "head.weight" in message
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), "a failed load changed weights"


def test_create_model_builds_baselines_by_method():
    from hst_fast.baselines import BaselineViT

    model = hst_fast.create_model("vit_base_patch16_224", method="lora", num_classes=5, **TINY_VIT)
    assert isinstance(model, BaselineViT) and model.config.method == "lora"
    with pytest.raises(ValueError, match="method"):
        hst_fast.create_model("vit_base_patch16_224", method="prompt", **TINY_VIT)
    with pytest.raises(ValueError, match="method='hst' only"):
        hst_fast.create_model("vit_base_patch16_224", method="full", grad_checkpointing=True, **TINY_VIT)


def test_import_hst_fast_pulls_in_no_mm_libraries():
    """Models, kernels and benchmarks must run where mmengine/mmdet are not installed (the GPU machine)."""
    import subprocess
    import sys

    code = (
        "import sys, hst_fast, hst_fast.feature_cache, hst_fast.baselines;"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('mmengine', 'mmdet', 'mmcv'));"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
