"""Run a step on the main process only and share its result (or its error) with every rank."""
from __future__ import annotations

from typing import Callable, TypeVar

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
