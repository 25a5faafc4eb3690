"""Evaluate a trained model on the test split: a full checkpoint written by ``hst_fast.train``, or its
adapter-only folder (``WORK_DIR/adapter``) on the config's pretrained ViT.

    python -m hst_fast.test CONFIG CHECKPOINT|ADAPTER_DIR [--work-dir DIR] [--show-dir DIR] [--cfg-options k=v ...]

Reads like mmdet's ``tools/test.py``. ``--show-dir`` (detection configs) draws each test image with its
predicted boxes and masks (mmdet's ``DetVisualizationHook``) into DIR. The checkpoint is checked before
anything is built; a user error ends the command with status 2 and its message (``--debug``: traceback).
"""
from __future__ import annotations

import argparse
import os
import os.path as osp
from typing import List, Optional

from mmengine.config import Config, DictAction

from hst_fast.openmmlab.cli import run_command


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Test (and evaluate) an HST model")
    parser.add_argument("config", help="test config file path")
    parser.add_argument("checkpoint", help="checkpoint file, or an adapter folder (WORK_DIR/adapter)")
    parser.add_argument("--work-dir", help="the directory to save the file containing evaluation metrics")
    parser.add_argument("--show-dir", help="directory where painted predictions are saved (detection configs)")
    parser.add_argument("--score-thr", type=float, default=0.3, help="score threshold of drawn predictions")
    parser.add_argument(
        "--cfg-options", nargs="+", action=DictAction,
        help="override settings of the config, key=value (e.g. test_dataloader.batch_size=4)")
    parser.add_argument("--launcher", choices=["none", "pytorch", "slurm", "mpi"], default="none",
                        help="job launcher")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=0)
    parser.add_argument("--debug", action="store_true", help="show the traceback of user errors too")
    args = parser.parse_args(argv)
    if "LOCAL_RANK" not in os.environ:
        os.environ["LOCAL_RANK"] = str(args.local_rank)
    return args


def trigger_visualization_hook(cfg: Config, show_dir: str, score_thr: float) -> None:
    """Turns on the config's visualization hook to draw every test image's predictions under ``show_dir``:
    mmdet's ``DetVisualizationHook`` (boxes and masks scoring at least ``score_thr``, into DIR) or mmseg's
    ``SegVisualizationHook`` (the predicted mask over the image, into DIR/vis_data/vis_image/ as mmseg's
    tools/test.py does: that hook draws through the visualizer, whose ``save_dir`` becomes DIR)."""
    hook = cfg.get("default_hooks", {}).get("visualization") or {}
    kind = str(hook.get("type", "")).split(".")[-1]  # 'mmseg.SegVisualizationHook' -> 'SegVisualizationHook'
    # absolute, because the hooks join a relative directory onto work_dir/timestamp
    if kind == "DetVisualizationHook":
        hook["score_thr"] = score_thr
        hook["test_out_dir"] = osp.abspath(show_dir)
    elif kind == "SegVisualizationHook":
        hook["interval"] = 1  # every image, not every 50th
        cfg.visualizer["save_dir"] = osp.abspath(show_dir)
    else:
        raise SystemExit("--show-dir needs default_hooks.visualization = DetVisualizationHook (mmdet configs) or "
                         f"SegVisualizationHook (mmseg configs); this config has {kind or 'none'}")
    hook["draw"] = True


def evaluate(argv: Optional[List[str]] = None) -> None:
    """The command without its error handling: raises what goes wrong."""
    args = parse_args(argv)

    from hst_fast.openmmlab.checks import check_checkpoint, check_config_keys, check_data_paths
    from hst_fast.openmmlab.cli import load_config, silence_third_party_warnings
    from hst_fast.openmmlab.dist import distributed_run

    silence_third_party_warnings()
    cfg = load_config(args.config, args.launcher, args.cfg_options, args.work_dir)

    adapter = args.checkpoint if osp.isdir(args.checkpoint) else None
    if adapter is None:
        check_checkpoint(args.checkpoint, "CHECKPOINT")
    cfg.load_from = None if adapter else args.checkpoint
    if args.show_dir:
        trigger_visualization_hook(cfg, args.show_dir, args.score_thr)

    check_config_keys(cfg, args.cfg_options)
    check_data_paths(cfg, splits=("test",))
    with distributed_run(cfg):
        build_runner_and_test(cfg, adapter)


def build_runner_and_test(cfg: Config, adapter: Optional[str]) -> None:
    """Builds the Runner, puts the adapter (a folder) on its model if given, and runs the test loop."""
    from mmengine.logging import print_log

    from hst_fast.openmmlab.cli import build_runner
    from hst_fast.openmmlab.hooks import load_task_adapter

    runner = build_runner(cfg)
    if adapter:
        runner._init_model_weights()  # the config's pretrained ViT, which HSTViT reads in init_weights only
        load_task_adapter(runner.model, adapter)
        print_log(f"adapter loaded from {adapter} onto the config's ViT", logger="current")
    runner.test()


def main(argv: Optional[List[str]] = None) -> None:
    """``python -m hst_fast.test``: ``evaluate`` with user errors as exit status 2 and their message."""
    run_command("hst_fast.test", evaluate, argv)


if __name__ == "__main__":
    main()
