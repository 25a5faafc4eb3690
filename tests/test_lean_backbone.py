"""Lean frozen backbone: what autograd keeps, frozen streaming mode, checkpointing, feature cache."""
import logging

import pytest
import torch
import torch.nn as nn
from fixture_utils import relative_error, well_conditioned_gradients
from torch.autograd.graph import saved_tensors_hooks

import hst_fast
from hst_fast.feature_cache import FeatureCache

TINY = dict(embed_dim=48, depth=4, num_heads=3, num_classes=5, kernel_backend="torch")


def make(seed=0, **kwargs):
    torch.manual_seed(seed)
    return hst_fast.create_model("vit_base_patch16_224", **{**TINY, **kwargs})


def snapshot_frozen(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}


@pytest.mark.parametrize("backbone_grad", ["full", "none"])
def test_frozen_parameters_never_change_under_an_optimizer(backbone_grad):
    model = make(backbone_grad=backbone_grad).train()
    frozen = snapshot_frozen(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.5)  # all params, on purpose
    for _ in range(2):
        optimizer.zero_grad()
        model(torch.randn(2, 3, 64, 64)).logsumexp(1).sum().backward()
        optimizer.step()
    assert frozen and all(torch.equal(frozen[n], p) for n, p in model.named_parameters() if n in frozen)
    assert all(p.grad is None for n, p in model.named_parameters() if n in frozen)


def test_frozen_mode_keeps_no_vit_activation_for_autograd():
    model = make(backbone_grad="none").train()
    flags = []
    for block in model.vit.blocks:
        block.register_forward_hook(lambda module, args, out: flags.append(out.requires_grad))
    model(torch.randn(2, 3, 64, 64)).sum().backward()
    assert flags == [False] * 4
    assert not model.vit.training, "the frozen ViT runs in eval mode"
    assert len(model.meta_tokens) == 0
    assert not any(p.requires_grad for p in model.vit.parameters())


def test_frozen_mode_trains_fewer_parameters_than_faithful():
    faithful, frozen = make(), make(backbone_grad="none")
    meta = sum(p.numel() for p in faithful.meta_tokens)
    ln = sum(p.numel() for n, p in faithful.vit.named_parameters() if ".norm1." in n or ".norm2." in n)
    assert hst_fast.trainable_parameters(faithful) - hst_fast.trainable_parameters(frozen) == meta + ln


def test_autograd_saves_no_input_of_a_frozen_linear():
    """Frozen Linear layers need no weight gradient, so their inputs must not be kept for backward."""
    model = make().train()
    linear_inputs = []
    for module in model.vit.blocks.modules():
        if isinstance(module, nn.Linear):
            module.register_forward_hook(lambda m, args, out: linear_inputs.append(args[0]))
    saved = []
    with saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        logits = model(torch.randn(2, 3, 64, 64))
    assert len(linear_inputs) == 4 * 4
    saved_storages = {(t.untyped_storage().data_ptr(), tuple(t.shape)) for t in saved}
    kept = [tuple(x.shape) for x in linear_inputs if (x.untyped_storage().data_ptr(), tuple(x.shape)) in saved_storages]
    assert kept == [], f"autograd keeps inputs of frozen Linear layers: {kept}"
    logits.sum().backward()


def test_grad_checkpointing_and_attention_backends_give_the_same_gradients():
    images = torch.randn(2, 3, 64, 64)
    grads = {}
    variants = {"sdpa": {}, "eager": dict(attn_backend="eager"), "ckpt": dict(grad_checkpointing=True)}
    for name, kwargs in variants.items():
        grads[name] = well_conditioned_gradients(make(**kwargs), images)
    for name in ("eager", "ckpt"):
        for key, grad in grads["sdpa"].items():
            if key.endswith("attn.k.bias"):
                continue  # provably zero (softmax ignores a shift shared by all keys): rounding noise only
            assert relative_error(grads[name][key], grad) < 1e-4, f"{name}: {key}"


def test_bad_backend_options_raise():
    with pytest.raises(ValueError, match="attn_backend must be one of"):
        make(attn_backend="flash")
    with pytest.raises(ValueError, match="backbone_grad must be one of"):
        make(backbone_grad="partial")
    try:
        import xformers  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="attn_backend='xformers' needs xformers"):
            make(attn_backend="xformers")


# ----------------------------------------------------------------------------- feature cache
@pytest.fixture
def frozen_model():
    return make(backbone_grad="none").eval()


def test_cache_hit_equals_miss_bit_for_bit(tmp_path, frozen_model):
    images, ids = torch.randn(3, 3, 64, 64), ["a", "b", "c"]
    cache = FeatureCache(tmp_path, frozen_model)
    with torch.no_grad():
        miss = frozen_model.forward_stage_tokens(images, cache.block_features(frozen_model, ids, images))
        hit = frozen_model.forward_stage_tokens(images, cache.block_features(frozen_model, ids, images))
    assert (cache.misses, cache.hits) == (3, 3)
    for (x_miss, _), (x_hit, _) in zip(miss, hit):
        assert torch.equal(x_miss, x_hit)


def test_cache_features_are_the_vit_features_in_storage_dtype(tmp_path, frozen_model):
    images = torch.randn(2, 3, 64, 64)
    cached = FeatureCache(tmp_path, frozen_model).block_features(frozen_model, [0, 1], images)
    for (keys, patches), (ref_keys, ref_patches) in zip(cached, frozen_model.trunk(images)):
        assert torch.equal(keys, ref_keys.half().float()) and torch.equal(patches, ref_patches.half().float())


