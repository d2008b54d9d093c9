"""Process-group helpers for torchrun and detectron2's ``launch`` (NCCL on GPUs, gloo on CPU; a single process
needs no group)."""
from __future__ import annotations

import dataclasses
import os
from typing import Any, List

import torch
import torch.distributed as dist
from detectron2.utils import comm


@dataclasses.dataclass
class DistContext:
    """This process's place in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str = "auto") -> DistContext:
    """This process's place in the job, and its device: the process group detectron2's ``launch`` (``--num-gpus``)
    started, or the torchrun job described by ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` (joined here), or one process.

    ``device``: ``auto`` (``cuda:LOCAL_RANK`` when CUDA is available, else CPU), ``cpu`` or ``cuda``.
    """
    if dist.is_initialized():  # started by launch
        world_size, rank, local_rank = dist.get_world_size(), dist.get_rank(), comm.get_local_rank()
    else:
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if use_cuda and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for but CUDA is not available")
    if not use_cuda and dist.is_initialized() and dist.get_backend() == "nccl":
        raise RuntimeError("--num-gpus started GPU (NCCL) processes but train.device is cpu: train on the GPUs "
                           "(train.device=auto), or start CPU processes with torchrun")
    if use_cuda:
        torch.cuda.set_device(local_rank)
    ctx = DistContext(rank, world_size, local_rank, torch.device(f"cuda:{local_rank}" if use_cuda else "cpu"))
    if ctx.enabled and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", init_method="env://")
    return ctx


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()


def broadcast_object(ctx: DistContext, obj: Any) -> Any:
    """``obj`` of rank 0 on every rank (picklable objects)."""
    if not ctx.enabled:
        return obj
    box: List[Any] = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(ctx: DistContext, obj: Any) -> List[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (picklable objects)."""
    if not ctx.enabled:
        return [obj]
    gathered: List[Any] = [None] * ctx.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def cleanup(ctx: DistContext) -> None:
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()
