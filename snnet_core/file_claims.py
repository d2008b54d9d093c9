"""What a checkpoint file may make its reader allocate, bounded before it is read.

A torch checkpoint is a zip whose central directory states each entry's uncompressed size: torch writes its
entries uncompressed, but a crafted file can deflate them (1 MB on disk claiming 1 GiB of storage), and
``torch.load`` then allocates every byte claimed. A pickle or ``.safetensors`` file allocates about what it
holds on disk. ``check_checkpoint_claims`` compares these claims with the bytes of the model the file is read
for (weights, plus the optimizer state a training checkpoint carries: ``CLAIM_MARGIN`` times them, plus
``CLAIM_SLACK``) and refuses a file claiming more, before anything is read; ``check_key_count`` bounds the number
of entries (a 4 MB pickle of 300k keys makes detectron2's key matching run for minutes and fail out of memory).
Every checkpoint reader of the engine and of both projects calls them.
"""
from __future__ import annotations

import glob
import os
import zipfile
from typing import Optional

import torch.nn as nn

__all__ = ["CLAIM_MARGIN", "CLAIM_SLACK", "CheckpointClaimError", "check_checkpoint_claims", "check_checkpoint_path",
           "check_key_count", "claimed_bytes", "state_bytes"]

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
    a torch zip checkpoint, its size on disk for any other file (pickle, ``.safetensors``, legacy torch)."""
    size = os.path.getsize(path)
    if not zipfile.is_zipfile(path):
        return size
    try:
        with zipfile.ZipFile(path) as archive:
            return sum(info.file_size for info in archive.infolist())
    except (zipfile.BadZipFile, OSError, ValueError):  # a broken directory: torch.load names the corruption
        return size


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
            raise CheckpointClaimError(
                f"{what} {path!r} claims {claimed / MiB:.0f} MiB of data in {on_disk / MiB:.1f} MiB on disk (its zip "
                "entries are compressed; torch.save never compresses them): refused before reading it, as loading "
                f"it would allocate every claimed byte (limit: the size on disk + {CLAIM_SLACK / MiB:.0f} MiB). Save "
                "the weights again with torch.save, or use the checkpoint as it was written")
        return
    limit = CLAIM_MARGIN * expected_bytes + CLAIM_SLACK
    if claimed > limit:
        raise CheckpointClaimError(
            f"{what} {path!r} claims {claimed / MiB:.0f} MiB of data ({on_disk / MiB:.1f} MiB on disk), more than a "
            f"checkpoint of this model can hold ({expected_bytes / MiB:.1f} MiB of weights; limit {CLAIM_MARGIN}x "
            f"that + {CLAIM_SLACK / MiB:.0f} MiB for optimizer state and metadata): refused before reading it. It "
            "belongs to a much larger model or was crafted (compressed entries); pass the checkpoint written for "
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