@pytest.mark.parametrize("damage", ["truncate", "flip-byte", "garbage"])
def test_damaged_cache_file_is_rebuilt(tmp_path, frozen_model, damage, caplog):
    images = torch.randn(1, 3, 64, 64)
    cache = FeatureCache(tmp_path, frozen_model)
    good = cache.block_features(frozen_model, ["x"], images)
    path = cache.path("x", (64, 64))
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[: len(data) - 100]
    elif damage == "flip-byte":
        data[-5] ^= 0x55
    else:
        data = bytearray(b"not a cache file")
    path.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="hst_fast.feature_cache"):
        rebuilt = cache.block_features(frozen_model, ["x"], images)
    assert "rebuilding" in caplog.text
    assert cache.misses == 2
    assert all(torch.equal(a.patches, b.patches) for a, b in zip(good, rebuilt))
    assert cache.block_features(frozen_model, ["x"], images) and cache.hits == 1


def test_input_size_and_dtype_have_their_own_entries(tmp_path, frozen_model):
    cache, bf16 = FeatureCache(tmp_path, frozen_model), FeatureCache(tmp_path, frozen_model, dtype=torch.bfloat16)
    cache.block_features(frozen_model, ["x"], torch.randn(1, 3, 64, 64))
    cache.block_features(frozen_model, ["x"], torch.randn(1, 3, 96, 64))
    bf16.block_features(frozen_model, ["x"], torch.randn(1, 3, 64, 64))
    assert (cache.misses, bf16.misses) == (2, 1)
    assert {p.parent.name for p in tmp_path.glob("*/*/x.feat")} == {"64x64-float16", "96x64-float16", "64x64-bfloat16"}
    cache.block_features(frozen_model, ["x"], torch.randn(1, 3, 64, 64))
    assert cache.hits == 1


def test_entry_whose_header_disagrees_is_rebuilt_not_read(tmp_path, frozen_model, caplog):
    cache = FeatureCache(tmp_path, frozen_model)
    cache.block_features(frozen_model, ["x"], torch.randn(1, 3, 96, 64))
    wrong, right = cache.path("x", (96, 64)), cache.path("x", (64, 64))
    right.parent.mkdir(parents=True)
    wrong.replace(right)  # a 96x64 entry where the 64x64 one belongs
    with caplog.at_level(logging.WARNING, logger="hst_fast.feature_cache"):
        cache.block_features(frozen_model, ["x"], torch.randn(1, 3, 64, 64))
    assert "input size changed from [96, 64] to [64, 64]" in caplog.text and cache.misses == 2


def test_changed_backbone_uses_its_own_entries(tmp_path, frozen_model, caplog):
    FeatureCache(tmp_path, frozen_model).block_features(frozen_model, ["x"], torch.randn(1, 3, 64, 64))
    other = make(seed=1, backbone_grad="none").eval()
    with caplog.at_level(logging.WARNING, logger="hst_fast.feature_cache"):
        cache = FeatureCache(tmp_path, other)
    assert "other backbones" in caplog.text
    cache.block_features(other, ["x"], torch.randn(1, 3, 64, 64))
    assert cache.misses == 1


def test_changed_input_normalization_uses_its_own_entries(tmp_path, frozen_model):
    images = torch.randn(1, 3, 64, 64)
    FeatureCache(tmp_path, frozen_model, input_key="mean=0").block_features(frozen_model, ["x"], images)
    cache = FeatureCache(tmp_path, frozen_model, input_key="mean=1")
    cache.block_features(frozen_model, ["x"], images)
    assert cache.misses == 1 and len(list(tmp_path.glob("*/*/x.feat"))) == 2


def test_vit_runs_on_the_missing_samples_only(tmp_path, frozen_model):
    cache, images = FeatureCache(tmp_path, frozen_model), torch.randn(3, 3, 64, 64)
    cache.block_features(frozen_model, ["b"], images[1:2])
    trunk, batches = frozen_model.trunk, []
    frozen_model.trunk = lambda x: (batches.append(x.shape[0]), trunk(x))[1]
    mixed = cache.block_features(frozen_model, ["a", "b", "c"], images)
    assert batches == [2] and (cache.hits, cache.misses) == (1, 3)
    alone = cache.block_features(frozen_model, ["b"], images[1:2])
    assert all(torch.equal(m.patches[1:2], a.patches) for m, a in zip(mixed, alone))


def test_a_second_writer_of_one_sample_mid_write_leaves_a_whole_file(tmp_path, frozen_model, monkeypatch):
    """Two ranks can write one sample at once (the sampler pads ranks with repeated samples): here the second
    writer runs to completion while the first holds its temporary file open. Both must succeed and leave one
    whole file; a temporary name shared by the two (the old ``.tmp<pid>``, same pid here) fails this."""
    import hst_fast.feature_cache as module

    first, second = FeatureCache(tmp_path, frozen_model), FeatureCache(tmp_path, frozen_model)
    tokens = FeatureCache._compute(frozen_model, torch.randn(1, 3, 64, 64))[0].half()
    path, calls = first.path("x", (64, 64)), []

    def open_then_let_the_other_write(*args, **kwargs):
        handle = open(*args, **kwargs)
        if not calls:
            calls.append(args[0])
            second._write(path, tokens, (64, 64))
        return handle

    monkeypatch.setattr(module, "open", open_then_let_the_other_write, raising=False)
    first._write(path, tokens, (64, 64))
    monkeypatch.undo()
    assert calls and torch.equal(first._read(path, (64, 64)), tokens)
    assert [p.name for p in path.parent.iterdir()] == ["x.feat"]  # no temporary file left behind


def test_cache_refuses_the_faithful_model(tmp_path):
    with pytest.raises(ValueError, match="backbone_grad='none'"):
        FeatureCache(tmp_path, make())
    with pytest.raises(ValueError, match="backbone_grad='none'"):
        make().forward_stage_tokens(torch.randn(1, 3, 64, 64), vit_features=[])
