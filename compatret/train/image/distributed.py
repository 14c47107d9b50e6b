"""Data-parallel image training on the standard launcher: `torchrun` starts one process per GPU (or
several CPU processes, on one machine or many) and sets RANK / WORLD_SIZE / LOCAL_RANK; each process
joins the group (NCCL on GPUs, gloo on CPUs) and trains a DDP replica on its part of every
global batch. Chosen over Ray Train: no new dependency, and torchrun is what GPU clusters
(SLURM, Kubernetes operators) already launch.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from compatret.core.errors import CompatretError

T = TypeVar("T")


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world: int = 1
    local: int = 0

    @property
    def main(self) -> bool:
        """The process that shows progress and writes checkpoints and the model folder."""
        return self.rank == 0


def ranks() -> Ranks:
    """Where this process stands, from torchrun's environment (one process: rank 0 of 1)."""
    return Ranks(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0)))


def join(device: str, r: Ranks) -> str:
    """Join the process group (once) and return this process's device (cuda:LOCAL_RANK on GPUs)."""
    if r.world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    if device.startswith("cuda") and r.world > 1:
        torch.cuda.set_device(r.local)
        return f"cuda:{r.local}"
    return device


def agreed(decide: Callable[[], T]) -> T:
    """`decide()` run by the first process only (checks and writes of shared files), its answer or
    its CompatretError given to every process, so none waits on a step another refused."""
    if not dist.is_initialized():
        return decide()
    said: list[Any] = [None]
    failure: BaseException | None = None
    if dist.get_rank() == 0:
        try:
            said[0] = ("ok", decide())
        except Exception as exc:  # any failure: the others must hear of it, not wait for it
            said[0], failure = ("error", str(exc) if isinstance(exc, CompatretError) else f"{type(exc).__name__}: {exc}"), exc
    dist.broadcast_object_list(said, src=0)
    kind, value = said[0]
    if failure is not None:
        raise failure
    if kind == "error":
        raise CompatretError(f"the first process refused the run: {value}")
    return value


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_sum(t: torch.Tensor) -> torch.Tensor:
    """The sum over processes (the tensor itself in a one-process run); NCCL reduces on the GPU."""
    if not dist.is_initialized():
        return t
    if dist.get_backend() == "nccl":
        on_gpu = t.cuda()
        dist.all_reduce(on_gpu)
        return on_gpu.to(t.device)
    dist.all_reduce(t)
    return t


def leave() -> None:
    """Leave the process group at the end of a run (NCCL warns, or hangs at exit, otherwise)."""
    if dist.is_initialized():
        dist.destroy_process_group()


class CpuSyncBatchNorm(nn.BatchNorm2d):
    """BatchNorm over the global batch on CPU processes (torch's SyncBatchNorm needs a GPU): each
    process's per-channel sums are all-reduced, through autograd, so gradients flow to every
    process's inputs as they would through one batch; alone it is plain BatchNorm2d."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        c = x.shape[1]
        summed = all_reduce(torch.cat([x.sum((0, 2, 3)), x.new_full((1,), float(x.numel() // c))]))
        n = summed[-1]
        mean = summed[:c] / n
        var = all_reduce(((x - mean.view(1, -1, 1, 1)) ** 2).sum((0, 2, 3))) / n  # two passes, as BatchNorm2d: no cancellation
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            with torch.no_grad():
                m = self.momentum if self.momentum is not None else 0.1
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * n / (n - 1), alpha=m)
                if self.num_batches_tracked is not None:
                    self.num_batches_tracked.add_(1)
        y = (x - mean.view(1, -1, 1, 1)) * torch.rsqrt(var.view(1, -1, 1, 1) + self.eps)
        return y * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1) if self.affine else y


def sync_batchnorm(module: nn.Module, device: str) -> nn.Module:
    """Batch statistics over the global batch: torch's SyncBatchNorm on GPUs, CpuSyncBatchNorm on
    CPUs (same parameters and buffers, so the saved weights load into the plain model)."""
    if device.startswith("cuda"):
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            synced = CpuSyncBatchNorm(child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats)
            synced.load_state_dict(child.state_dict())
            setattr(module, name, synced)
        else:
            sync_batchnorm(child, device)
    return module
