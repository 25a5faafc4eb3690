"""configs/upernet_demo.py through the drivers, shrunk to seconds: it learns, resumes, saves the adapter,
evaluates and draws; mmseg's own MMSegInferencer and init_model / inference_model on the checkpoint it wrote;
and configs/upernet.py without ADE20K stops at once."""
from __future__ import annotations

import re
import time

import numpy as np
import pytest
import torch

pytest.importorskip("mmseg.apis", reason="mmsegmentation is not installed; `make install` installs it")
pytest.importorskip("mmdet.models", reason="mmdet (with mmcv ops) is not installed; `make install` builds it")

from det_helpers import (  # noqa: E402,F401  (one_torch_thread: an autouse fixture)
    CONFIGS,
    as_cli,
    latest_log,
    one_torch_thread,
    tiny_seg_options,
    train_with_torchrun,
)
from mmengine.config import Config  # noqa: E402

from hst_fast import test as test_driver  # noqa: E402
from hst_fast import train as train_driver  # noqa: E402
from hst_fast.data import SEG_CLASSES  # noqa: E402

DEMO = str(CONFIGS / "upernet_demo.py")


def val_miou(log: str) -> float:
    return float(re.findall(r"Iter\(val\) \[\d+/\d+\].*mIoU: ([\d.]+)", log)[-1])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """40 iterations of the tiny demo, evaluated; then resumed from its checkpoint for 10 more."""
    root = tmp_path_factory.mktemp("seg")
    work_dir, data_root = root / "work", root / "shapes"
    options = tiny_seg_options(data_root, max_iters=40)
    train_driver.main([DEMO, "--work-dir", str(work_dir), *as_cli(options)])
    first_log = latest_log(work_dir)
    options.update({"train_cfg.max_iters": 50, "train_cfg.val_interval": 50})
    train_driver.main([DEMO, "--work-dir", str(work_dir), "--resume", *as_cli(options)])
    return dict(work_dir=work_dir, data_root=data_root, options=options, first_log=first_log,
                resumed_log=latest_log(work_dir), checkpoint=work_dir / "iter_50.pth")


def demo_config(options: dict) -> Config:
    cfg = Config.fromfile(DEMO)
    cfg.merge_from_dict(options)
    return cfg


def test_demo_learns(trained):
    """Above the mIoU of predicting the majority class (background) everywhere, which the dataset logs."""
    log = trained["first_log"]
    majority = float(re.search(r"4 validation images .*majority class everywhere scores mIoU ([\d.]+)", log).group(1))
    assert val_miou(log) > 1.5 * majority, (val_miou(log), majority)  # measured: 43.1 vs 22.2
    line = next(line for line in log.splitlines() if "Iter(train)" in line)
    for field in ("lr:", "eta:", "loss:", "decode.loss_ce:", "aux.loss_ce:"):
        assert field in line, line
    assert re.search(r"HSTViT\(vit_tiny_patch16_224\): trainable params: [\d,]+", log)


def test_resume_and_adapter(trained):
    assert "resumed epoch: 0, iter: 40" in trained["resumed_log"]
    assert "Iter(train) [10/50]" not in trained["resumed_log"] and "Iter(train) [50/50]" in trained["resumed_log"]
    checkpoint = torch.load(trained["checkpoint"])
    assert checkpoint["meta"]["iter"] == 50
    assert tuple(checkpoint["meta"]["dataset_meta"]["classes"]) == SEG_CLASSES  # what the inferencers read
    adapter = trained["work_dir"] / "adapter"
    assert {p.name for p in adapter.iterdir()} == {"adapter_model.safetensors", "adapter_config.json",
                                                   "task_heads.safetensors"}

    from mmseg.registry import MODELS

    from hst_fast.openmmlab import load_task_adapter

    model = MODELS.build(demo_config(trained["options"]).model)
    state = checkpoint["state_dict"]
    model.load_state_dict({k: v for k, v in state.items() if k.startswith("backbone.model.vit.")}, strict=False)
    load_task_adapter(model, str(adapter))  # the side network, meta tokens, LNs, and the decode heads
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, state[name], rtol=0, atol=0, msg=name)


def test_test_driver_evaluates_and_draws(trained, tmp_path):
    show_dir = tmp_path / "vis"
    test_driver.main([DEMO, str(trained["checkpoint"]), "--work-dir", str(tmp_path / "test"), "--show-dir",
                      str(show_dir), *as_cli(trained["options"])])
    assert "mIoU:" in latest_log(tmp_path / "test")
    assert len(list((show_dir / "vis_data" / "vis_image").glob("*.png"))) == 4  # every validation image


