"""Training pieces for the stitched ViTDet: strict checkpoint loading, LS init of the stitching layers from
training images, and the per-iteration resource-constrained stitch sampling hook."""
from __future__ import annotations

import logging
import os
from typing import Iterable, Iterator, List

import torch
import torch.distributed as dist
import torch.nn as nn
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.engine import HookBase
from detectron2.modeling import GeneralizedRCNN
from detectron2.utils import comm

from snnet_core import ResourceConstrainedSampler, ls_init_stitching_layers
from snnet_core.atomic_io import write_json_atomic

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
    """``DetectionCheckpointer`` that refuses a checkpoint not written for this architecture.

    detectron2 only logs missing, unexpected or mis-shaped weights and carries on with a partly random
    model; here any of them is an error naming the first offenders (e.g. an SN-Net checkpoint of another
    anchor pair, a baseline's checkpoint for the stitched model, a 12-block model for a 24-block one).
    """

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

    The stitch id is logged as ``stitch_id``; at the end of training the ranks' sequences are compared
    (an error if they differ) and the sequence is written to ``stitch_schedule_from_<start>.json``.
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
        self.trainer.storage.put_scalar("stitch_id", stitch_id, smoothing_hint=False)

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
