"""Model level: the Triton backend computes what the PyTorch reference backend computes.

On CPU the Triton kernels run under the interpreter (conftest sets TRITON_INTERPRET=1).
"""
import pytest
import torch
from fixture_utils import (
    FIXTURE_FILES,
    model_for_fixture,
    read_fixture,
    relative_error,
    split_prefix,
    well_conditioned_gradients,
)
from test_fixtures import run_fixture_sequence


@pytest.mark.parametrize("task", sorted(FIXTURE_FILES), ids=lambda task: f"{task}_tiny")
def test_triton_backend_equals_torch_backend_on_fixtures(task, fixtures_dir):
    """fp32 outputs of the fixture sequence and every gradient within 1e-4 (relative to each tensor's max)."""
    meta, tensors = read_fixture(fixtures_dir / FIXTURE_FILES[task])
    weights = split_prefix(tensors, "weight.")
    outputs, grads = {}, {}
    for backend in ("torch", "triton"):
        model = model_for_fixture(meta, weights, kernel_backend=backend)
        train, _, evals = run_fixture_sequence(model, tensors)
        outputs[backend] = {**{f"train_{k}": v for k, v in train.items()}, **{f"eval_{k}": v for k, v in evals.items()}}
        grads[backend] = well_conditioned_gradients(model, tensors["input"])
    for name, expected in outputs["torch"].items():
        if name == "train_logits" and model.config.num_classes == 0:
            continue  # train-mode BatchNorm over a batch of 2: see test_fixtures
        error = relative_error(outputs["triton"][name], expected)
        assert error < 1e-4, f"{name}: {error:.2e}"
    assert sorted(grads["torch"]) == sorted(grads["triton"])
    for name, expected in grads["torch"].items():
        if name.endswith("attn.k.bias"):
            continue  # provably zero (softmax ignores a shift shared by all keys): rounding noise only
        error = relative_error(grads["triton"][name], expected)
        assert error < 1e-4, f"grad {name}: {error:.2e}"


def test_auto_backend_runs_reference_on_cpu():
    import hst_fast
    from hst_fast.kernels import reference

    model = hst_fast.create_model("vit_base_patch16_224", embed_dim=48, depth=4, num_heads=3, kernel_backend="auto")
    if torch.cuda.is_available():
        pytest.skip("CPU-only check")
    assert model.ops.side_attention is reference.side_attention_reference


def test_triton_backend_without_interpreter_or_gpu_is_a_clear_error(monkeypatch):
    from hst_fast.backend import resolve_ops

    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA")
    monkeypatch.delenv("TRITON_INTERPRET")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        resolve_ops("triton")


def test_triton_backend_runs_in_the_autocast_dtype():
    """Under bf16 autocast the kernels get bf16 activations and fp32 parameters: they must run in
    bf16 (not fall back) and give fp32 gradients to the fp32 parameters."""
    import hst_fast

    torch.manual_seed(0)
    images = torch.randn(2, 3, 64, 64)
    results = {}
    for backend in ("torch", "triton"):
        torch.manual_seed(0)
        model = hst_fast.create_model("vit_base_patch16_224", embed_dim=48, depth=4, num_heads=3, num_classes=3,
                                      kernel_backend=backend).eval()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            maps = model.forward_features(images)
        generator = torch.Generator().manual_seed(1)  # a random projection: the stage norms make means flat
        sum((m.float() * torch.randn(m.shape, generator=generator)).sum() for m in maps).backward()
        grad = model.side_stages[0].blocks[0].mlp.fc1.weight.grad
        results[backend] = (maps, grad)
    maps_ref, grad_ref = results["torch"]
    maps_tri, grad_tri = results["triton"]
    assert maps_tri[0].dtype == torch.bfloat16 and grad_tri.dtype == torch.float32
    for ref, tri in zip(maps_ref, maps_tri):
        assert relative_error(tri.float(), ref.float()) < 3e-2  # bf16 activations: ~1e-2 relative
    assert relative_error(grad_tri, grad_ref) < 5e-2
