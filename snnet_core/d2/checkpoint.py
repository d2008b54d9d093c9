"""detectron2 checkpoints of the SN-Net projects: strict, code-free and atomic reads and writes, the shared
checkpoint names and pruning (``snnet_core.io.run_dir``), detectron2's model-zoo ``.pkl`` layout, and a demo's
model loaded from its config and weights."""
from __future__ import annotations

import logging
import os
import pickle
from typing import Any, Dict, Mapping, Optional

import torch
import torch.nn as nn
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import instantiate
from detectron2.engine import hooks
from omegaconf import DictConfig

from snnet_core.io.atomic_io import write_atomic
from snnet_core.io.config_io import local_checkpoint
from snnet_core.io.file_claims import (
    check_checkpoint_claims, check_checkpoint_path, check_key_count, state_bytes,
)
from snnet_core.io.run_dir import LAST_CHECKPOINT, checkpoint_name, last_checkpoint, prune_checkpoints, tag_last_checkpoint
from snnet_core.io.safe_pickle import load_safe_pickle

logger = logging.getLogger(__name__)


class StrictDetectionCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` that refuses a checkpoint not written for this architecture, reads files
    without executing them and writes them atomically.

    - detectron2 only logs missing, unexpected or mis-shaped weights and carries on with a partly random
      model; here any of them is an error naming the first offenders (e.g. an SN-Net checkpoint of another
      anchor pair, a baseline's checkpoint for the stitched model, a 12-block model for a 24-block one).
    - ``.pth`` files are read with ``torch.load(weights_only=True)``, model-zoo ``.pkl`` files with
      ``snnet_core.io.safe_pickle`` (numpy arrays and plain containers only): a checkpoint can't run code.
      A truncated or corrupt file is an error naming it, and so is one claiming several times the model's bytes or
      entries (``snnet_core.io.file_claims``: a compressed crafted zip, a pickle of 300k keys), refused before it
      is read or its names matched.
    - ``save`` writes ``<name>.pth`` (with ``extras``) and ``last_checkpoint`` to temporary files renamed into
      place, so a killed or failed write (e.g. a full disk) leaves the previous checkpoints intact; a failed
      write is an ``OSError`` naming the file. ``last_checkpoint`` may only name a ``.pth`` file inside
      ``save_dir`` (``snnet_core.io.run_dir``, the layout both projects share).
    """

    LAST_CHECKPOINT = LAST_CHECKPOINT

    def __init__(self, model: nn.Module, save_dir: str = "", *, extras: Optional[Mapping[str, Any]] = None,
                 **checkpointables: Any):
        """``extras``: plain values written into every checkpoint beside the weights (e.g. the eval input
        size), returned by ``load`` with the other extras."""
        super().__init__(model, save_dir, **checkpointables)
        self.extras = dict(extras or {})

    def _load_file(self, filename: str) -> Dict[str, Any]:
        if filename.endswith(".pkl"):
            checkpoint = model_zoo_checkpoint(load_safe_pickle(filename, state_bytes(self.model)))
        elif filename.endswith(".pyth"):
            raise ValueError(f"{filename}: pycls .pyth checkpoints are not supported; convert it to a .pth "
                             "state dict ({'model': {name: tensor}})")
        else:
            checkpoint = super()._load_file(filename)  # -> _torch_load, plus detectron2's URL query handling
        weights = checkpoint.get("model")
        if isinstance(weights, Mapping):  # before detectron2 matches every name against every other
            check_key_count(len(weights), len(self.model.state_dict()), filename)
        return checkpoint

    def _torch_load(self, filename: str) -> Dict[str, Any]:
        check_checkpoint_claims(filename, state_bytes(self.model))
        try:
            return torch.load(filename, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            raise RuntimeError(f"refusing to load checkpoint {filename}: it holds objects other than tensors and "
                               f"plain containers, which could run code ({exc})") from exc
        except (RuntimeError, EOFError, OSError) as exc:
            raise RuntimeError(f"checkpoint {filename} is truncated or corrupt ({exc}); use an intact checkpoint "
                               "(with --resume: point last_checkpoint at an earlier model_*.pth of the run)") from exc

    def _load_model(self, checkpoint):
        incompatible = super()._load_model(checkpoint)
        problems = []
        if incompatible.incorrect_shapes:
            problems.append("mis-shaped " + ", ".join(
                f"{k} (checkpoint {tuple(a)} vs model {tuple(b)})" for k, a, b in incompatible.incorrect_shapes[:3]))
        if incompatible.missing_keys:
            problems.append(f"{len(incompatible.missing_keys)} missing, e.g. {incompatible.missing_keys[:3]}")
        if incompatible.unexpected_keys:
            problems.append(f"{len(incompatible.unexpected_keys)} unexpected, e.g. {incompatible.unexpected_keys[:3]}")
        if problems:
            raise RuntimeError("the checkpoint was written for another architecture than this config's model: "
                               + "; ".join(problems))
        return incompatible

    def get_checkpoint_file(self) -> str:
        """The checkpoint ``last_checkpoint`` names; it must be an existing ``.pth`` file in ``save_dir``."""
        return last_checkpoint(self.save_dir)

    def save(self, name: str, **kwargs: Any) -> None:
        """Atomically write the model, the checkpointables and ``kwargs`` to ``save_dir/<name>.pth``."""
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict(), **{k: v.state_dict() for k, v in self.checkpointables.items()},
                **self.extras, **kwargs}
        path = os.path.join(self.save_dir, f"{name}.pth")
        self.logger.info("Saving checkpoint to %s", path)
        try:
            write_atomic(path, lambda f: torch.save(data, f), binary=True)
        except (OSError, RuntimeError) as exc:  # e.g. a full disk; atomic_io names the OS error
            last = self.get_checkpoint_file() if self.has_checkpoint() else "none yet"
            raise OSError(f"could not save checkpoint {path}: {exc}. The previous checkpoints are intact: once "
                          f"the disk has room, --resume continues from the last one ({last})") from exc
        self.tag_last_checkpoint(os.path.basename(path))

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        tag_last_checkpoint(self.save_dir, last_filename_basename)


class PeriodicCheckpointer(hooks.PeriodicCheckpointer):
    """detectron2's ``PeriodicCheckpointer`` hook (``model_<iteration>.pth`` every ``period`` iterations,
    ``model_final.pth`` after the last) with the depth project's names and pruning (``snnet_core.io.run_dir``).

    ``max_to_keep`` prunes the directory, not fvcore's list of this process's saves: a resumed run also deletes
    the periodic checkpoints of the run it continues beyond the newest ``max_to_keep`` (``None``: keeps all).
    Register it on the main process only.
    """

    def __init__(self, checkpointer: StrictDetectionCheckpointer, period: int, max_to_keep: Optional[int] = None):
        super().__init__(checkpointer, period)  # fvcore's own pruning (max_to_keep) stays off
        self.keep = max_to_keep

    def step(self, iteration: int, **kwargs: Any) -> None:
        """After iteration index ``iteration``: save a periodic and/or the final checkpoint, then prune."""
        iteration = int(iteration)
        names = [checkpoint_name(iteration)] if (iteration + 1) % self.period == 0 else []
        if self.max_iter is not None and iteration >= self.max_iter - 1:
            names.append(checkpoint_name(iteration, final=True))
        for name in names:
            self.checkpointer.save(os.path.splitext(name)[0], iteration=iteration, **kwargs)
            if self.keep is not None:
                for path in prune_checkpoints(self.checkpointer.save_dir, self.keep):
                    logger.info("deleted %s (train.checkpointer.max_to_keep=%d)", path, self.keep)


def model_zoo_checkpoint(data: Any) -> Dict[str, Any]:
    """detectron2's reading of a model-zoo ``.pkl`` (``DetectionCheckpointer._load_file``): its own layout
    ``{"model", "__author__"}`` as is, a Caffe2/Detectron file (``{"blobs": ...}`` or ``{name: ndarray}``,
    momenta dropped) as ``{"model", "__author__": "Caffe2", "matching_heuristics": True}``."""
    if not isinstance(data, dict):
        raise ValueError(f"a model-zoo .pkl holds a dict, not a {type(data).__name__}")
    if "model" in data and "__author__" in data:
        return data
    blobs = data.get("blobs", data)
    return {"model": {k: v for k, v in blobs.items() if not k.endswith("_momentum")}, "__author__": "Caffe2",
            "matching_heuristics": True}


def load_model(cfg: DictConfig, weights: Optional[str], device: str) -> nn.Module:
    """A demo's model: ``instantiate(cfg.model)`` with ``weights`` (default ``train.init_checkpoint``, e.g. an
    exported stitch's config names its weights) loaded strictly, on ``device``, in eval mode. A URL is refused
    unless detectron2's download cache holds it; a directory names the file in it to give."""
    weights = weights or cfg.get("train", {}).get("init_checkpoint", "")
    if weights:
        weights = local_checkpoint(weights, "--weights")
    give = ": pass --weights PATH (the trained model_final.pth) or a config whose train.init_checkpoint names them"
    if not weights:
        raise FileNotFoundError(f"no weights{give}")
    check_checkpoint_path(weights, "--weights", give)
    model = instantiate(cfg.model)
    StrictDetectionCheckpointer(model).load(weights)
    return model.to(device).eval()
