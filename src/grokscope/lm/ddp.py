"""Data parallelism for the LM trainer: one process per device, started by ``torchrun``.

    torchrun --nproc_per_node=8 -m grokscope.cli train copy-lm-paper --out runs/paper

Every rank draws the same global batch from the per-step generator and takes its own slice of
rows, so the optimiser sees the same mean gradient (DDP averages across ranks) as one process
with the whole batch: `train.batch_size` is the global number of sequences per micro-step. Only
rank 0 evaluates and writes the run folder; the others wait at a barrier. The backend is nccl
when CUDA is available and gloo otherwise (CPU, or several machines without GPUs).
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from grokscope.train.loop import pick_device


def init_from_env() -> tuple[int, int]:
    """(rank, world size): (0, 1) unless started by torchrun (WORLD_SIZE > 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), dist.get_world_size()


def device_for(rank: int, want: str = "auto") -> torch.device:
    """This process's device: `train.device` (auto, cpu, cuda), on the GPU of its local rank."""
    device = pick_device(want, index=int(os.environ.get("LOCAL_RANK", rank)))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def mean_across(x: torch.Tensor) -> torch.Tensor:
    """The mean of a tensor over ranks (identity in one process)."""
    if dist.is_available() and dist.is_initialized():
        x = x.clone()
        dist.all_reduce(x)
        x /= dist.get_world_size()
    return x


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
