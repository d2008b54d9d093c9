"""Atomic file writes: a reader (or a resumed job) never sees a half-written file, and concurrent writers
(e.g. DDP ranks sharing a cache directory) each write their own temporary file. Files get the usual mode
under the process umask (0644 with umask 022), not ``mkstemp``'s owner-only 0600."""
from __future__ import annotations

import contextlib
import fcntl
import glob
import json
import os
import tempfile
from typing import Any, Callable, IO, Iterator, List


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomic(path: str, write: Callable[[IO], None], binary: bool = False) -> None:
    """Call ``write(file)`` on a temporary file beside ``path``, flush it to disk, then rename it over ``path``."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_current_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_json_atomic(path: str, data: Any) -> None:
    write_atomic(path, lambda f: json.dump(data, f, indent=1))


def temporaries_of(path: str) -> List[str]:
    """The temporary files ``write_atomic(path, ...)`` creates (``<path>.<random>.tmp``) that exist now."""
    return sorted(glob.glob(glob.escape(path) + ".*.tmp"))


def remove_stale_temporaries(path: str) -> List[str]:
    """Delete the temporaries a killed ``write_atomic(path, ...)`` left behind; returns the removed paths.

    Call it where no other process writes ``path`` (e.g. a run's own checkpoint, at its start on rank 0).
    """
    removed = []
    for tmp in temporaries_of(path):
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
            removed.append(tmp)
    return removed


@contextlib.contextmanager
def file_lock(path: str) -> Iterator[None]:
    """Hold an exclusive advisory lock (``fcntl.flock``) on ``<path>.lock`` for the ``with`` block.

    Processes that read-modify-write one file (e.g. two evaluators sharing a results file) take it around the
    read and the write, so neither loses the other's update. The lock file is left in place (removing it would
    let a third process lock a new inode while the second still holds the old one).
    """
    lock_path = path + ".lock"
    os.makedirs(os.path.dirname(os.path.abspath(lock_path)), exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
