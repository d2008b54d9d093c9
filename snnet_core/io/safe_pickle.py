"""A restricted unpickler for weight files written by ``pickle`` (detectron2 / Detectron model-zoo ``.pkl``).

``pickle.load`` runs whatever the file tells it to (``__reduce__`` can name any callable), so an untrusted
``.pkl`` is code, not data. ``load_safe_pickle`` admits only the globals needed to rebuild numpy arrays and
scalars: plain containers (dict, list, tuple, set), str/bytes/numbers come from pickle opcodes that call
nothing; every other global (``os.system``, ``builtins.eval``, a class of the file's choosing, ...) is an
``UnsafePickleError`` naming the file and the global, raised before anything is called.

The detectron2 model-zoo layout ``{"model": {name: ndarray}, "__author__": str, "matching_heuristics": bool}``
and Caffe2's ``{"blobs": {name: ndarray}}`` both load.
"""
from __future__ import annotations

import os
import pickle
from typing import Any, BinaryIO, FrozenSet, Optional, Tuple

from snnet_core.io.file_claims import check_checkpoint_claims

__all__ = ["UnsafePickleError", "load_safe_pickle", "ALLOWED_GLOBALS"]

# (module, name) pairs a numpy array / dtype / scalar pickle needs, for numpy 1.x and 2.x module paths.
ALLOWED_GLOBALS: FrozenSet[Tuple[str, str]] = frozenset(
    [(core, name) for core in ("numpy.core.multiarray", "numpy._core.multiarray")
     for name in ("_reconstruct", "scalar")]
    + [("numpy", "ndarray"), ("numpy", "dtype")]
    + [("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer")]
    + [("collections", "OrderedDict"), ("builtins", "set"), ("builtins", "frozenset"),
       ("builtins", "slice"), ("builtins", "complex"), ("_codecs", "encode")]
)


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle names a global outside ``ALLOWED_GLOBALS`` (it could execute code)."""


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: BinaryIO, source: str):
        super().__init__(file, encoding="latin1")  # Python-2 pickles of the Detectron model zoo
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise UnsafePickleError(
            f"{self.source}: refusing to unpickle global {module}.{name}: this file could run code when loaded. "
            "Only numpy arrays and plain containers are read from .pkl files; convert trusted weights to a "
            "torch state dict (.pth, loaded with weights_only=True) instead"
        )

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"{self.source}: persistent ids are not allowed in a weights pickle ({pid!r})")


def load_safe_pickle(path: str, expected_bytes: Optional[int] = None) -> Any:
    """Unpickle ``path`` admitting only numpy arrays/dtypes/scalars and plain containers.

    ``expected_bytes``: bytes of the model it is read for; a larger file (beyond ``snnet_core.io.file_claims``'
    margin) is refused before it is read.

    Raises ``UnsafePickleError`` for any other global, ``ValueError`` (naming the file) for a truncated or
    corrupt pickle or one too large for the model (``CheckpointClaimError``).
    """
    check_checkpoint_claims(path, expected_bytes, "weights pickle")
    with open(path, "rb") as f:
        try:
            return _RestrictedUnpickler(f, os.fspath(path)).load()
        except UnsafePickleError:
            raise
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as exc:
            raise ValueError(f"{path}: not a readable weights pickle ({type(exc).__name__}: {exc}); "
                             "the file may be truncated or corrupt: download or copy it again") from exc
