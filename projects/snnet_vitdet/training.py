"""Training pieces for the stitched ViTDet: safe, strict and atomic checkpoints, LS init of the stitching layers
from training images, the per-iteration resource-constrained stitch sampling hook and per-iteration seeding."""
from __future__ import annotations

import logging
import os
import pickle
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Optional

import torch
import torch.distributed as dist
import torch.nn as nn
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.engine import HookBase, hooks
from detectron2.modeling import GeneralizedRCNN
from detectron2.utils import comm

from snnet_core import ResourceConstrainedSampler, ls_init_stitching_layers
from snnet_core.io.atomic_io import write_atomic, write_json_atomic
from snnet_core.io.file_claims import check_checkpoint_claims, check_key_count, state_bytes
from snnet_core.io.run_dir import LAST_CHECKPOINT, checkpoint_name, last_checkpoint, prune_checkpoints, tag_last_checkpoint
from snnet_core.io.safe_pickle import load_safe_pickle
from snnet_core.training.data_order import seed_rngs
from snnet_core.training.train_log import route_loss_name

from .backbone import StitchedViTDetBackbone

logger = logging.getLogger(__name__)


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a ``DistributedDataParallel`` wrapper (or ``model`` itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def stitched_backbone(model: nn.Module) -> StitchedViTDetBackbone | None:
    """The ``StitchedViTDetBackbone`` inside a ViTDet model, ``None`` for a single-ViT baseline."""
    net = getattr(unwrap(model).backbone, "net", None)
    return net if isinstance(net, StitchedViTDetBackbone) else None


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


def calibration_images(model: GeneralizedRCNN, data_loader: Iterable[List[dict]]) -> Iterator[torch.Tensor]:
    """Normalised, padded image batches ``(B, 3, H, W)`` exactly as the backbone sees them."""
    for inputs in data_loader:
        yield model.preprocess_image(inputs).tensor


def ls_init_detector(model: nn.Module, data_loader: Iterable[List[dict]], num_images: int) -> None:
    """LS-initialise the stitching layers on the main process and broadcast them to every rank.

    ``data_loader`` gives detectron2 inputs (lists of dicts); only the main process iterates it.
    """
    backbone = stitched_backbone(model)
    if comm.is_main_process():
        errors = ls_init_stitching_layers(backbone.snnet, calibration_images(unwrap(model), data_loader), num_images)
        worst = max(errors, key=errors.get)
        logger.info("LS init of %d stitching layers on %d images; largest fit MSE %.4g (%s)",
                    len(errors), num_images, errors[worst], worst)
    if comm.get_world_size() > 1:
        layers = list(backbone.snnet.stitch_s2l.parameters()) + list(backbone.snnet.stitch_l2s.parameters())
        for tensor in layers:
            dist.broadcast(tensor.data, src=0)


class StitchSamplingHook(HookBase):
    """Selects the stitch of every iteration with ROS (a pure function of the iteration: the same on every
    rank without communication, and the same sequence after ``--resume``).

    Each iteration's ``total_loss`` is also logged under the stitch's route type or anchor
    (``snnet_core.training.train_log.route_loss_name``: ``route_loss/FS``, ``route_loss/fast_anchor``, ...), one curve each
    in ``metrics.json``, TensorBoard and the console's metric lines. At the end of training the ranks' sequences
    are compared (an error if they differ) and the sequence is written to ``stitch_schedule_from_<start>.json``.
    """

    def __init__(self, backbone: StitchedViTDetBackbone, sampler: ResourceConstrainedSampler, output_dir: str):
        self.backbone = backbone
        self.sampler = sampler
        self.output_dir = output_dir
        self.history: List[int] = []
        self.start_iter = 0

    def before_train(self) -> None:
        self.start_iter = self.trainer.start_iter
        self.history = []

    def before_step(self) -> None:
        stitch_id = self.sampler.sample(self.trainer.iter)
        self.backbone.set_stitch(stitch_id)
        self.history.append(stitch_id)

    def after_step(self) -> None:
        """``total_loss`` (put by the trainer on the main process, averaged over the ranks) under the name of
        the iteration's stitch, unsmoothed: a route's curve has a point at each iteration that trained it."""
        latest = self.trainer.storage.latest().get("total_loss")
        if latest is not None and latest[1] == self.trainer.iter:
            self.trainer.storage.put_scalar(route_loss_name(self.backbone.space[self.history[-1]]), latest[0],
                                            smoothing_hint=False)

    def after_train(self) -> None:
        if self.trainer.iter + 1 < self.trainer.max_iter:  # training failed: other ranks may be gone
            return
        histories = comm.all_gather(self.history)
        if any(h != histories[0] for h in histories):
            first = next(i for i, ss in enumerate(zip(*histories)) if len(set(ss)) > 1)
            raise RuntimeError(f"ranks trained different stitches from iteration {self.start_iter + first}: "
                               f"{[h[first] for h in histories]}")
        if comm.is_main_process():
            path = os.path.join(self.output_dir, f"stitch_schedule_from_{self.start_iter}.json")
            write_json_atomic(path, {"start_iter": self.start_iter, "num_ranks": len(histories), "ranks_agree": True,
                                     "sampler": self.sampler.state_dict(), "stitches": self.history})
            logger.info("%d iterations trained the same stitches on %d rank(s); schedule in %s",
                        len(self.history), len(histories), path)


class IterationSeedHook(HookBase):
    """Seeds python, numpy and torch (CPU and CUDA) before every iteration from ``(seed, rank, iteration)``.

    The random draws of an iteration (drop path, RPN/ROI sampling) then depend on nothing that happened
    before it, so a run resumed from a checkpoint draws what the uninterrupted run drew. ``seed`` is saved
    in the trainer state (``hooks.IterationSeedHook``), so a resumed run keeps its first run's seed even
    when that one was random (``train.seed=-1``).
    """

    def __init__(self, seed: int):
        self.seed = int(seed)

    def before_step(self) -> None:
        seed_rngs(self.seed, comm.get_rank(), self.trainer.iter)

    def state_dict(self) -> Dict[str, int]:
        return {"seed": self.seed}

    def load_state_dict(self, state: Dict[str, int]) -> None:
        if int(state["seed"]) != self.seed:
            logger.info("resumed run: training seed %d of the checkpoint (this config's: %d)", state["seed"], self.seed)
        self.seed = int(state["seed"])
