"""Baselines (full, linear, LoRA, Convpass) train only their own parameters, round-trip as adapters exactly,
merge LoRA exactly, count their parameters as documented and refuse bad input clearly."""
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import hst_fast
from hst_fast.adapter import WEIGHTS_NAME
from hst_fast.baselines import METHODS, BaselineViT, create_baseline

TINY_VIT = dict(embed_dim=48, depth=4, num_heads=3)
ALL_LORA_TARGETS = ["qkv", "proj", "fc1", "fc2"]
CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "baselines"


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models: intra-op threads only add synchronization (60x slower on a loaded 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_model(method, task="cls", seed=0, **kwargs) -> BaselineViT:
    torch.manual_seed(seed)
    num_classes = 0 if task == "det" else 5
    return create_baseline("vit_base_patch16_224", method, task=task, num_classes=num_classes, **TINY_VIT, **kwargs)


def loss_of(model, images):
    if model.config.task == "det":
        # random weights: the pyramid ends in LayerNorm2d, so plain sums or squares of its maps are constant
        return sum((level * torch.randn_like(level)).mean() for level in model.forward_features(images))
    return model(images).logsumexp(dim=1).sum()


def train_steps(model, steps=2, size=(64, 96)):
    """Two SGD steps: the first moves the zero-initialized LoRA B / Convpass up, the second everything behind them."""
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model.train()
    for step in range(steps):
        optimizer.zero_grad()
        torch.manual_seed(100 + step)
        loss_of(model, torch.randn(2, 3, *size)).backward()
        optimizer.step()
    return model


# ----------------------------------------------------------------------------- what trains
@pytest.mark.parametrize("task", ["cls", "det"])
@pytest.mark.parametrize("method", METHODS)
def test_training_changes_only_the_method_parameters(method, task):
    model = make_model(method, task, lora_targets=ALL_LORA_TARGETS) if method == "lora" else make_model(method, task)
    trainable = {name for name, _ in model.trainable_named_parameters()}
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    train_steps(model)
    changed = {name for name, p in model.named_parameters() if not torch.equal(before[name], p)}
    assert changed == trainable
    assert all(p.grad is None for name, p in model.named_parameters() if name not in trainable)
    expected_prefix = {"full": "vit.", "linear": "head." if task == "cls" else "pyramid.",
                       "lora": "vit.blocks.", "convpass": "convpass."}[method]
    assert any(name.startswith(expected_prefix) for name in trainable)
    if method == "lora":
        assert {name.rsplit(".", 2)[-2] for name in trainable if "lora_" in name} == set(ALL_LORA_TARGETS)
        assert all(name.startswith(("vit.", "head.", "pyramid.")) and ("lora_" in name or not name.startswith("vit."))
                   for name in trainable)
    if method == "full":
        assert trainable == {name for name, _ in model.named_parameters()}


@pytest.mark.parametrize("method", ["lora", "convpass"])
def test_train_reapplies_freezing(method):
    model = make_model(method)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    for param in model.parameters():
        param.requires_grad_(True)
    model.train()
    assert {name for name, p in model.named_parameters() if p.requires_grad} == trainable
    model.eval()
    assert {name for name, p in model.named_parameters() if p.requires_grad} == trainable


@pytest.mark.parametrize("method", ["lora", "convpass"])
def test_adaptation_starts_from_the_pretrained_vit(method):
    """LoRA's zero B and Convpass's zero up-projection: before training, the trunk is the plain ViT's."""
    images = torch.randn(2, 3, 64, 64)
    adapted, plain = make_model(method).eval(), make_model("linear").eval()  # same seed: same ViT weights
    assert torch.equal(adapted.forward_tokens(images)[0], plain.forward_tokens(images)[0])


def test_det_features_have_hst_strides_and_channels():
    model = make_model("convpass", "det", pyramid_channels=[16, 24, 40, 56]).eval()
    maps = model.forward_features(torch.randn(2, 3, 64, 96))
    assert [tuple(m.shape) for m in maps] == [(2, 16, 16, 24), (2, 24, 8, 12), (2, 40, 4, 6), (2, 56, 2, 3)]


# ----------------------------------------------------------------------------- adapters
@pytest.mark.parametrize("task", ["cls", "det"])
@pytest.mark.parametrize("method", METHODS)
def test_adapter_round_trip_is_exact(method, task, tmp_path):
    source = train_steps(make_model(method, task))
    source.save_adapter(tmp_path)
    saved = load_file(str(tmp_path / WEIGHTS_NAME))
    assert set(saved) == {name for name, p in source.named_parameters() if p.requires_grad}
    target = make_model(method, task)  # same seed: the same frozen backbone
    hst_fast.load_adapter(target, tmp_path)
    for key, tensor in source.state_dict().items():
        assert torch.equal(tensor, target.state_dict()[key]), key
    images = torch.randn(2, 3, 64, 64)
    if task == "det":
        source_maps, target_maps = source.eval().forward_features(images), target.eval().forward_features(images)
        assert all(torch.equal(a, b) for a, b in zip(source_maps, target_maps, strict=True))
    else:
        assert torch.equal(source.eval()(images), target.eval()(images))


def test_adapter_for_another_method_is_refused(tmp_path):
    make_model("lora").save_adapter(tmp_path)
    with pytest.raises(hst_fast.adapter.AdapterError, match="different architecture"):
        hst_fast.load_adapter(make_model("convpass"), tmp_path)


# ----------------------------------------------------------------------------- LoRA merging
def test_merged_lora_equals_unmerged():
    model = train_steps(make_model("lora", lora_targets=ALL_LORA_TARGETS, lora_alpha=16)).eval()
    images = torch.randn(3, 3, 64, 80)
    weights = {name: p.detach().clone() for name, p in model.named_parameters()}
    unmerged = model(images)
    model.merge()
    assert model.merged
    merged = model(images)
    # fp32: W x + s B (A x) and (W + s B A) x differ by rounding only (outputs are O(1), 4 small blocks)
    torch.testing.assert_close(merged, unmerged, rtol=1e-5, atol=1e-5)
    assert not torch.equal(model.vit.blocks[0].attn.qkv.weight, weights["vit.blocks.0.attn.qkv.weight"])
    with pytest.raises(RuntimeError, match="unmerge"):
        model.train()
    with pytest.raises(RuntimeError, match="unmerge"):
        model.save_adapter("unused")
    model.unmerge()
    assert not model.merged
    assert all(torch.equal(weights[name], p) for name, p in model.named_parameters())  # bit for bit
    assert torch.equal(model(images), unmerged)
    assert "weight_before_merge" not in " ".join(model.state_dict())


# ----------------------------------------------------------------------------- parameter counts (ViT-B/16)
VIT_B_HEAD_100 = 768 * 100 + 100  # 76,900
VIT_B = 85_798_656  # timm vit_base_patch16_224 without head


@pytest.mark.parametrize(
    "method, options, expected",
    [
        pytest.param("lora", {}, 294_912 + VIT_B_HEAD_100, id="lora-r8-qkv"),  # 12 x (768*8 + 8*2304)
        pytest.param("lora", dict(lora_targets=ALL_LORA_TARGETS), 1_179_648 + VIT_B_HEAD_100, id="lora-r8-all"),
        pytest.param("lora", dict(lora_rank=4), 147_456 + VIT_B_HEAD_100, id="lora-r4-qkv"),
        pytest.param("convpass", {}, 327_552 + VIT_B_HEAD_100, id="convpass-d8"),  # 24 x 13,648 (baselines.md)
        pytest.param("convpass", dict(convpass_targets=["attn"]), 163_776 + VIT_B_HEAD_100, id="convpass_attn-d8"),
        pytest.param("linear", {}, VIT_B_HEAD_100, id="linear"),
        pytest.param("full", {}, VIT_B + VIT_B_HEAD_100, id="full"),
    ],
)
def test_vit_b16_trainable_counts(method, options, expected, capsys):
    with torch.device("meta"):  # shapes only: builds ViT-B in a fraction of a second
        model = create_baseline("vit_base_patch16_224", method, num_classes=100, **options)
    assert hst_fast.trainable_parameters(model) == expected
    model.print_trainable_parameters()
    total = sum(p.numel() for p in model.parameters())
    line = capsys.readouterr().out.strip()
    percent = 100 * expected / total
    assert line == f"trainable params: {expected:,d} || all params: {total:,d} || trainable%: {percent:.4f}"


def test_vit_b16_det_pyramid_count():
    with torch.device("meta"):
        model = create_baseline("vit_base_patch16_224", "linear", task="det")
    assert isinstance(model.head, torch.nn.Identity)
    assert hst_fast.trainable_parameters(model) == sum(p.numel() for p in model.pyramid.parameters()) == 5_313_472


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "method, options, message",
    [
        pytest.param("adapterformer", {}, "method must be one of", id="unknown-method"),
        pytest.param("hst", {}, "create_model", id="hst-is-not-a-baseline"),
        pytest.param("lora", dict(lora_rank=0), "lora_rank must be a positive int", id="rank-0"),
        pytest.param("lora", dict(lora_rank=-2), "lora_rank must be a positive int", id="rank-negative"),
        pytest.param("lora", dict(lora_rank=2.5), "lora_rank must be a positive int", id="rank-float"),
        pytest.param("lora", dict(lora_rank=64), "exceeds", id="rank-above-width-48"),
        pytest.param("lora", dict(lora_alpha=0), "lora_alpha", id="alpha-0"),
        pytest.param("lora", dict(lora_targets=["qkv", "mlp"]), "lora_targets", id="unknown-target"),
        pytest.param("lora", dict(lora_targets=[]), "lora_targets", id="no-target"),
        pytest.param("convpass", dict(lora_rank=4), "only apply to method 'lora'", id="option-of-other-method"),
        pytest.param("convpass", dict(convpass_dim=0), "convpass_dim", id="convpass-dim-0"),
        pytest.param("convpass", dict(convpass_targets=["ffn"]), "convpass_targets", id="convpass-target"),
        pytest.param("full", dict(task="seg"), "task must be one of", id="unknown-task"),
        pytest.param("full", dict(pyramid_channels=[64, 128, 256]), "pyramid_channels", id="three-levels"),
        pytest.param("full", dict(kernel_backend="cuda"), "kernel_backend", id="bad-backend"),
    ],
)
def test_bad_arguments_raise_value_error(method, options, message):
    with pytest.raises(ValueError, match=message):
        create_baseline("vit_base_patch16_224", method, num_classes=5, **TINY_VIT, **options)


