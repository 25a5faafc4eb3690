"""Distributed training without GPUs: what mmengine's defaults assume and how the driver adapts them."""
from __future__ import annotations

import os

import torch
import torch.distributed as dist
from mmengine.config import Config


def setup_cpu_distributed(cfg: Config) -> None:
    """For ``--launcher pytorch`` on a machine without CUDA: starts the process group with gloo
    (NCCL needs GPUs) and wraps the model in DDP without ``device_ids``.

    mmengine's ``init_dist`` calls ``torch.cuda.set_device`` unconditionally and its default DDP wrapper
    passes ``device_ids=[LOCAL_RANK]``, both of which fail on CPU; the Runner skips ``init_dist`` when a
    process group already exists, and keeps a ``device_ids`` given in ``model_wrapper_cfg``.
    """
    if cfg.get("launcher", "none") == "none" or torch.cuda.is_available():
        return
    cfg.setdefault("env_cfg", {}).setdefault("dist_cfg", {})["backend"] = "gloo"
    wrapper = cfg.get("model_wrapper_cfg") or dict(type="MMDistributedDataParallel")
    wrapper["device_ids"] = None
    cfg.model_wrapper_cfg = wrapper
    if not dist.is_initialized():
        if "RANK" not in os.environ:
            raise RuntimeError("--launcher pytorch expects torchrun's environment (RANK, WORLD_SIZE, MASTER_ADDR...)")
        dist.init_process_group(backend="gloo")


def destroy_distributed() -> None:
    """Ends the process group, if one was started (by ``setup_cpu_distributed`` or mmengine's Runner).

    Called by the drivers when the run ends: a process group left to the interpreter's exit can have its
    gloo threads destroyed while still running, which aborts the process after the work has finished.
    """
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
