"""Train an HST model with mmengine's Runner (detection through mmdet, or VTAB-style classification).

    python -m hst_fast.train CONFIG [--work-dir DIR] [--cfg-options k=v ...] [--amp] [--resume [CKPT]]
    torchrun --nproc_per_node N -m hst_fast.train CONFIG --launcher pytorch

Reads like mmdet's ``tools/train.py``; additionally, before anything is built, the config is checked
for keys nothing reads and for missing dataset files (``hst_fast.openmmlab.checks``), and on a machine
without CUDA ``--launcher pytorch`` runs DDP over gloo (``hst_fast.openmmlab.dist``).
Work dir holds the full checkpoints (for ``--resume``) and ``adapter/`` (the adapter-only files).
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional

from mmengine.config import DictAction


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Train an HST model (mmengine Runner)")
    parser.add_argument("config", help="train config file path")
    parser.add_argument("--work-dir", help="the dir to save logs, checkpoints and adapter/")
    parser.add_argument("--amp", action="store_true", help="enable automatic mixed precision training (GPU)")
    parser.add_argument(
        "--resume", nargs="?", type=str, const="auto",
        help="resume from CKPT; without CKPT, from the latest checkpoint in the work dir")
    parser.add_argument(
        "--cfg-options", nargs="+", action=DictAction,
        help="override settings of the config, key=value (e.g. train_cfg.max_epochs=1)")
    parser.add_argument("--launcher", choices=["none", "pytorch", "slurm", "mpi"], default="none",
                        help="job launcher")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=0)  # torch.distributed.launch
    args = parser.parse_args(argv)
    if "LOCAL_RANK" not in os.environ:
        os.environ["LOCAL_RANK"] = str(args.local_rank)
    return args


def main(argv: Optional[List[str]] = None) -> None:
    args = parse_args(argv)

    # Imported here so that `--help` works without them; the config's custom_imports
    # (hst_fast.openmmlab) registers the HST modules while the file is parsed.
    import torch

    from hst_fast.openmmlab.checks import check_config_keys, check_data_paths
    from hst_fast.openmmlab.cli import build_runner, load_config
    from hst_fast.openmmlab.dist import destroy_distributed, setup_cpu_distributed

    cfg = load_config(args.config, args.launcher, args.cfg_options, args.work_dir)

    if args.amp:
        if not torch.cuda.is_available():
            sys.exit("--amp needs a CUDA device (mmengine's AmpOptimWrapper); train in fp32 on CPU")
        cfg.optim_wrapper.type = "AmpOptimWrapper"
        cfg.optim_wrapper.loss_scale = "dynamic"

    # resume: `--resume` alone picks the latest checkpoint of the work dir, `--resume CKPT` that file
    if args.resume == "auto":
        cfg.resume = True
        cfg.load_from = None
    elif args.resume is not None:
        cfg.resume = True
        cfg.load_from = args.resume

    check_config_keys(cfg, args.cfg_options)
    check_data_paths(cfg, splits=("train", "val"))
    setup_cpu_distributed(cfg)
    try:
        build_runner(cfg).train()
    finally:
        destroy_distributed()


if __name__ == "__main__":
    main()
