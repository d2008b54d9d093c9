"""Run a step on the main process only and share its result (or its error) with every rank; tear down the
process groups of a launched worker."""
from __future__ import annotations

import gc
from typing import Callable, TypeVar

import torch.distributed as dist
from detectron2.utils import comm

T = TypeVar("T")


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
    interpreter shuts down. Call it at the end of every process started by detectron2's ``launch``.

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