def test_test_driver_refuses_a_checkpoint_without_the_vit(trained, tmp_path, capsys):
    """mmengine loads checkpoints non-strictly: without the guard the ViT would stay randomly initialized."""
    checkpoint = torch.load(trained["checkpoint"])
    state = checkpoint["state_dict"]
    checkpoint["state_dict"] = {k: v for k, v in state.items() if ".vit." not in k}
    torch.save(checkpoint, tmp_path / "no_vit.pth")
    with pytest.raises(SystemExit) as exit_:
        test_driver.main([DEMO, str(tmp_path / "no_vit.pth"), "--work-dir", str(tmp_path / "test"),
                          *as_cli(trained["options"])])
    message = capsys.readouterr().err
    missing = len(state) - len(checkpoint["state_dict"])
    assert exit_.value.code == 2 and f"but not {missing} of its ViT tensors" in message, message
    assert "Traceback" not in message


def deployed_config(trained) -> Config:
    """The config as a deployment has it: init_cfg names a pretrained ViT file that is not there."""
    cfg = demo_config(trained["options"])
    cfg.model.backbone.init_cfg = dict(type="Pretrained", checkpoint="/nonexistent/vit.pth")
    return cfg


def test_mmseg_inferencer(trained, tmp_path):
    from mmseg.apis import MMSegInferencer

    inferencer = MMSegInferencer(model=deployed_config(trained), weights=str(trained["checkpoint"]), device="cpu")
    assert tuple(inferencer.model.dataset_meta["classes"]) == SEG_CLASSES
    image = np.random.default_rng(0).integers(0, 256, (70, 90, 3), dtype=np.uint8)  # not a multiple of 32
    result = inferencer(image, out_dir=str(tmp_path / "out"))
    assert result["predictions"].shape == (70, 90) and result["predictions"].max() < len(SEG_CLASSES)
    assert len(list((tmp_path / "out" / "vis").glob("*"))) == 1


def test_init_model_and_inference_model(trained):
    from mmseg.apis import inference_model, init_model

    model = init_model(deployed_config(trained), str(trained["checkpoint"]), device="cpu")
    assert tuple(model.dataset_meta["classes"]) == SEG_CLASSES
    state = torch.load(trained["checkpoint"])["state_dict"]
    torch.testing.assert_close(model.backbone.model.vit.pos_embed, state["backbone.model.vit.pos_embed"])
    image = next((trained["data_root"] / "images" / "validation").glob("*.jpg"))
    result = inference_model(model, str(image))
    assert tuple(result.pred_sem_seg.shape) == (64, 64)


def test_upernet_without_ade20k_stops_at_once(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # data_root 'data/ade/ADEChallengeData2016' is relative: nothing there
    start = time.perf_counter()
    with pytest.raises(SystemExit) as exit_:
        train_driver.main([str(CONFIGS / "upernet.py"), "--work-dir", str(tmp_path / "work")])
    message = capsys.readouterr().err
    assert exit_.value.code == 2, message
    for expected in ("data/ade/ADEChallengeData2016/images/training", "data/ade/ADEChallengeData2016/annotations/"
                     "training", "data/ade/ADEChallengeData2016/images/validation",
                     "--cfg-options train_dataloader.dataset.data_root=DIR val_dataloader.dataset.data_root=DIR "
                     "test_dataloader.dataset.data_root=DIR", "configs/upernet_demo.py"):
        assert expected in message, message
    assert time.perf_counter() - start < 30 and not (tmp_path / "work").exists()  # nothing was built


def test_ddp_two_processes_gloo(tmp_path):
    """torchrun --nproc_per_node 2 ... --launcher pytorch on CPU: 2 iterations under DDP (gloo) with the heads'
    BatchNorms synchronized across the ranks (``sync_bn='torch'``), then mIoU over results gathered from both."""
    options = tiny_seg_options(tmp_path / "shapes", max_iters=2, checkpoint_interval=2, log_interval=1)
    log = train_with_torchrun(DEMO, tmp_path / "work", options)
    assert "Distributed launcher: pytorch" in log
    assert re.search(r"Iter\(train\) \[2/2\]", log) and "mIoU:" in log, log[-2000:]
    assert (tmp_path / "work" / "iter_2.pth").is_file()
