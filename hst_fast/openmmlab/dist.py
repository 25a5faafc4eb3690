"""Distributed training without GPUs (gloo): what mmengine's defaults assume and how the driver adapts them.

A ``torchrun --nproc_per_node N ... --launcher pytorch`` run with batch b per process computes what one
process computes with batch N*b over the same samples (up to float rounding): DDP averages the gradients of
the per-process mean losses, which is the gradient of the mean loss over all N*b samples, provided the
batch-statistics layers see all N*b samples too. HST has two (the side stem's BatchNorm2d and the
classifier's BatchNorm1d head norm); a config asks for that with mmengine's ``sync_bn = 'torch'``. torch's
``SyncBatchNorm`` runs on GPUs only, so on CPU ``setup_cpu_distributed`` converts them to
``GlooSyncBatchNorm`` instead. Without ``sync_bn`` each process normalizes by the statistics of its own b
samples (mmengine's default), which is a different model from the one-process run.
"""
from __future__ import annotations

import contextlib
import gc
import os
from typing import Dict, Iterator

import torch
import torch.distributed as dist
import torch.nn as nn
from mmengine.config import Config
from mmengine.model import MMDistributedDataParallel
from mmengine.registry import MODEL_WRAPPERS
from torch.nn.modules.batchnorm import _BatchNorm

from hst_fast.openmmlab.checks import ConfigError


class _AllReduceSum(torch.autograd.Function):
    """Sum over the ranks of the default process group. The adjoint of that sum is the sum over ranks of the
    output gradients, so each rank's input gets the gradient of every rank's loss (as torch's SyncBatchNorm)."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.clone()
        dist.all_reduce(tensor)
        return tensor

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class GlooSyncBatchNorm(_BatchNorm):
    """BatchNorm over the whole distributed batch, for process groups on CPU (torch's ``SyncBatchNorm`` refuses
    CPU tensors). Same parameters, buffers and state dict as ``BatchNorm1d/2d/3d``.

    In training, on x [B, C, *]: per-channel mean and biased variance over every rank's B x * positions (two
    all-reduces, mean first, then squared deviations, as the one-process two-pass computation), then
    ``(x - mean) / sqrt(var + eps) * weight + bias``; running statistics take the unbiased variance, as
    ``BatchNorm``. Autograd differentiates through the all-reduces. In eval mode, or with one process, it is
    plain ``BatchNorm``.
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected input of shape [B, C, *], got {tuple(input.shape)}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        self._check_input_dim(x)
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        local_count = x.numel() // x.shape[1]
        totals = _AllReduceSum.apply(torch.cat([x.sum(dims), x.new_tensor([local_count])]))
        count = totals[-1]
        mean = totals[:-1] / count
        centered = x - mean.view(shape)
        var = _AllReduceSum.apply((centered * centered).sum(dims)) / count
        y = centered * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            self._update_running_stats(mean.detach(), var.detach(), count.item())
        return y

    @torch.no_grad()
    def _update_running_stats(self, mean: torch.Tensor, var: torch.Tensor, count: float) -> None:
        self.num_batches_tracked.add_(1)
        factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        self.running_mean.lerp_(mean, factor)
        self.running_var.lerp_(var * count / max(count - 1.0, 1.0), factor)


def convert_gloo_sync_batchnorm(module: nn.Module) -> nn.Module:
    """``module`` with every ``BatchNorm1d/2d/3d`` replaced by a ``GlooSyncBatchNorm`` holding the same
    parameter and buffer tensors (as ``torch.nn.SyncBatchNorm.convert_sync_batchnorm``)."""
    if isinstance(module, _BatchNorm) and not isinstance(module, (GlooSyncBatchNorm, nn.SyncBatchNorm)):
        converted = GlooSyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                                      module.track_running_stats)
        if module.affine:
            converted.weight, converted.bias = module.weight, module.bias
        if module.track_running_stats:
            converted.running_mean, converted.running_var = module.running_mean, module.running_var
            converted.num_batches_tracked = module.num_batches_tracked
        converted.train(module.training)
        return converted
    for name, child in module.named_children():
        module.add_module(name, convert_gloo_sync_batchnorm(child))
    return module


