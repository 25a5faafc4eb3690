"""Every plain-ViT family: blocks run as timm runs them, meta tokens are extra prefix tokens, each mode trains.

Small random ViTs (depth 4, width 48) of each family, built by timm model name; nothing is downloaded.
"""
import re
from pathlib import Path

import pytest
import timm
import torch
from fixture_utils import relative_error, well_conditioned_gradients
from timm.layers import apply_rot_embed_cat

import hst_fast
from hst_fast.feature_cache import FeatureCache
from hst_fast.vit.families import EvaFamily, family_of

TINY = dict(embed_dim=48, depth=4, num_heads=3)
# id -> (timm model name, timm kwargs): every family and the VisionTransformer variants that differ in their tokens.
FAMILY_CASES = {
    "vit-augreg": ("vit_base_patch16_224.augreg_in21k", TINY),  # class token with position embedding
    "vit-mae": ("vit_base_patch16_224.mae", TINY),
    "deit3": ("deit3_small_patch16_224", TINY),  # LayerScale, class token without position embedding
    "clip": ("vit_base_patch16_clip_224", TINY),  # norm_pre
    "dinov2": ("vit_small_patch14_dinov2", TINY),  # patch 14, LayerScale
    "dinov2-reg4": ("vit_small_patch14_reg4_dinov2", TINY),  # + 4 register tokens, no_embed_class
    "siglip": ("vit_base_patch16_siglip_224", TINY),  # no class token, attention-pool head
    "gap-reg4": ("vit_betwixt_patch16_reg4_gap_256", TINY),  # registers, no class token
    "eva02": ("eva02_base_patch14_224", TINY),  # RoPE after the class token, SwiGLU with its own norm
    "sam": ("samvit_base_patch16", dict(TINY, img_size=224, window_size=4, global_attn_indexes=[1, 3])),
}
FAITHFUL_CASES = [case for case in FAMILY_CASES if case != "sam"]  # SAM: frozen mode only
IMAGES = (96, 160)  # patch 14: a 7 x 12 grid, the bottom and right partial patches padded


def make(case, backbone_grad="full", task="det", seed=0, **kwargs):
    name, timm_kwargs = FAMILY_CASES[case]
    torch.manual_seed(seed)
    return hst_fast.create_model(name, task=task, backbone_grad=backbone_grad, kernel_backend="torch",
                                 **timm_kwargs, **kwargs)


def timm_reference(case, model):
    """timm's own model with the HST model's ViT weights, built with the same arguments, in eval mode."""
    name, timm_kwargs = FAMILY_CASES[case]
    family = family_of(model.vit)
    reference = timm.create_model(name, pretrained=False, num_classes=0, **family.create_kwargs, **timm_kwargs)
    reference.load_state_dict(model.vit.state_dict())
    for block, ours in zip(reference.blocks, model.vit.blocks):
        block.attn.fused_attn = ours.attn.fused_attn
    return reference.eval()


def max_difference_to_timm(case):
    """Largest |HST frozen trunk - timm forward_intermediates| over every block's patches (and prefix tokens)."""
    model = make(case, backbone_grad="none").eval()
    reference = timm_reference(case, model)
    images = torch.randn(2, 3, *IMAGES)
    with torch.no_grad():
        ours = list(model.trunk(images))
        if getattr(reference, "num_prefix_tokens", 0):
            theirs = reference.forward_intermediates(images, return_prefix_tokens=True, intermediates_only=True)
        else:  # no prefix tokens (SigLIP, SAM): timm returns the patch maps alone
            theirs = [(x, None) for x in reference.forward_intermediates(images, intermediates_only=True)]
    assert len(ours) == len(theirs) == len(model.vit.blocks)
    worst = 0.0
    for (key, patches), (ref_patches, ref_prefix) in zip(ours, theirs):
        assert patches.shape == ref_patches.permute(0, 2, 3, 1).shape
        worst = max(worst, (patches - ref_patches.permute(0, 2, 3, 1)).abs().max().item())
        if getattr(model.vit, "cls_token", None) is not None:
            worst = max(worst, (key - ref_prefix[:, :1]).abs().max().item())
        else:  # the mean patch token (HST.md §4b)
            assert torch.allclose(key[:, 0], ref_patches.mean(dim=(2, 3)), rtol=1e-6, atol=1e-6)
    return worst


@pytest.mark.parametrize("case", list(FAMILY_CASES))
def test_frozen_blocks_equal_timm_intermediates_exactly(case):
    assert max_difference_to_timm(case) == 0.0


