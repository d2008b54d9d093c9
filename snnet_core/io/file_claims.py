"""What a checkpoint file may make its reader allocate, bounded before it is read.

A torch checkpoint is a zip whose central directory states each entry's uncompressed size: torch writes its
entries uncompressed, but a crafted file can deflate them (1 MB on disk claiming 1 GiB of storage), and
``torch.load`` then allocates every byte claimed. A pickle or ``.safetensors`` file allocates about what it
holds on disk, except a legacy (pre-zip, ``_use_new_zipfile_serialization=False``) torch file: its pickle states
each storage's size and ``torch.load`` allocates it before reading the data that follows (a 4 KB file claiming
8 GB: ``std::bad_alloc`` aborts the process under a memory limit), so its claims are read from the pickle without
building anything (``legacy_storage_bytes``). ``check_checkpoint_claims`` compares these claims with the bytes of the
model the file is read for (weights, plus the optimizer state a training checkpoint carries: ``CLAIM_MARGIN``
times them, plus ``CLAIM_SLACK``) and refuses a file claiming more, before anything is read; ``check_key_count``
bounds the number of entries (a 4 MB pickle of 300k keys makes detectron2's key matching run for minutes and fail out of memory).
Every checkpoint reader of the engine and of both projects calls them.
"""
from __future__ import annotations

import glob
import io
import os
import pickle
import zipfile
from typing import Any, Dict, Optional

import torch.nn as nn

__all__ = ["CLAIM_MARGIN", "CLAIM_SLACK", "CheckpointClaimError", "check_checkpoint_claims", "check_checkpoint_path",
           "check_key_count", "claimed_bytes", "legacy_storage_bytes", "state_bytes"]

CLAIM_MARGIN = 4  # weights + AdamW's two moments + room for a head or classifier the model does not hold
CLAIM_SLACK = 16 << 20  # bytes: pickled metadata, a tiny model's head, zip headers
KEY_MARGIN = 4
KEY_SLACK = 1024
MiB = float(1 << 20)


class CheckpointClaimError(ValueError):
    """A checkpoint file claims far more data (bytes or entries) than the model it is read for could use."""


def check_checkpoint_path(path: str, what: str = "checkpoint", hint: str = "") -> None:
    """Raise ``FileNotFoundError`` (``hint`` appended) if ``path`` does not exist, ``IsADirectoryError`` naming the
    file in it to give (the one its ``last_checkpoint`` names, else its checkpoint files) if it is a directory."""
    if os.path.isdir(path):
        tag = os.path.join(path, "last_checkpoint")
        try:
            with open(tag) as f:
                candidates = [os.path.join(path, f.read().strip())]
        except (OSError, UnicodeDecodeError):
            candidates = sorted(found for ext in ("pth", "pkl", "safetensors")
                                for found in glob.glob(os.path.join(glob.escape(path), f"*.{ext}")))
        give = (f"give a file in it, e.g. {candidates[0]!r}" if candidates else
                "it holds no .pth/.pkl/.safetensors file: give the checkpoint file itself")
        raise IsADirectoryError(f"{what} {path!r} is a directory, not a checkpoint file: {give}")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} {path!r} does not exist{hint}")


def state_bytes(module: nn.Module) -> int:
    """Bytes of ``module``'s state dict (parameters and persistent buffers; meta tensors count their size)."""
    return sum(t.numel() * t.element_size() for t in module.state_dict().values())


def claimed_bytes(path: str) -> int:
    """Bytes reading ``path`` allocates at most: the total uncompressed size its zip central directory states for
    a torch zip checkpoint, the larger of its storages' stated sizes and its size on disk for a legacy torch file,
    its size on disk for any other file (pickle, ``.safetensors``)."""
    size = os.path.getsize(path)
    if not zipfile.is_zipfile(path):
        legacy = legacy_storage_bytes(path)
        return size if legacy is None else max(size, legacy)
    try:
        with zipfile.ZipFile(path) as archive:
            return sum(info.file_size for info in archive.infolist())
    except (zipfile.BadZipFile, OSError, ValueError):  # a broken directory: torch.load names the corruption
        return size


class _Placeholder:
    """What ``_ClaimReader`` makes of any global, call or object state: nothing runs."""

    def __init__(self, *args: Any, **kwargs: Any):
        pass

    def __call__(self, *args: Any, **kwargs: Any) -> "_Placeholder":
        return _Placeholder()

    def __setstate__(self, state: Any) -> None:
        pass

    def __setitem__(self, key: Any, value: Any) -> None:
        pass

    def append(self, item: Any) -> None:
        pass

    def extend(self, items: Any) -> None:
        pass


class _StorageName(_Placeholder):
    def __init__(self, name: str):
        self.name = name


