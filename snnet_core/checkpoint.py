"""Save/load a whole SN-Net (anchors + stitching layers) with its architecture, safely (weights only)."""
from __future__ import annotations

import os
import pickle
from typing import TYPE_CHECKING, Any, Dict, Optional

import torch

from .atomic_io import write_atomic

if TYPE_CHECKING:  # annotations only: anchors.py can import this module's readers without an import cycle
    from .snnet import StitchedViT

FORMAT = "snnet-v2"


def save_snnet(path: str, snnet: StitchedViT, extra: Optional[Dict[str, Any]] = None) -> None:
    """Write ``{'format', 'config', 'model', **extra}`` atomically (``extra`` must be tensors/primitives)."""
    state = {"format": FORMAT, "config": snnet.config(), "model": snnet.state_dict()}
    state.update(extra or {})
    write_atomic(path, lambda f: torch.save(state, f), binary=True)


def describe_load_error(path: str, exc: BaseException) -> str:
    """Why ``torch.load(path, weights_only=True)`` failed, in words: refused objects, or a truncated/corrupt file.

    torch's own message for a refused object advises ``weights_only=False``, which would run the file's code;
    this one keeps only the sentence naming what was refused.
    """
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if isinstance(exc, pickle.UnpicklingError):
        refused = [line.split(". ")[0] for line in lines if "global" in line.lower()]
        if refused:
            return (f"{path!r} holds Python objects that a weights-only load refuses ({refused[0]}); it was not "
                    "loaded, as unpickling them could run code. Use a checkpoint of tensors and plain containers")
        lines = [line for line in lines if "unsupported" in line.lower()]
    if isinstance(exc, (EOFError, RuntimeError, pickle.UnpicklingError)):
        size = os.path.getsize(path) if os.path.exists(path) else 0
        detail = lines[0].split(". ")[0] if lines else "unexpected end of file"
        return (f"{path!r} is truncated or corrupt ({size} bytes; {type(exc).__name__}: {detail}); it is not a "
                "complete torch checkpoint. Write it again, or use an earlier checkpoint")
    return f"could not read {path!r} ({type(exc).__name__}: {exc})"


def read_tagged_checkpoint(
    path: str, fmt: str, what: str, map_location: str | torch.device = "cpu"
) -> Dict[str, Any]:
    """``torch.load(weights_only=True)`` a dict carrying ``{'format': fmt}``, with errors naming ``what``."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} {path!r} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise RuntimeError(f"could not read {what}: {describe_load_error(path, exc)}") from exc
    if not isinstance(state, dict) or state.get("format") != fmt:
        raise RuntimeError(f"{path!r} is not an {what} (no '{fmt}' format tag)")
    return state


def load_snnet(path: str, snnet: StitchedViT, map_location: str | torch.device = "cpu") -> Dict[str, Any]:
    """Load a checkpoint written by ``save_snnet`` into ``snnet``; returns the whole checkpoint dict.

    Raises ``FileNotFoundError`` for a missing file, ``RuntimeError`` for a corrupt one or one written
    for another architecture (naming the difference).
    """
    state = read_tagged_checkpoint(path, FORMAT, "SN-Net checkpoint", map_location)
    expected = snnet.config()
    if state["config"] != expected:
        diff = {k: (state["config"].get(k), v) for k, v in expected.items() if state["config"].get(k) != v}
        raise RuntimeError(f"checkpoint {path!r} was saved for another SN-Net architecture: "
                           + "; ".join(f"{k}: checkpoint {a} vs model {b}" for k, (a, b) in diff.items()))
    snnet.load_state_dict(state["model"])
    return state