@pytest.mark.parametrize("case", FAITHFUL_CASES)
def test_faithful_mode_trains_side_network_meta_tokens_ln_and_head(case, capsys):
    model = make(case, task="cls", num_classes=3).train()
    images = torch.randn(2, 3, *IMAGES)
    maps = model.forward_features(images)
    assert [tuple(m.shape) for m in maps] == [
        (2, dim, IMAGES[0] // 2 ** (s + 2), IMAGES[1] // 2 ** (s + 2)) for s, dim in enumerate(model.config.side_dims)
    ]
    model(images).logsumexp(dim=1).sum().backward()
    ln_tuned = re.compile(r"^vit\.blocks\.\d+\.norm[12]\.(weight|bias)$")
    for name, param in model.named_parameters():
        trainable = name.startswith(("side_stages.", "meta_tokens.", "head.")) or bool(ln_tuned.match(name))
        assert param.requires_grad == trainable, name
        assert (param.grad is not None) == trainable, name
        if name.startswith("meta_tokens.") or ln_tuned.match(name):
            assert param.grad.abs().sum() > 0, f"{name} gets no gradient"
    depth, dim, meta = 4, TINY["embed_dim"], model.config.num_meta_tokens
    side = sum(p.numel() for n, p in model.named_parameters() if n.startswith(("side_stages.", "head.")))
    expected = side + depth * meta * dim + depth * 4 * dim  # side + head, meta tokens, norm1/norm2 weight + bias
    assert hst_fast.trainable_parameters(model) == expected
    model.print_trainable_parameters()
    assert capsys.readouterr().out.startswith(f"trainable params: {expected:,d} || ")


@pytest.mark.parametrize("case", ["dinov2-reg4", "siglip", "eva02"])
def test_meta_tokens_carry_no_position(case):
    """Meta tokens are extra prefix tokens: permuting them permutes their outputs and leaves the patches alone
    (a meta token given a position, e.g. a rotary embedding, would break this)."""
    model = make(case).eval()
    images = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        before = list(model.trunk(images))
        order = torch.randperm(model.config.num_meta_tokens)
        for tokens in model.meta_tokens:
            tokens.copy_(tokens[order])
        after = list(model.trunk(images))
    for (meta, patches), (meta_permuted, patches_permuted) in zip(before, after):
        assert torch.allclose(meta[:, order], meta_permuted, atol=1e-5)
        assert torch.allclose(patches, patches_permuted, atol=1e-5)


def test_eva_rope_reaches_the_image_tokens_exactly_as_in_timm():
    """Answer key: the same EVA block with an identity rotation (sin 0, cos 1) on the meta and class tokens and
    timm's rotary embedding on the patches, all tokens rotated (attention's num_prefix_tokens = 0)."""
    model = make("eva02").eval()
    family, vit = family_of(model.vit), model.vit
    assert isinstance(family, EvaFamily)
    with torch.no_grad():
        embedding = family.embed(vit, torch.randn(2, 3, *IMAGES))
        meta = model.meta_tokens[0].expand(2, -1, -1)
        tokens = torch.cat([meta, embedding.tokens], dim=1)
        ours = family.run_block(vit, 0, tokens, embedding, num_meta=meta.shape[1])
        leading = meta.shape[1] + embedding.num_prefix_tokens
        half = embedding.rope.shape[-1] // 2
        identity = torch.cat([torch.zeros(leading, half), torch.ones(leading, half)], dim=-1)
        block = vit.blocks[0]
        block.attn.num_prefix_tokens = 0
        expected = block(tokens, rope=torch.cat([identity, embedding.rope]))
    head_vectors = torch.randn(leading, half)
    assert torch.equal(apply_rot_embed_cat(head_vectors, identity), head_vectors)  # the identity rotation
    torch.testing.assert_close(ours, expected, rtol=1e-6, atol=1e-6)


def test_eva_grad_checkpointing_recomputes_with_meta_tokens_as_prefix():
    """checkpoint() recomputes EVA blocks in backward: the meta-token prefix count must hold there too."""
    images = torch.randn(2, 3, 64, 96)
    plain = well_conditioned_gradients(make("eva02"), images)
    recomputed = well_conditioned_gradients(make("eva02", grad_checkpointing=True), images)
    for name, grad in plain.items():
        assert relative_error(recomputed[name], grad) < 1e-5, name


def test_sam_faithful_mode_is_refused_with_the_reason():
    with pytest.raises(ValueError, match=r"not defined for SAM's ViT[\s\S]*windows[\s\S]*backbone_grad='none'"):
        make("sam", backbone_grad="full")


@pytest.mark.parametrize("case, backbone_grad", [("dinov2-reg4", "full"), ("eva02", "full"), ("sam", "none")])
def test_adapter_round_trip(tmp_path, case, backbone_grad):
    source = make(case, backbone_grad=backbone_grad, task="cls", num_classes=3).train()
    optimizer = torch.optim.SGD([p for p in source.parameters() if p.requires_grad], lr=0.1)
    source(torch.randn(2, 3, 64, 64)).logsumexp(dim=1).sum().backward()
    optimizer.step()
    source.save_adapter(tmp_path)
    target = make(case, backbone_grad=backbone_grad, task="cls", num_classes=3)  # same seed: same frozen ViT
    hst_fast.load_adapter(target, tmp_path)
    images = torch.randn(2, 3, 64, 96)
    assert torch.equal(source.eval()(images), target.eval()(images))


@pytest.mark.parametrize("case", ["dinov2", "siglip", "eva02", "sam"])
def test_feature_cache_holds_every_familys_frozen_features(tmp_path, case):
    model = make(case, backbone_grad="none", task="cls", num_classes=3).eval()
    images = torch.randn(2, 3, *IMAGES)
    cache = FeatureCache(tmp_path, model)
    stored = cache.block_features(model, ["a", "b"], images)
    read = cache.block_features(model, ["a", "b"], images)
    assert (cache.misses, cache.hits) == (2, 2)
    for (keys, patches), (ref_keys, ref_patches), (keys_read, patches_read) in zip(stored, model.trunk(images), read):
        assert torch.equal(keys, ref_keys.half().float()) and torch.equal(patches, ref_patches.half().float())
        assert torch.equal(keys, keys_read) and torch.equal(patches, patches_read)


@pytest.mark.parametrize("case, backbone_grad", [("eva02", "full"), ("dinov2-reg4", "none"), ("sam", "none")])
def test_each_family_learns(case, backbone_grad):
    """Ten AdamW steps on two fixed images with two labels bring the cross-entropy well below its start."""
    model = make(case, backbone_grad=backbone_grad, task="cls", num_classes=2).train()
    images, labels = torch.randn(2, 3, 64, 64), torch.tensor([0, 1])
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for _ in range(10):
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_patch14_pads_images_to_the_patch():
    model = make("dinov2", backbone_grad="none")
    assert model.vit_grid(IMAGES) == (7, 12)
    with pytest.raises(ValueError, match=r"multiples of 32 .*patch size \(14, 14\) need not divide them.*pads"):
        model(torch.randn(1, 3, 80, 96))


@pytest.mark.parametrize("vit_name", ["swin_tiny_patch4_window7_224", "deit_small_distilled_patch16_224"])
def test_unsupported_family_lists_the_supported_ones(vit_name):
    with pytest.raises(ValueError, match=r"not of a ViT family hst_fast supports[\s\S]*vit \(timm VisionTransformer"
                                         r"[\s\S]*eva \(timm Eva[\s\S]*sam \(timm VisionTransformerSAM"):
        hst_fast.create_model(vit_name)


def test_baselines_refuse_other_families():
    with pytest.raises(ValueError, match=r"baselines run timm VisionTransformer models only.*Eva"):
        hst_fast.create_model("eva02_base_patch14_224", method="lora", num_classes=3, **TINY)


def test_xformers_attention_is_refused_for_eva_and_sam():
    with pytest.raises(ValueError, match="attn_backend 'xformers' does not run Eva blocks"):
        make("eva02", attn_backend="xformers")


# ----------------------------------------------------------------------------- detection driver
def build_det_backbone(**backbone):
    pytest.importorskip("mmdet.models", reason="mmdet is not installed")
    from mmdet.registry import MODELS
    from mmengine.registry import init_default_scope

    import hst_fast.openmmlab  # noqa: F401  (registers HSTViT)

    init_default_scope("mmdet")
    return MODELS.build(dict(type="HSTViT", kernel_backend="torch", **backbone))


def test_dinov2_detection_config_builds_with_registers():
    pytest.importorskip("mmdet.models", reason="mmdet is not installed")
    from mmengine.config import Config

    cfg = Config.fromfile(str(Path(__file__).resolve().parents[1] / "configs" / "cascade_dinov2.py"))
    backbone_cfg = dict(cfg.model.backbone)
    assert backbone_cfg.pop("init_cfg")["checkpoint"].endswith("dinov2_vitb14_reg4_pretrain.pth")
    assert backbone_cfg.pop("type") == "HSTViT" and backbone_cfg.pop("kernel_backend") == "auto"
    backbone = build_det_backbone(**{**backbone_cfg, **TINY})
    assert backbone.model.vit.num_prefix_tokens == 5  # class token + 4 registers
    maps = backbone(torch.randn(1, 3, *IMAGES))
    assert [m.shape[1] for m in maps] == list(cfg.model.neck.in_channels)


@pytest.mark.parametrize("case, backbone_grad", [("eva02", "full"), ("sam", "none")])
def test_detection_backbone_takes_each_familys_timm_arguments(case, backbone_grad):
    name, timm_kwargs = FAMILY_CASES[case]
    backbone = build_det_backbone(vit_name=name, backbone_grad=backbone_grad, **timm_kwargs)
    assert [tuple(m.shape[2:]) for m in backbone(torch.randn(1, 3, 64, 96))] == [(16, 24), (8, 12), (4, 6), (2, 3)]
