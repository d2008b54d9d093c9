"""Training of the stitched classifier with upstream SN-Netv2's recipe (``classification/main.py`` and
``engine.py``), from timm's pieces: LAMB (``create_optimizer_v2``), cosine schedule with warm-up by epoch
(``create_scheduler_v2``), CutMix/MixUp with label smoothing (``Mixup``, ``SoftTargetCrossEntropy``), optional
DeiT distillation; ROS draws the stitch of every iteration, LS init on one training batch.

Script use, without the command line (what ``train.py`` does around it: checkpoints, logs, reports)::

    from projects.snnet_cls.model import ModelSpec, build_model, classifier_flops_table
    from projects.snnet_cls.training import TrainRecipe, fit, ls_init
    from projects.snnet_cls.evaluation import evaluate_stitches_in_memory

    net = build_model(spec)                                  # or StitchedViT(fast, slow, ...) with classifiers
    flops = classifier_flops_table(net, (224, 224))
    recipe = TrainRecipe(epochs=1, batch_size=64, lr=1e-3, warmup_epochs=0, ...)   # every field: see below
    ls_init(net, train_set, recipe, num_classes)             # train_set yields (image (3, H, W), class index)
    fit(net, train_set, recipe, flops.gflops, num_classes, iterations=500)
    rows = evaluate_stitches_in_memory(net, val_loader)      # {stitch id: {"acc1", "acc5", "loss"}}

Exact resume: after every epoch ``train.py`` writes a checkpoint with the model, LAMB and AMP-scaler state;
everything random is a function of (seed, epoch, ...) or (seed, iteration, rank): the data order
(``DistributedSampler``), each image's augmentation (``data.SeededSamples``), CutMix's draws (numpy, seeded per
iteration), the stitch of each iteration (ROS), torch's generator (re-seeded every epoch, for drop path), and the
learning rate (a function of the epoch). A run resumed after epoch ``e`` trains as the uninterrupted one did.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from detectron2.utils.events import EventStorage, EventWriter
from timm.data import Mixup
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from snnet_core import StitchedViT, UniformSampler
from snnet_core.distributed import DistContext
from snnet_core.training.sampling import build_sampler
from snnet_core.training.run_state import epoch_seed, ls_init_from_dataset, param_checksum, stitch_sequence_digest
from snnet_core.training.train_log import route_loss_name

from .model import SelectedStitch

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class TrainRecipe:
    """Everything that shapes the training trajectory; stored in the checkpoint and checked on resume.

    Built from a config by ``train.recipe_from_config`` (the values and their sources live in
    ``projects/snnet_cls/configs/snnetv2_deit3_s_l_in1k.py``). ``batch_size`` is the total over all processes
    (upstream: 64 per GPU x 8); ``lr`` is used as given (upstream ``unscale_lr``: no linear scaling).

    Attributes:
        opt, opt_eps, opt_betas: timm optimizer name (``lamb``), its epsilon and betas (``None``: timm's).
        warmup_lr, min_lr, warmup_epochs: timm cosine schedule (by epoch).
        clip_grad: gradient norm clip (0: off, as upstream).
        smoothing, mixup, cutmix, mixup_prob, mixup_switch_prob, mixup_mode: timm ``Mixup`` (label smoothing
            applies to the mixed targets; with mixup and cutmix 0 the loss is label-smoothed cross-entropy).
        distillation: ``{"type": "none"|"soft"|"hard", "alpha", "tau"}`` (DeiT's loss; the teacher is built by
            ``train.py`` from ``train.teacher``).
        sampling: ``"ros"`` (SN-Netv2's resource-constrained sampling, bins of ``flops_step`` GFLOPs) or
            ``"uniform"`` (SN-Netv1: every stitch equally likely).
        ls_init_images: images of the LS-init batch (0: no LS init).
        amp: fp16 autocast and gradient scaling on CUDA (upstream always).
    """

    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    opt: str = "lamb"
    opt_eps: float = 1e-8
    opt_betas: Optional[Tuple[float, float]] = None
    warmup_lr: float = 1e-7
    min_lr: float = 1e-5
    warmup_epochs: int = 5
    clip_grad: float = 0.0
    smoothing: float = 0.1
    mixup: float = 0.0
    cutmix: float = 1.0
    mixup_prob: float = 1.0
    mixup_switch_prob: float = 0.5
    mixup_mode: str = "batch"
    distillation: Dict[str, Any] = dataclasses.field(default_factory=lambda: {"type": "none", "alpha": 0.5,
                                                                              "tau": 1.0})
    flops_step: float = 1.0
    sampling: str = "ros"
    ls_init_images: int = 100
    amp: bool = True
    seed: int = 0
    world_size: int = 1

    def to_dict(self) -> Dict[str, Any]:
        """Primitives only (lists/dicts/str/numbers): safe in a ``weights_only`` checkpoint."""
        return json.loads(json.dumps(dataclasses.asdict(self)))


def build_optimizer(net: nn.Module, recipe: TrainRecipe) -> torch.optim.Optimizer:
    """timm's ``create_optimizer_v2`` as upstream's ``create_optimizer(args, model)`` calls it: weight decay on
    every trainable tensor of 2 or more dimensions, none on biases and norms (the frozen LS weights of LoRA
    stitching layers are left out)."""
    extra = {} if recipe.opt_betas is None else {"betas": tuple(recipe.opt_betas)}
    return create_optimizer_v2(net, opt=recipe.opt, lr=recipe.lr, weight_decay=recipe.weight_decay,
                               eps=recipe.opt_eps, **extra)


def build_scheduler(optimizer: torch.optim.Optimizer, recipe: TrainRecipe):
    """timm's cosine schedule by epoch (``create_scheduler_v2``, upstream's ``create_scheduler``): ``warmup_epochs``
    linear from ``warmup_lr``, then cosine from ``lr`` to ``min_lr`` at ``epochs``."""
    scheduler, _ = create_scheduler_v2(optimizer, sched="cosine", num_epochs=recipe.epochs,
                                       warmup_epochs=recipe.warmup_epochs, warmup_lr=recipe.warmup_lr,
                                       min_lr=recipe.min_lr, cooldown_epochs=0)
    return scheduler


def epoch_lr_step(epoch: int) -> int:
    """The schedule step whose learning rate epoch ``epoch`` trains at: ``max(epoch - 1, 0)``. Upstream calls
    ``lr_scheduler.step(epoch)`` after epoch ``epoch``, so epochs 0 and 1 both train at the schedule's start."""
    return max(epoch - 1, 0)


def build_mixup(recipe: TrainRecipe, num_classes: int) -> Optional[Mixup]:
    """timm ``Mixup`` of the recipe (None when mixup and cutmix are both 0)."""
    if recipe.mixup <= 0 and recipe.cutmix <= 0:
        return None
    return Mixup(mixup_alpha=recipe.mixup, cutmix_alpha=recipe.cutmix, prob=recipe.mixup_prob,
                 switch_prob=recipe.mixup_switch_prob, mode=recipe.mixup_mode, label_smoothing=recipe.smoothing,
                 num_classes=num_classes)


def seeded_mixup(mixup: Optional[Mixup], images: torch.Tensor, targets: torch.Tensor, seed: int, iteration: int,
                 rank: int, stream: int = 1) -> Tuple[torch.Tensor, torch.Tensor]:
    """``mixup(images, targets)`` with numpy's generator (which timm's ``Mixup`` draws from) seeded by (seed,
    iteration, rank, stream: 1 training, 2 the LS-init batch) and restored afterwards; without ``mixup`` the
    targets stay class indices."""
    if mixup is None:
        return images, targets
    state = np.random.get_state()
    np.random.seed(int(np.random.SeedSequence([seed, iteration, rank, stream]).generate_state(1)[0]))
    try:
        return mixup(images, targets)
    finally:
        np.random.set_state(state)


class ClassificationLoss(nn.Module):
    """Upstream's criterion: ``SoftTargetCrossEntropy`` on mixed targets, else label-smoothed cross-entropy; with
    DeiT distillation (``type`` soft/hard) ``(1 - alpha) * base + alpha * distillation`` against ``teacher``'s
    logits of the same images. Soft: ``KL(log_softmax(s/tau) || log_softmax(t/tau)) * tau^2 / numel`` (DeiT's
    ``reduction='sum'`` over the logits' elements); hard: cross-entropy with the teacher's top class. The stitched
    net has no distillation token: the class token's logits take both terms."""

    def __init__(self, recipe: TrainRecipe, mixed: bool, teacher: Optional[nn.Module] = None):
        super().__init__()
        self.base = SoftTargetCrossEntropy() if mixed else LabelSmoothingCrossEntropy(recipe.smoothing)
        self.kind, self.alpha, self.tau = (recipe.distillation["type"], float(recipe.distillation["alpha"]),
                                           float(recipe.distillation["tau"]))
        if self.kind != "none" and teacher is None:
            raise ValueError(f"distillation type {self.kind!r} needs a teacher model (train.teacher)")
        self.teacher = teacher

    def forward(self, images: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        loss = self.base(logits, targets)
        if self.kind == "none":
            return loss
        with torch.no_grad():
            teacher_logits = self.teacher(images).float()
        if self.kind == "soft":
            distill = F.kl_div(F.log_softmax(logits / self.tau, dim=1), F.log_softmax(teacher_logits / self.tau, dim=1),
                               reduction="sum", log_target=True) * (self.tau * self.tau) / logits.numel()
        else:
            distill = F.cross_entropy(logits, teacher_logits.argmax(dim=1))
        return loss * (1 - self.alpha) + distill * self.alpha


def ls_init(net: StitchedViT, train_set: Dataset, recipe: TrainRecipe, num_classes: int,
            ctx: DistContext = DistContext(), workers: int = 0) -> Dict[str, float]:
    """LS init of every stitching layer from one batch of ``recipe.ls_init_images`` training images drawn at random
    (seeded), as the training loader gives them and after CutMix, as upstream's
    ``initialize_model_stitching_layer`` does. Returns the mean squared error per layer."""
    mixup = build_mixup(recipe, num_classes)

    def images_of(batch):
        images, targets = batch
        if mixup is not None and len(images) % 2:  # timm's batch-mode Mixup needs an even batch
            images, targets = images[:-1], targets[:-1]
        return seeded_mixup(mixup, images, targets, recipe.seed, 0, ctx.rank, stream=2)[0]

    return ls_init_from_dataset(net, train_set, recipe.ls_init_images, recipe.seed, recipe.ls_init_images,
                                ctx.device, workers, images_of)


def train_loader(train_set: Dataset, recipe: TrainRecipe, ctx: DistContext, workers: int = 0) -> DataLoader:
    """This rank's shuffled loader (``DistributedSampler``, seeded; full batches of ``batch_size / world_size``)."""
    sampler = DistributedSampler(train_set, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True,
                                 seed=recipe.seed, drop_last=True)
    loader = DataLoader(train_set, recipe.batch_size // ctx.world_size, sampler=sampler, drop_last=True,
                        num_workers=workers, pin_memory=ctx.device.type == "cuda")
    if len(loader) == 0:
        raise ValueError(f"the {len(train_set)} training images give no full batch of train.batch_size="
                         f"{recipe.batch_size} over {ctx.world_size} process(es)")
    return loader


@dataclasses.dataclass
class TrainState:
    """What a checkpoint restores: the optimizer (and its schedule), the AMP scaler, and the position."""

    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    sampler: UniformSampler  # or its subclass ResourceConstrainedSampler
    epoch: int = 0
    iteration: int = 0

    def state_dict(self) -> Dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(),
                "sampler": self.sampler.state_dict(), "epoch": self.epoch, "iteration": self.iteration}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.sampler.load_state_dict(state["sampler"])
        self.epoch, self.iteration = int(state["epoch"]), int(state["iteration"])


def new_train_state(net: StitchedViT, recipe: TrainRecipe, gflops: Mapping[int, float],
                    ctx: DistContext = DistContext()) -> TrainState:
    """Optimizer, AMP scaler and stitch sampler of a fresh run (``TrainState.load_state_dict`` continues one)."""
    amp = ctx.device.type == "cuda" and recipe.amp
    sampler = build_sampler(recipe.sampling, gflops, recipe.flops_step, recipe.seed, "train.sampling")
    return TrainState(build_optimizer(net, recipe), torch.amp.GradScaler(ctx.device.type, enabled=amp), sampler)


def fit(
    net: StitchedViT,
    train_set: Dataset,
    recipe: TrainRecipe,
    gflops: Mapping[int, float],
    num_classes: int,
    ctx: DistContext = DistContext(),
    state: Optional[TrainState] = None,
    iterations: Optional[int] = None,
    workers: int = 0,
    teacher: Optional[nn.Module] = None,
    writers: Sequence[EventWriter] = (),
    log_period: int = 20,
    on_epoch_end: Optional[Callable[[TrainState, Dict[str, Any]], None]] = None,
) -> Dict[str, Any]:
    """Train ``net`` on ``train_set`` (items ``(image (3, H, W), class index)``; a ``set_epoch(epoch)`` method, if
    any, is called before each epoch) from ``state`` (default: a fresh ``new_train_state``) up to
    ``recipe.epochs``, or ``iterations`` iterations in all if given (then ending inside an epoch).

    Each iteration trains the stitch ``sampler.sample(iteration)`` (the same on every rank) on a CutMix batch.
    Scalars go to detectron2's ``EventStorage`` (``total_loss``, ``route_loss/<route>``, ``lr``) and ``writers``
    every ``log_period`` iterations; ``on_epoch_end(state, stats)`` runs after each complete epoch (``train.py``
    writes its checkpoint there). Returns ``{"iteration", "epoch", "losses": [per iteration],
    "stitches": [per iteration], "epoch_means": [mean loss per epoch]}`` of this call.
    """
    state = state or new_train_state(net, recipe, gflops, ctx)
    loader = train_loader(train_set, recipe, ctx, workers)
    scheduler = build_scheduler(state.optimizer, recipe)
    mixup = build_mixup(recipe, num_classes)
    criterion = ClassificationLoss(recipe, mixup is not None, teacher)
    amp = ctx.device.type == "cuda" and recipe.amp
    model = SelectedStitch(net)
    ddp_model = (DistributedDataParallel(model, device_ids=[ctx.local_rank] if ctx.device.type == "cuda" else None,
                                         find_unused_parameters=True) if ctx.enabled else model)
    params = [p for g in state.optimizer.param_groups for p in g["params"]]
    stop = math.inf if iterations is None else state.iteration + iterations
    losses: List[float] = []
    stitches: List[int] = []
    epoch_means: List[float] = []
    with EventStorage(state.iteration) as storage:
        while state.epoch < recipe.epochs and state.iteration < stop:
            epoch = state.epoch
            loader.sampler.set_epoch(epoch)
            if hasattr(train_set, "set_epoch"):
                train_set.set_epoch(epoch)
            torch.manual_seed(epoch_seed(recipe.seed, epoch, ctx.rank))
            scheduler.step(epoch_lr_step(epoch))
            net.train()
            first = len(losses)
            start = time.perf_counter()
            last = len(loader) - 1
            for step, (images, targets) in enumerate(loader):
                if state.iteration >= stop:
                    break
                data_time = time.perf_counter() - start
                stitch_id = state.sampler.sample(state.iteration)
                net.set_stitch(stitch_id)
                images = images.to(ctx.device, non_blocking=True)
                targets = targets.to(ctx.device, non_blocking=True)
                images, targets = seeded_mixup(mixup, images, targets, recipe.seed, state.iteration, ctx.rank)
                with torch.autocast(ctx.device.type, dtype=torch.float16, enabled=amp):
                    logits = ddp_model(images)
                    loss = criterion(images, logits.float(), targets)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"loss is {loss.item()} at epoch {epoch}, iteration {state.iteration} "
                                             f"(stitch {stitch_id}, {net.space[stitch_id].route}): training diverged; "
                                             "lower optimizer.lr or set optimizer.clip_grad, then --resume")
                lr = state.optimizer.param_groups[0]["lr"]
                state.optimizer.zero_grad(set_to_none=True)
                state.scaler.scale(loss).backward()
                if recipe.clip_grad > 0:
                    state.scaler.unscale_(state.optimizer)
                    torch.nn.utils.clip_grad_norm_(params, recipe.clip_grad)
                state.scaler.step(state.optimizer)
                state.scaler.update()
                losses.append(loss.item())
                stitches.append(stitch_id)
                storage.iter = state.iteration
                storage.put_scalars(**{"total_loss": losses[-1], route_loss_name(net.space[stitch_id]): losses[-1],
                                       "lr": lr, "data_time": data_time, "time": time.perf_counter() - start},
                                    smoothing_hint=False)
                state.iteration += 1
                if state.iteration % log_period == 0 and step < last:  # the epoch's last: written with its summary
                    for writer in writers:
                        writer.write()
                start = time.perf_counter()
            else:  # the epoch ran to its end
                state.epoch += 1
                mean = float(np.mean(losses[first:]))
                epoch_means.append(mean)
                checksum = param_checksum(net)
                storage.put_scalars(**{"epoch/mean_loss": mean, "epoch/param_checksum": checksum},
                                    smoothing_hint=False)
                for writer in writers:
                    writer.write()
                logger.info("epoch %d/%d (iteration %d): mean loss %.4f, parameter checksum %.17g, stitch sequence "
                            "%s", state.epoch, recipe.epochs, state.iteration, mean, checksum,
                            stitch_sequence_digest(stitches[first:]))
                if on_epoch_end is not None:
                    on_epoch_end(state, {"mean_loss": mean, "checksum": checksum})
    return {"iteration": state.iteration, "epoch": state.epoch, "losses": losses, "stitches": stitches,
            "epoch_means": epoch_means}
