"""Atomic file writes: a reader (or a resumed job) never sees a half-written file, and concurrent writers
(e.g. DDP ranks sharing a cache directory) each write their own temporary file. Files get the usual mode
under the process umask (0644 with umask 022), not ``mkstemp``'s owner-only 0600. A write that fails (full
disk, file-size limit) leaves the previous file as it was and raises ``AtomicWriteError`` naming the file;
a path that is a directory, or below a file, is named as such. JSON is written strictly (RFC 8259): a
non-finite float becomes ``null``, never a bare ``NaN``. ``file_lock`` is a ``filelock`` lock (flock on POSIX,
``LockFileEx`` on Windows): it dies with its process, so a killed holder never blocks the next one."""
from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import math
import os
import tempfile
from typing import Any, Callable, IO, Iterator, List, Optional

from filelock import FileLock


class AtomicWriteError(OSError):
    """Writing a file failed (e.g. no space left, file-size limit); the previous version of the file is intact."""


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def path_clash(path: str) -> Optional[str]:
    """Why ``path`` cannot be written as a file, if the file system's layout is the reason: ``path`` is a
    directory, or one of the folders above it is a file; ``None`` otherwise."""
    if os.path.isdir(path):
        return f"{path} is a directory, not a file: move it away, or write to another path"
    folder = os.path.dirname(os.path.abspath(path))
    while folder and not os.path.isdir(folder):
        if os.path.lexists(folder):
            return (f"{folder} is a file, not a directory, so {path} cannot be written below it: move that file "
                    "away, or choose another directory")
        parent = os.path.dirname(folder)
        if parent == folder:
            break
        folder = parent
    return None


def write_atomic(path: str, write: Callable[[IO], None], binary: bool = False) -> None:
    """Call ``write(file)`` on a temporary file beside ``path``, flush it to disk, then rename it over ``path``.

    Raises ``AtomicWriteError`` (an ``OSError``) naming ``path`` when the file system refuses the write (an
    ``OSError``, or the ``RuntimeError`` that ``torch.save`` turns it into, e.g. ``inline_container.cc ...
    unexpected pos``); ``path`` itself is then untouched and the temporary file removed. Other exceptions (and
    interrupts) propagate unchanged, also after removing the temporary file.
    """
    directory = os.path.dirname(os.path.abspath(path))
    tmp = None
    try:
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=os.path.basename(path) + ".", suffix=".tmp")
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_current_umask())
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.remove(tmp)
        if isinstance(exc, (OSError, RuntimeError)) and not isinstance(exc, AtomicWriteError):
            clash = path_clash(path)
            if clash is not None:
                raise AtomicWriteError(f"writing {path} failed: {clash}") from exc
            kept = "the previous file is intact" if os.path.exists(path) else "no file was written"
            raise AtomicWriteError(
                f"writing {path} failed ({type(exc).__name__}: {exc}); {kept}. Check the free space (df) and the "
                f"file-size limit (ulimit -f) of {directory}, then run again"
            ) from exc
        raise


def strict_json(data: Any) -> Any:
    """``data`` with every non-finite float (NaN, inf) replaced by ``None``, so that it is valid JSON."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {k: strict_json(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [strict_json(v) for v in data]
    return data


def write_json_atomic(path: str, data: Any) -> None:
    """Write ``data`` as strict JSON (non-finite floats as ``null``), atomically."""
    write_atomic(path, lambda f: json.dump(strict_json(data), f, indent=1, allow_nan=False))


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
    """Hold an exclusive lock on ``<path>.lock`` (``filelock.FileLock``) for the ``with`` block, waiting for it.

    Processes that read-modify-write one file (e.g. two evaluators sharing a results file) take it around the
    read and the write, so neither loses the other's update. The lock is released when its process dies (also
    by SIGKILL). The lock file is left in place (removing it would let a third process lock a new inode while
    the second still holds the old one). Raises ``AtomicWriteError`` naming a directory that is a file.
    """
    lock_path = path + ".lock"
    clash = path_clash(lock_path)
    if clash is not None:
        raise AtomicWriteError(f"locking {path} failed: {clash}")
    os.makedirs(os.path.dirname(os.path.abspath(lock_path)), exist_ok=True)
    with FileLock(lock_path):
        yield


def file_sha256(path: str) -> str:
    """Hex SHA-256 of a file's bytes (read in 1 MiB blocks): identifies a checkpoint by content in report keys."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
