"""Atomic file writes: a reader (or a resumed job) never sees a half-written file, and concurrent writers
(e.g. DDP ranks sharing a cache directory) each write their own temporary file. Files get the usual mode
under the process umask (0644 with umask 022), not ``mkstemp``'s owner-only 0600."""
from __future__ import annotations

import json
import os
import tempfile
from typing import Any, Callable, IO


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