@MODEL_WRAPPERS.register_module()
class GlooDistributedDataParallel(MMDistributedDataParallel):
    """mmengine's DDP wrapper for CPU process groups: ``sync_bn=True`` first converts the model's BatchNorm
    layers (``convert_gloo_sync_batchnorm``), and the values ``train_step`` returns for logging (losses,
    accuracies) are averaged over the ranks, so the log shows the whole batch's loss, as a one-process run
    with the same total batch would (mmengine logs rank 0's own)."""

    def __init__(self, module: nn.Module, sync_bn: bool = False, **kwargs):
        """module: the model; sync_bn: synchronize BatchNorm statistics; kwargs: ``DistributedDataParallel``'s."""
        super().__init__(module=convert_gloo_sync_batchnorm(module) if sync_bn else module, **kwargs)

    def train_step(self, data, optim_wrapper) -> Dict[str, torch.Tensor]:
        log_vars = super().train_step(data, optim_wrapper)
        values = torch.stack([torch.as_tensor(v).detach().float().reshape(()) for v in log_vars.values()])
        dist.all_reduce(values)
        values /= dist.get_world_size()
        return type(log_vars)(zip(log_vars.keys(), values.unbind()))


def setup_cpu_distributed(cfg: Config) -> None:
    """For ``--launcher pytorch`` on a machine without CUDA: starts the process group with gloo (NCCL needs
    GPUs) and wraps the model in ``GlooDistributedDataParallel`` without ``device_ids``; a config's
    ``sync_bn = 'torch'`` becomes that wrapper's ``sync_bn=True``.

    mmengine's ``init_dist`` calls ``torch.cuda.set_device`` unconditionally and its default DDP wrapper
    passes ``device_ids=[LOCAL_RANK]``, both of which fail on CPU; the Runner skips ``init_dist`` when a
    process group already exists, and keeps a ``device_ids`` given in ``model_wrapper_cfg``.
    """
    if cfg.get("launcher", "none") == "none" or torch.cuda.is_available():
        return
    cfg.setdefault("env_cfg", {}).setdefault("dist_cfg", {})["backend"] = "gloo"
    wrapper = cfg.get("model_wrapper_cfg") or dict(type="MMDistributedDataParallel")
    if wrapper.get("type") in ("MMDistributedDataParallel", MMDistributedDataParallel):
        wrapper["type"] = "GlooDistributedDataParallel"
    wrapper["device_ids"] = None
    if cfg.get("sync_bn") is not None:
        if wrapper["type"] != "GlooDistributedDataParallel" or cfg.sync_bn != "torch":
            raise ConfigError(f"sync_bn={cfg.sync_bn!r} with model_wrapper_cfg type {wrapper['type']!r}: on CPU, "
                             "BatchNorm statistics are synchronized by GlooDistributedDataParallel for sync_bn='torch'")
        wrapper["sync_bn"] = True
        cfg.sync_bn = None  # mmengine would convert to torch's SyncBatchNorm, which refuses CPU tensors
    cfg.model_wrapper_cfg = wrapper
    if not dist.is_initialized():
        if "RANK" not in os.environ:
            raise ConfigError("--launcher pytorch expects torchrun's environment (RANK, WORLD_SIZE, MASTER_ADDR...): "
                              "start it with torchrun --nproc_per_node N -m hst_fast.train ...")
        dist.init_process_group(backend="gloo")


def destroy_distributed(wait_for_all: bool = False) -> None:
    """Ends the process group, if one was started (by ``setup_cpu_distributed`` or mmengine's Runner);
    ``wait_for_all``: first wait until every rank got here (a barrier), so that no rank tears down its
    connections while another still uses them."""
    if dist.is_available() and dist.is_initialized():
        if wait_for_all:
            dist.barrier()
        dist.destroy_process_group()


@contextlib.contextmanager
def distributed_run(cfg: Config) -> Iterator[None]:
    """``setup_cpu_distributed(cfg)`` for the body (the Runner's life); at its end, the process group is ended.

    A process group left to the interpreter's exit can have its gloo threads destroyed while still running,
    which aborts a process after the work has finished ('terminate called without an active exception',
    seen on a rank that finished first). So after a successful body, what still holds the group (the Runner's
    DDP wrapper sits in reference cycles) is collected, all ranks meet at a barrier, then the group ends; after
    a failure it ends at once (another rank may never reach a barrier).
    """
    setup_cpu_distributed(cfg)
    try:
        yield
    except BaseException:
        destroy_distributed()
        raise
    gc.collect()
    destroy_distributed(wait_for_all=True)
