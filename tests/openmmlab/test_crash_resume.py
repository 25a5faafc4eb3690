"""Crash safety (``ResumableCheckpointHook``): a training process killed with SIGKILL in the middle of an epoch
and restarted with ``--resume`` ends with the weights of an unbroken run, bit for bit, for classification and
detection; a checkpoint save interrupted halfway never becomes the one ``--resume`` picks."""
from __future__ import annotations

import errno
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytest.importorskip("mmdet.models", reason="mmdet (with mmcv ops) is not installed; `make install` builds it")
pytest.importorskip("mmcv.ops", reason="mmcv was built without its compiled ops")

from det_helpers import (  # noqa: E402,F401  (one_torch_thread: an autouse fixture)
    CONFIGS,
    REPO,
    TINY_DET_MODEL,
    as_cli,
    latest_log,
    one_torch_thread,
    tiny_cls_options,
    tiny_det_options,
)
from mmengine.fileio import LocalBackend  # noqa: E402

from hst_fast import train as train_driver  # noqa: E402

ENV = dict(os.environ, OMP_NUM_THREADS="1")
# Three epochs with a checkpoint after each; enough iterations per epoch that a kill lands mid-epoch.
TASKS = {
    "cls": ("cls_demo.py", lambda root: tiny_cls_options(root, max_epochs=3, num_train=96, batch_size=8)),
    "det": ("cascade_demo.py", lambda root: {**tiny_det_options(root, max_epochs=3, num_train=16, num_val=2),
                                             **TINY_DET_MODEL}),
}


def driver(config: str, work: Path, options: dict, *extra: str) -> list:
    return [sys.executable, "-m", "hst_fast.train", str(CONFIGS / config), "--work-dir", str(work), *extra,
            *as_cli(options)]


def start(command: list, stderr: Path) -> subprocess.Popen:
    with open(stderr, "w") as handle:
        return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=handle, env=ENV, cwd=REPO)


def kill_mid_epoch(command: list, work: Path, epoch: int = 2, iteration: int = 2) -> int:
    """Starts ``command``; once ``epoch_{epoch-1}.pth`` exists and ``iteration`` iterations of ``epoch`` are
    logged, kills it with SIGKILL. Returns the last iteration of ``epoch`` the log showed."""
    logged = re.compile(rf"Epoch\(train\)\s+\[{epoch}\]\[\s*(\d+)/")
    stderr = work.parent / "killed.stderr"
    process = start(command, stderr)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the run ended (status {process.returncode}) before it could be killed: "
                        f"{stderr.read_text()[-2000:]}")
        logs = sorted(work.glob("*/*.log"))
        done = [int(i) for i in logged.findall(logs[-1].read_text())] if logs else []
        if done and max(done) >= iteration and (work / f"epoch_{epoch - 1}.pth").is_file():
            process.send_signal(signal.SIGKILL)
            process.wait()
            return max(done)
        time.sleep(0.02)
    process.kill()
    pytest.fail("the run did not reach the kill point in time")


@pytest.mark.parametrize("task", TASKS)
def test_killed_mid_epoch_then_resumed_equals_unbroken_run(task, tmp_path):
    config, tiny = TASKS[task]
    options = tiny(tmp_path / "data")
    unbroken = start(driver(config, tmp_path / "unbroken", options), tmp_path / "unbroken.stderr")
    work = tmp_path / "killed"
    reached = kill_mid_epoch(driver(config, work, options), work)
    assert not (work / "epoch_2.pth").exists(), f"killed after epoch 2 had ended (iteration {reached})"
    resumed = subprocess.run(driver(config, work, options, "--resume"), capture_output=True, text=True, env=ENV,
                             cwd=REPO, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed epoch: 1" in latest_log(work)
    unbroken.wait(timeout=600)
    errors = (tmp_path / "unbroken.stderr").read_text()
    assert unbroken.returncode == 0, errors[-3000:]
    # a normal run prints no third-party warnings (hst_fast.openmmlab.cli filters mmengine's pkg_resources import and
    # mmdet's mask-head copy warning)
    assert "Warning" not in errors + resumed.stderr, errors + resumed.stderr

    final = torch.load(work / "epoch_3.pth")
    reference = torch.load(tmp_path / "unbroken" / "epoch_3.pth")
    assert final["meta"]["iter"] == reference["meta"]["iter"]
    assert final["state_dict"].keys() == reference["state_dict"].keys()
    for name, value in reference["state_dict"].items():
        assert torch.equal(final["state_dict"][name], value), name


def test_interrupted_save_leaves_the_previous_checkpoint_to_resume_from(tmp_path, monkeypatch):
    """The disk fills up halfway through writing epoch 2's checkpoint. With max_keep_ckpts=1, mmengine's own
    hook would have deleted epoch_1.pth before that save and written last_checkpoint in place."""
    options = {**tiny_cls_options(tmp_path / "data", max_epochs=2), "default_hooks.checkpoint.max_keep_ckpts": 1}
    work = tmp_path / "work"
    command = [str(CONFIGS / "cls_demo.py"), "--work-dir", str(work), *as_cli(options)]
    put = LocalBackend.put

    def disk_full_at_epoch_2(self, obj, filepath):
        if "epoch_2" in str(filepath):
            with open(filepath, "wb") as handle:
                handle.write(obj[: len(obj) // 2])
            raise OSError(errno.ENOSPC, "No space left on device", str(filepath))
        return put(self, obj, filepath)

    monkeypatch.setattr(LocalBackend, "put", disk_full_at_epoch_2)
    with pytest.raises(OSError, match="No space left"):
        train_driver.train(command)
    monkeypatch.undo()
    assert not (work / "epoch_2.pth").exists()  # the half-written bytes only ever had the temporary name
    assert (work / "last_checkpoint").read_text() == str(work / "epoch_1.pth")
    assert torch.load(work / "epoch_1.pth")["meta"]["epoch"] == 1

    train_driver.train([*command[:3], "--resume", *command[3:]])
    assert "resumed epoch: 1" in latest_log(work)
    assert torch.load(work / "epoch_2.pth")["meta"]["epoch"] == 2
    assert not (work / "epoch_1.pth").exists()  # max_keep_ckpts=1, once epoch 2 is safely in place
