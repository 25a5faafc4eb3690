"""Evaluate a trained HST model (a full checkpoint written by ``hst_fast.train``) on the test split.

    python -m hst_fast.test CONFIG CHECKPOINT [--work-dir DIR] [--show-dir DIR] [--cfg-options k=v ...]

Reads like mmdet's ``tools/test.py``. ``--show-dir`` (detection configs) draws each test image with its
predicted boxes and masks (mmdet's ``DetVisualizationHook``) into DIR.
"""
from __future__ import annotations

import argparse
import os
import os.path as osp
from typing import List, Optional

from mmengine.config import Config, DictAction


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Test (and evaluate) an HST model")
    parser.add_argument("config", help="test config file path")
    parser.add_argument("checkpoint", help="checkpoint file")
    parser.add_argument("--work-dir", help="the directory to save the file containing evaluation metrics")
    parser.add_argument("--show-dir", help="directory where painted predictions are saved (detection configs)")
    parser.add_argument("--score-thr", type=float, default=0.3, help="score threshold of drawn predictions")
    parser.add_argument(
        "--cfg-options", nargs="+", action=DictAction,
        help="override settings of the config, key=value (e.g. test_dataloader.batch_size=4)")
    parser.add_argument("--launcher", choices=["none", "pytorch", "slurm", "mpi"], default="none",
                        help="job launcher")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=0)
    args = parser.parse_args(argv)
    if "LOCAL_RANK" not in os.environ:
        os.environ["LOCAL_RANK"] = str(args.local_rank)
    return args


def trigger_visualization_hook(cfg: Config, show_dir: str, score_thr: float) -> None:
    """Turns on mmdet's ``DetVisualizationHook`` to write drawn predictions into ``show_dir``."""
    hook = cfg.get("default_hooks", {}).get("visualization")
    if hook is None:
        raise SystemExit("--show-dir needs a detection config (default_hooks.visualization = DetVisualizationHook)")
    hook["draw"] = True
    hook["score_thr"] = score_thr
    # absolute, because the hook joins a relative test_out_dir onto work_dir/timestamp at every iteration
    hook["test_out_dir"] = osp.abspath(show_dir)


def main(argv: Optional[List[str]] = None) -> None:
    args = parse_args(argv)

    from hst_fast.openmmlab.checks import check_config_keys, check_data_paths
    from hst_fast.openmmlab.cli import build_runner, load_config
    from hst_fast.openmmlab.dist import destroy_distributed, setup_cpu_distributed

    cfg = load_config(args.config, args.launcher, args.cfg_options, args.work_dir)

    if not osp.isfile(args.checkpoint):
        raise SystemExit(f"checkpoint not found: {args.checkpoint}")
    cfg.load_from = args.checkpoint
    if args.show_dir:
        trigger_visualization_hook(cfg, args.show_dir, args.score_thr)

    check_config_keys(cfg, args.cfg_options)
    check_data_paths(cfg, splits=("test",))
    setup_cpu_distributed(cfg)
    try:
        build_runner(cfg).test()
    finally:
        destroy_distributed()


if __name__ == "__main__":
    main()
