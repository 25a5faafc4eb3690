"""How the drivers end on an error: a user error exits with status 2 and its message alone, ``--debug`` or
``HST_FAST_DEBUG=1`` shows the traceback, a program bug keeps it; broken checkpoints and adapters are user
errors named before anything is built; a run prints no third-party deprecation noise."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("mmdet.models", reason="mmdet (with mmcv ops) is not installed; `make install` builds it")

from det_helpers import CONFIGS, REPO, as_cli, one_torch_thread, tiny_cls_options  # noqa: E402,F401
from mmengine.registry import HOOKS, MODELS  # noqa: E402

import hst_fast  # noqa: E402
from hst_fast import test as test_driver  # noqa: E402
from hst_fast import train as train_driver  # noqa: E402
from hst_fast.adapter import AdapterError  # noqa: E402
from hst_fast.openmmlab.checks import CheckpointError, ConfigError  # noqa: E402
from hst_fast.openmmlab.cli import is_user_error, run_command  # noqa: E402
from hst_fast.openmmlab.model_args import check_overrides  # noqa: E402
from hst_fast.vit.inputs import check_images  # noqa: E402


def cascade_without_coco(tmp_path, *extra: str) -> subprocess.CompletedProcess:
    """``python -m hst_fast.train configs/cascade.py`` where no COCO is (its data_root is relative)."""
    return subprocess.run([sys.executable, "-m", "hst_fast.train", str(CONFIGS / "cascade.py"), *extra],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO)))


def test_user_error_exits_2_with_its_message_alone(tmp_path):
    result = cascade_without_coco(tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 2, output[-3000:]
    assert result.stderr.startswith("hst_fast.train: error: dataset files not found at data/coco/"), output[-3000:]
    assert "--debug" in result.stderr and "Traceback" not in output
    assert "pkg_resources is deprecated" not in output  # mmengine's import of it, filtered by the drivers


def test_debug_switch_shows_the_traceback(tmp_path):
    result = cascade_without_coco(tmp_path, "--debug")
    assert result.returncode == 1
    assert "Traceback (most recent call last)" in result.stderr
    assert "FileNotFoundError: dataset files not found" in result.stderr


def raised(call) -> BaseException:
    try:
        call()
    except Exception as err:  # noqa: BLE001  (what is raised is the subject)
        return err
    raise AssertionError("nothing was raised")


def test_user_errors_are_defined_by_type_and_by_the_check_that_raised_them():
    user = [
        raised(lambda: check_overrides("HSTViT", {"side_dim": 1})),  # a typo in a model argument
        raised(lambda: check_images(torch.zeros(2, 3, 48, 48), "HST", 3, (16, 16), 32)),  # an image size
        raised(lambda: MODELS.build(dict(type="HSTClasifier"))),  # a `type=` that names nothing registered
        raised(lambda: HOOKS.build(dict(type="AdapterCheckpointHook", out_dirr="x"))),  # a keyword it does not take
        raised(lambda: MODELS.build(dict(type="HSTClassifier", vit_name="vit_tiny_patch16_224", side_dim=8))),
        # an HST-only option for a baseline
        raised(lambda: hst_fast.create_model("vit_tiny_patch16_224", depth=1, method="lora", grad_checkpointing=True)),
        ConfigError("a config that cannot work"), AdapterError("an adapter for another model"),
    ]
    def failing_while_handling_a_user_error():
        try:
            raise ConfigError("a config that cannot work")
        except ConfigError:
            return {}["key"]

    bugs = [
        raised(lambda: torch.zeros(2) @ torch.zeros(3)),  # torch's RuntimeError
        raised(failing_while_handling_a_user_error),  # its __context__ is a user error, it is not one
        raised(lambda: {}["key"]),  # a KeyError in ordinary code
        raised(lambda: hst_fast.create_model("vit_tiny_patch16_224", depth=4).no_such_attribute),
    ]
    assert [is_user_error(err) for err in user] == [True] * len(user), user
    assert [is_user_error(err) for err in bugs] == [False] * len(bugs), bugs


def test_run_command_exits_2_for_a_user_error_and_reraises_a_bug(capsys, monkeypatch):
    monkeypatch.delenv("HST_FAST_DEBUG", raising=False)

    def user_error(argv):
        raise ConfigError("'optim_wraper' is not a key mmengine's Runner reads")

    def bug(argv):
        raise IndexError("list index out of range")

    with pytest.raises(SystemExit) as info:
        run_command("prog", user_error, [])
    assert info.value.code == 2
    assert capsys.readouterr().err.startswith("prog: error: 'optim_wraper' is not a key")
    with pytest.raises(IndexError):
        run_command("prog", bug, [])
    with pytest.raises(ConfigError):
        run_command("prog", user_error, ["--debug"])
    monkeypatch.setenv("HST_FAST_DEBUG", "1")
    with pytest.raises(ConfigError):
        run_command("prog", user_error, [])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One epoch of the tiny cls demo: a checkpoint and an adapter to break."""
    root = tmp_path_factory.mktemp("cls")
    options = tiny_cls_options(root / "shapes")
    train_driver.train([str(CONFIGS / "cls_demo.py"), "--work-dir", str(root / "work"), *as_cli(options)])
    return dict(work=root / "work", options=options)


def test_truncated_checkpoint_is_named_before_anything_is_built(trained, tmp_path):
    broken = tmp_path / "epoch_1.pth"
    data = (trained["work"] / "epoch_1.pth").read_bytes()
    broken.write_bytes(data[: len(data) // 2])
    config = str(CONFIGS / "cls_demo.py")
    with pytest.raises(CheckpointError, match=r"CHECKPOINT: .*epoch_1.pth is not a readable checkpoint"):
        test_driver.evaluate([config, str(broken), *as_cli(trained["options"])])
    with pytest.raises(FileNotFoundError, match=r"--resume: checkpoint not found: .*nothing.pth"):
        train_driver.train([config, "--resume", str(tmp_path / "nothing.pth"), *as_cli(trained["options"])])
    # a work dir whose last_checkpoint names a half-written file (as mmengine's own CheckpointHook can leave it)
    (tmp_path / "last_checkpoint").write_text(str(broken))
    with pytest.raises(CheckpointError, match=r"--resume \(latest checkpoint named by .*last_checkpoint\)"):
        train_driver.train([config, "--work-dir", str(tmp_path), "--resume", *as_cli(trained["options"])])


def test_adapter_of_another_model_is_refused(trained, tmp_path):
    other = hst_fast.create_model("vit_tiny_patch16_224", depth=4, num_classes=5, kernel_backend="torch")
    other.save_adapter(str(tmp_path / "adapter"))
    with pytest.raises(AdapterError, match=r"different architecture; differing fields: \['num_classes'\]"):
        test_driver.evaluate([str(CONFIGS / "cls_demo.py"), str(tmp_path / "adapter"), "--work-dir", str(tmp_path),
                              *as_cli(trained["options"])])