def test_bad_images_and_misuse_raise_value_error():
    cls_model, det_model = make_model("lora"), make_model("linear", "det")
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        cls_model(torch.randn(2, 1, 64, 64))
    with pytest.raises(ValueError, match="floating-point"):
        cls_model(torch.zeros(2, 3, 64, 64, dtype=torch.uint8))
    with pytest.raises(ValueError, match="patch size"):
        cls_model(torch.randn(2, 3, 64, 72))
    cls_model.eval()(torch.randn(1, 3, 48, 80))  # a classifier needs multiples of the patch size only
    with pytest.raises(ValueError, match="multiples of 32"):
        det_model.forward_features(torch.randn(1, 3, 48, 64))
    with pytest.raises(ValueError, match="task 'det'"):
        cls_model.forward_features(torch.randn(1, 3, 64, 64))
    with pytest.raises(ValueError, match="method 'lora' only"):
        make_model("convpass").merge()


# ----------------------------------------------------------------------------- configs
@pytest.mark.parametrize(
    "method, expected",
    [("full", VIT_B + VIT_B_HEAD_100), ("linear", VIT_B_HEAD_100), ("lora", 294_912 + VIT_B_HEAD_100),
     ("convpass", 327_552 + VIT_B_HEAD_100)],
)
def test_classification_config_builds_its_method(method, expected):
    """configs/baselines/vtab_<method>.py runs through the HST driver: HSTClassifier builds the baseline."""
    pytest.importorskip("mmdet.models", reason="mmdet is not installed")
    from mmengine.config import Config
    from mmengine.registry import MODELS

    import hst_fast.openmmlab  # noqa: F401  (registers HSTClassifier)

    cfg = Config.fromfile(str(CONFIGS / f"vtab_{method}.py"))
    model_cfg = dict(cfg.model)
    assert model_cfg.pop("init_cfg")["checkpoint"].endswith(".npz")  # a local ViT-B/16 users download
    assert model_cfg["method"] == method and model_cfg["type"] == "HSTClassifier"
    assert cfg.optim_wrapper.optimizer.type == "AdamW" and cfg.optim_wrapper.optimizer.lr > 0
    with torch.device("meta"):
        classifier = MODELS.build(model_cfg)
    assert isinstance(classifier.hst, BaselineViT)
    assert hst_fast.trainable_parameters(classifier) == expected
