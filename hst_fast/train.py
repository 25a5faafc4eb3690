"""Train an HST model with mmengine's Runner (detection through mmdet, or VTAB-style classification).

    python -m hst_fast.train CONFIG [--work-dir DIR] [--cfg-options k=v ...] [--amp] [--resume [CKPT]] [--debug]
    torchrun --nproc_per_node N -m hst_fast.train CONFIG --launcher pytorch

Reads like mmdet's ``tools/train.py``; additionally, before anything is built, the config is checked
for keys nothing reads and for missing dataset files, and a checkpoint to resume from for being readable
(``hst_fast.openmmlab.checks``); on a machine without CUDA ``--launcher pytorch`` runs DDP over gloo
(``hst_fast.openmmlab.dist``). Work dir holds the full checkpoints (for ``--resume``) and ``adapter/`` (the
adapter-only files). A user error ends the command with status 2 and its message, without traceback
(``--debug`` or ``HST_FAST_DEBUG=1`` shows it; ``hst_fast.openmmlab.cli``).
"""
from __future__ import annotations

import argparse
import os
import os.path as osp
from typing import List, Optional

from mmengine.config import DictAction

from hst_fast.openmmlab.cli import run_command


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
    parser.add_argument("--debug", action="store_true", help="show the traceback of user errors too")
    args = parser.parse_args(argv)
    if "LOCAL_RANK" not in os.environ:
        os.environ["LOCAL_RANK"] = str(args.local_rank)
    return args


def train(argv: Optional[List[str]] = None) -> None:
    """The command without its error handling: raises what goes wrong."""
    args = parse_args(argv)

    # Imported here so that `--help` works without them; the config's custom_imports
    # (hst_fast.openmmlab) registers the HST modules while the file is parsed.
    import torch
    from mmengine.runner import find_latest_checkpoint

    from hst_fast.openmmlab.checks import ConfigError, check_checkpoint, check_config_keys, check_data_paths
    from hst_fast.openmmlab.cli import build_runner, load_config, silence_third_party_warnings
    from hst_fast.openmmlab.dist import distributed_run

    silence_third_party_warnings()
    cfg = load_config(args.config, args.launcher, args.cfg_options, args.work_dir)

    if args.amp:
        if not torch.cuda.is_available():
            raise ConfigError("--amp needs a CUDA device (mmengine's AmpOptimWrapper); train in fp32 on CPU")
        cfg.optim_wrapper.type = "AmpOptimWrapper"
        cfg.optim_wrapper.loss_scale = "dynamic"

    # resume: `--resume` alone picks the latest checkpoint of the work dir (none: start afresh), `--resume CKPT`
    # that file
    if args.resume == "auto":
        cfg.resume = True
        cfg.load_from = None
        latest = find_latest_checkpoint(cfg.work_dir) if osp.isfile(osp.join(cfg.work_dir, "last_checkpoint")) else None
        if latest is not None:
            check_checkpoint(latest, f"--resume (latest checkpoint named by {cfg.work_dir}/last_checkpoint)")
    elif args.resume is not None:
        cfg.resume = True
        cfg.load_from = args.resume
    if cfg.get("load_from"):
        check_checkpoint(cfg.load_from, "--resume" if args.resume else "load_from")

    check_config_keys(cfg, args.cfg_options)
    check_data_paths(cfg, splits=("train", "val"))
    with distributed_run(cfg):
        build_runner(cfg).train()


def main(argv: Optional[List[str]] = None) -> None:
    """``python -m hst_fast.train``: ``train`` with user errors as exit status 2 and their message."""
    run_command("hst_fast.train", train, argv)


if __name__ == "__main__":
    main()