class _ClaimReader(pickle.Unpickler):
    """Reads a pickle's structure without importing or calling anything (every global is a ``_Placeholder``),
    recording the ``(root key -> bytes)`` of the storages a legacy torch pickle's persistent ids state."""

    def __init__(self, file: io.BufferedIOBase):
        super().__init__(file)
        self.storages: Dict[Any, int] = {}

    def find_class(self, module: str, name: str) -> Any:
        return _StorageName(name) if name.endswith("Storage") else _Placeholder

    def persistent_load(self, pid: Any) -> Any:
        if isinstance(pid, tuple) and len(pid) >= 5 and pid[0] in ("storage", b"storage"):
            storage_type, key, numel = pid[1], pid[2], pid[4]
            if not isinstance(numel, int) or numel < 0:
                raise pickle.UnpicklingError(f"storage {key!r} states {numel!r} elements")
            self.storages[_hashable(key)] = numel * _element_size(storage_type)
        return _Placeholder()


def _hashable(key: Any) -> Any:
    try:
        hash(key)
        return key
    except TypeError:
        return repr(key)


def _element_size(storage_type: Any) -> int:
    """Bytes per element of a legacy storage type (``FloatStorage``: 4); 16, the largest, if unknown."""
    import torch
    from torch.serialization import StorageType

    try:
        return torch._utils._element_size(StorageType(storage_type.name).dtype)
    except (AttributeError, KeyError):
        return 16


def legacy_storage_bytes(path: str) -> Optional[int]:
    """Total bytes the storages of a legacy (non-zip) torch file state (``torch.load`` allocates them before
    reading their data), read from its pickle without building anything; ``None`` if ``path`` is not a legacy
    torch file (a zip checkpoint, a plain pickle, ``.safetensors``) or its header cannot be read (``torch.load``
    names the corruption)."""
    import torch

    with open(path, "rb") as f:
        try:  # a legacy file starts with torch's magic number, a pickle of a few bytes
            if _ClaimReader(io.BytesIO(f.read(64))).load() != torch.serialization.MAGIC_NUMBER:
                return None
        except Exception:  # noqa: BLE001 - any other content: not a legacy torch file
            return None
        f.seek(0)
        reader = _ClaimReader(f)
        try:
            for _ in range(4):  # magic number, protocol version, system info, the object with its storages
                reader.load()
        except Exception:  # noqa: BLE001 - a corrupt pickle: torch.load names it; what was read still counts
            pass
        return sum(reader.storages.values())


def check_checkpoint_claims(path: str, expected_bytes: Optional[int], what: str = "checkpoint") -> None:
    """Refuse ``path`` before it is read if it claims more than a checkpoint of the model could hold.

    Args:
        path: an existing file.
        expected_bytes: bytes of the model the file is read for (``state_bytes``); the file may claim
            ``CLAIM_MARGIN`` times them plus ``CLAIM_SLACK``. ``None`` (the model is built from the file): it may
            claim no more than it holds on disk plus ``CLAIM_SLACK``, as every file ``torch.save`` writes does.
        what: names the file in the error (``"SN-Net checkpoint"``).

    Raises ``CheckpointClaimError`` (a ``ValueError``) naming the file, its claim and the limit.
    """
    claimed, on_disk = claimed_bytes(path), os.path.getsize(path)
    if expected_bytes is None:
        limit = on_disk + CLAIM_SLACK
        if claimed > limit:
            why = ("its zip entries are compressed; torch.save never compresses them" if zipfile.is_zipfile(path) else
                   "a legacy torch file whose pickle states storages larger than the data it holds")
            raise CheckpointClaimError(
                f"{what} {path!r} claims {claimed / MiB:.0f} MiB of data in {on_disk / MiB:.1f} MiB on disk ({why}): "
                "refused before reading it, as loading "
                f"it would allocate every claimed byte (limit: the size on disk + {CLAIM_SLACK / MiB:.0f} MiB). Save "
                "the weights again with torch.save, or use the checkpoint as it was written")
        return
    limit = CLAIM_MARGIN * expected_bytes + CLAIM_SLACK
    if claimed > limit:
        raise CheckpointClaimError(
            f"{what} {path!r} claims {claimed / MiB:.0f} MiB of data ({on_disk / MiB:.1f} MiB on disk), more than a "
            f"checkpoint of this model can hold ({expected_bytes / MiB:.1f} MiB of weights; limit {CLAIM_MARGIN}x "
            f"that + {CLAIM_SLACK / MiB:.0f} MiB for optimizer state and metadata): refused before reading it. It "
            "belongs to a much larger model or was crafted (compressed entries, or a legacy file's pickle stating "
            "larger storages than it holds); pass the checkpoint written for "
            "this model, or one holding only its weights")


def check_key_count(count: int, expected: int, path: str, what: str = "checkpoint") -> None:
    """Refuse a checkpoint of ``count`` weight entries for a model of ``expected`` ones if it holds more than
    ``KEY_MARGIN`` times them plus ``KEY_SLACK`` (``CheckpointClaimError`` naming the file and both counts)."""
    limit = KEY_MARGIN * expected + KEY_SLACK
    if count > limit:
        raise CheckpointClaimError(
            f"{what} {path!r} holds {count} weight entries for a model of {expected} (limit {limit}): refused "
            "before matching its names, which would take minutes and memory growing with both counts. It is not "
            "a checkpoint of this model; pass the one written for it")
