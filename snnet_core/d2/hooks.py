"""detectron2 training hooks of the SN-Net projects: the per-iteration stitch (ROS or uniform) and its route-loss
curves, the per-iteration seeding that makes ``--resume`` exact, and the LS init of the stitching layers across ranks."""
from __future__ import annotations

import logging
import os
from typing import Dict, Iterable, List, Protocol

import torch
import torch.distributed as dist
import torch.nn as nn
from detectron2.engine import HookBase
from detectron2.utils import comm

from snnet_core.io.atomic_io import write_json_atomic
from snnet_core.model.snnet import StitchedViT
from snnet_core.model.stitch_space import Stitch, StitchSpace
from snnet_core.training.data_order import seed_rngs
from snnet_core.training.ls_init import ls_init_stitching_layers
from snnet_core.training.sampling import UniformSampler
from snnet_core.training.train_log import route_loss_name

logger = logging.getLogger(__name__)


class StitchSelector(Protocol):
    """What the hooks and the per-stitch evaluation need of a project's stitched model or backbone."""

    space: StitchSpace

    def set_stitch(self, stitch_id: int) -> Stitch: ...


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a ``DistributedDataParallel`` wrapper (or ``model`` itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def ls_init_on_main(snnet: StitchedViT, images: Iterable[torch.Tensor], num_images: int) -> None:
    """LS-initialise the stitching layers of ``snnet`` on the main process and broadcast them to every rank.

    ``images``: batches ``(B, 3, H, W)`` exactly as the backbone sees them; only the main process iterates it (a
    generator costs the other ranks nothing).
    """
    if comm.is_main_process():
        errors = ls_init_stitching_layers(snnet, images, num_images)
        worst = max(errors, key=errors.get)
        logger.info("LS init of %d stitching layers on %d images; largest fit MSE %.4g (%s)",
                    len(errors), num_images, errors[worst], worst)
    if comm.get_world_size() > 1:  # every layer LS init fits (SN-Netv1's space: also the feature projections)
        for spec in snnet.layer_specs():
            for tensor in snnet.get_submodule(spec.name).parameters():
                dist.broadcast(tensor.data, src=0)


class StitchSamplingHook(HookBase):
    """Selects the stitch of every iteration with the run's sampler, ROS or uniform (a pure function of the
    iteration: the same on every rank without communication, and the same sequence after ``--resume``).

    Each iteration's ``total_loss`` is also logged under the stitch's route type or anchor
    (``snnet_core.training.train_log.route_loss_name``: ``route_loss/FS``, ``route_loss/fast_anchor``, ...), one curve each
    in ``metrics.json``, TensorBoard and the console's metric lines. At the end of training the ranks' sequences
    are compared (an error if they differ) and the sequence is written to ``stitch_schedule_from_<start>.json``.
    """

    def __init__(self, backbone: StitchSelector, sampler: UniformSampler, output_dir: str):
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

    The random draws of an iteration (drop path, a detector's proposal sampling) then depend on nothing that happened
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
