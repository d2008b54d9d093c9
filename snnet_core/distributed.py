"""Process-group helpers of both projects, for processes started by detectron2's ``launch`` (``--num-gpus``,
``snnet_core.cli.launch_command``) or by torchrun (NCCL on GPUs, gloo on CPU; a single process needs no group).

- ``init_distributed`` places this process in its job (``DistContext``: rank, world size, device); ``barrier``,
  ``broadcast_object`` and ``gather_objects`` act on the job of a ``DistContext`` (no-ops for one process).
- ``run_on_main`` runs a step on the main process and shares its result, or its error, with every rank.
- ``destroy_process_groups`` ends every process of a job (see its docstring for the abort it prevents).
"""
from __future__ import annotations

import dataclasses
import gc
import os
from typing import Any, Callable, List, TypeVar

import torch
import torch.distributed as dist
from detectron2.utils import comm

T = TypeVar("T")


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

    ``device`` (the config's ``train.device``): ``auto`` (``cuda:LOCAL_RANK`` when CUDA is available, else CPU),
    ``cpu`` or ``cuda``; a device this machine or job cannot give is a ``ValueError`` naming the fix.
    """
    if dist.is_initialized():  # started by launch
        world_size, rank, local_rank = dist.get_world_size(), dist.get_rank(), comm.get_local_rank()
    else:
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if use_cuda and not torch.cuda.is_available():
        raise ValueError("train.device=cuda but CUDA is not available: pass train.device=cpu (or auto)")
    if not use_cuda and dist.is_initialized() and dist.get_backend() == "nccl":
        raise ValueError("--num-gpus started GPU (NCCL) processes but train.device is cpu: train on the GPUs "
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


def run_on_main(fn: Callable[[], T]) -> T:
    """``fn()`` on the main process; every rank returns its result or raises its exception.

    Used for steps that read or write shared files or must give bit-identical answers on all ranks
    (FLOPs table, stitch selection, resume state), without leaving the other ranks waiting in a
    collective when the main process fails.
    """
    result, error = None, None
    if comm.is_main_process():
        try:
            result = fn()
        except Exception as exc:  # re-raised on every rank below
            error = exc
    if comm.get_world_size() > 1:
        result, error = comm.all_gather((result, error))[0]
    if error is not None:
        raise error
    return result


def destroy_process_groups() -> None:
    """Destroy the process groups (no-op without any), so that the gloo worker threads are joined before the
    interpreter shuts down. Call it at the end of every process of a job (started by ``launch`` or torchrun).

    A gloo worker thread releases each finished collective after it has woken the caller, and releasing its
    tensors takes the GIL. A process that exits right after its last collective can start interpreter
    finalization before that thread got the GIL; Python then ends the thread with ``pthread_exit``, whose
    unwinding through the (noexcept) destructor aborts the process: "terminate called without an active
    exception", SIGABRT, at random under CPU load. A ``ProcessGroupGloo`` joins its threads only when its
    last reference goes: ``destroy_process_group`` drops torch's, detectron2 caches the global group in
    ``comm._get_global_gloo_group`` (its per-machine group is never used for collectives), and a DDP model
    of the finished run may still be waiting in a reference cycle.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    dist.destroy_process_group()
    comm._get_global_gloo_group.cache_clear()
    gc.collect()
