"""Training of the stitched DPT: the recipe, AdamW groups, OneCycle schedule, the epoch loop with ROS, LS init,
detectron2-style logging and checkpoints, exact resume.

Exact resume: after every epoch rank 0 writes a checkpoint with the model, optimizer, OneCycle schedule, AMP scaler
and sampler state (``model_<iteration>.pth``, ``model_final.pth`` after the last epoch, named by
``last_checkpoint``). Everything random is a function of (seed, epoch, ...): the data order
(``DistributedSampler``), each frame's augmentation (``DepthDataset``), the stitch of each iteration (the
engine's sampler) and torch's generator (re-seeded every epoch, for stochastic depth), so a run resumed
from epoch ``e`` trains exactly as the uninterrupted run from epoch ``e`` on. Its ``metrics.json`` is first cut
back to the checkpoint and TensorBoard's later events are purged (``snnet_core.training.train_log.training_writers``), and
every scalar is logged unsmoothed, so the resumed log holds what the uninterrupted run logged: one history.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
from detectron2.utils.events import EventStorage, EventWriter, get_event_storage
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from snnet_core import FlopsTable, UniformSampler, load_snnet, save_snnet
from snnet_core.model.backbone_lora import describe_backbone_lora
from snnet_core.model.checkpoint import read_checkpoint_file
from snnet_core.distributed import DistContext, barrier
from snnet_core.io.file_claims import state_bytes
from snnet_core.io.run_dir import checkpoint_name, prune_checkpoints, tag_last_checkpoint
from snnet_core.model.stitch_space import Stitch
from snnet_core.training.run_state import check_resumable as check_run_resumable
from snnet_core.training.run_state import epoch_seed, ls_init_from_dataset, param_checksum, stitch_sequence_digest
from snnet_core.training.ls_init import describe_ls_init
from snnet_core.training.sampling import build_sampler, describe_sampler
from snnet_core.training.train_log import route_loss_name, training_writers

from .loss import SILogLoss
from .model import DPTDepthModel, ModelSpec
from .transforms import DepthDataset, TrainAugmentation

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class TrainRecipe:
    """Everything that shapes the training trajectory; stored in the checkpoint and checked on resume.

    Built from a config by ``recipe_from_config`` (the values and their sources live in
    ``projects/snnet_dpt/configs/dpt_snnetv2_deit3_s_l_nyu.py``). ``batch_size`` is the total over all
    processes; ``lr`` the peak learning rate before the multipliers of ``param_rules``.

    Attributes:
        param_rules: ``{substring: {"lr_mult": m, "decay_mult": d}}`` with mmcv's ``custom_keys`` semantics
            (see ``match_param_rule``); parameters matching no key get ``lr`` and ``weight_decay``.
        shared_max_lr: True: every group follows the one OneCycle curve of ``lr`` (mmcv's
            ``OneCycleLrUpdaterHook`` with a scalar ``max_lr``, which overwrites the groups' ``lr_mult``);
            False: each group peaks at its own ``lr * lr_mult``.
        pct_start, div_factor, final_div_factor: OneCycle warm-up share, ``max/initial`` and ``initial/final``.
        base_momentum, max_momentum: AdamW's beta1 runs ``max -> base`` during the warm-up and back after it.
        augmentation: keyword arguments of ``TrainAugmentation``.
        sampling: ``"ros"`` (SN-Netv2's resource-constrained sampling, bins of ``flops_step`` GFLOPs) or
            ``"uniform"`` (SN-Netv1: every stitch of the space equally likely).
    """

    epochs: int
    batch_size: int
    lr: float
    betas: Tuple[float, float]
    eps: float
    weight_decay: float
    param_rules: Dict[str, Dict[str, float]]
    clip_grad: float
    shared_max_lr: bool
    pct_start: float
    div_factor: float
    final_div_factor: float
    base_momentum: float
    max_momentum: float
    flops_step: float
    warmup_iters: int
    ls_init_images: int
    amp: bool
    seed: int
    augmentation: Dict[str, Any]
    sampling: str = "ros"
    world_size: int = 1

    def to_dict(self) -> Dict[str, Any]:
        """Primitives only (lists/dicts/str/numbers): safe in a ``weights_only`` checkpoint."""
        return json.loads(json.dumps(dataclasses.asdict(self)))


def match_param_rule(name: str, rules: Mapping[str, Any]) -> Optional[str]:
    """The key of ``rules`` that decides parameter ``name``, as mmcv's ``DefaultOptimizerConstructor`` picks
    ``custom_keys``: the longest key that is a substring of the name (ties: alphabetical); None if none."""
    for key in sorted(sorted(rules), key=len, reverse=True):
        if key in name:
            return key
    return None


def param_groups(model: nn.Module, lr: float, weight_decay: float,
                 param_rules: Mapping[str, Mapping[str, float]]) -> List[Dict[str, Any]]:
    """AdamW groups, one per rule key that matches a parameter (plus ``"default"``): ``lr * lr_mult`` and
    ``weight_decay * decay_mult`` of the key ``match_param_rule`` picks. Frozen parameters (the LS weights of
    LoRA stitching layers) are left out."""
    for key, rule in param_rules.items():
        extra = set(rule) - {"lr_mult", "decay_mult"}
        if extra:
            raise ValueError(f"optimizer.param_rules[{key!r}] has unknown fields {sorted(extra)}: a rule holds "
                             "lr_mult and/or decay_mult")
    groups: Dict[str, List[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            groups.setdefault(match_param_rule(name, param_rules) or "default", []).append(p)
    return [
        {"name": key, "params": params,
         "lr": lr * float(param_rules.get(key, {}).get("lr_mult", 1.0)),
         "weight_decay": weight_decay * float(param_rules.get(key, {}).get("decay_mult", 1.0))}
        for key, params in sorted(groups.items())
    ]


def build_optimizer(model: nn.Module, recipe: TrainRecipe) -> torch.optim.AdamW:
    return torch.optim.AdamW(param_groups(model, recipe.lr, recipe.weight_decay, recipe.param_rules),
                             betas=tuple(recipe.betas), eps=recipe.eps)


def build_scheduler(optimizer: torch.optim.Optimizer, recipe: TrainRecipe,
                    total_steps: int) -> torch.optim.lr_scheduler.OneCycleLR:
    """OneCycle learning rate (cosine) and AdamW beta1 over ``total_steps`` iterations, as mmcv's
    ``OneCycleLrUpdaterHook`` + ``OneCycleMomentumUpdaterHook`` (same phase boundaries and annealing)."""
    max_lr = [recipe.lr if recipe.shared_max_lr else g["lr"] for g in optimizer.param_groups]
    return torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=max_lr, total_steps=total_steps, pct_start=recipe.pct_start, anneal_strategy="cos",
        div_factor=recipe.div_factor, final_div_factor=recipe.final_div_factor, cycle_momentum=True,
        base_momentum=recipe.base_momentum, max_momentum=recipe.max_momentum,
    )


# --------------------------------------------------------------------------------------------------
def train_one_epoch(
    model: DPTDepthModel,
    ddp_model: nn.Module,
    loader: Iterable,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    sampler: UniformSampler,
    loss_fn: SILogLoss,
    recipe: TrainRecipe,
    ctx: DistContext,
    epoch: int,
    iteration: int,
    amp: bool,
    writers: Sequence[EventWriter] = (),
    log_period: int = 20,
) -> Dict[str, Any]:
    """One epoch; each iteration trains the stitch ``sampler.sample(iteration)`` (the same on every rank).

    Each iteration puts into detectron2's current ``EventStorage`` (at ``storage.iter = iteration``): ``total_loss``
    (this iteration's loss, that of one stitch), the same value under ``route_loss_name`` of the stitch
    (``route_loss/FS``, ``route_loss/fast_anchor``, ...), ``lr`` (of the first parameter group, before this step),
    ``time`` and ``data_time`` (seconds), unsmoothed: what ``writers`` write at an iteration does not depend on the
    iterations this process ran before it. ``writers`` write after every ``log_period``-th iteration but the
    epoch's last (the caller writes that one with the epoch's summary). Returns ``{"iteration": next iteration,
    "mean_loss": mean over the epoch, "stitches": the stitch id of each iteration}``.
    """
    model.train()
    params = [p for g in optimizer.param_groups for p in g["params"]]
    storage = get_event_storage()
    losses, stitches = [], []
    last = len(loader) - 1
    start = time.perf_counter()
    for step, (images, depths) in enumerate(loader):
        data_time = time.perf_counter() - start
        stitch_id = sampler.sample(iteration)
        model.backbone.set_stitch(stitch_id)
        images = images.to(ctx.device, non_blocking=True)
        depths = depths.to(ctx.device, non_blocking=True)
        with torch.autocast(ctx.device.type, dtype=torch.float16, enabled=amp):
            pred = ddp_model(images)
        loss = loss_fn(pred.float(), depths, iteration)
        stitch = model.backbone.space[stitch_id]
        if not torch.isfinite(loss):
            raise FloatingPointError(non_finite_loss_message(loss, pred, depths, epoch, iteration, stitch))
        lr = optimizer.param_groups[0]["lr"]  # this step's learning rate
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if recipe.clip_grad > 0:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(params, recipe.clip_grad)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        losses.append(loss.item())
        stitches.append(stitch_id)
        storage.iter = iteration
        storage.put_scalars(**{"total_loss": losses[-1], route_loss_name(stitch): losses[-1], "lr": lr,
                               "data_time": data_time, "time": time.perf_counter() - start}, smoothing_hint=False)
        if (iteration + 1) % log_period == 0 and step < last:
            for writer in writers:
                writer.write()
        iteration += 1
        start = time.perf_counter()
    return {"iteration": iteration, "mean_loss": float(np.mean(losses)), "stitches": stitches}


def non_finite_loss_message(loss: torch.Tensor, pred: torch.Tensor, depths: torch.Tensor, epoch: int,
                            iteration: int, stitch: Stitch) -> str:
    """Where a non-finite loss happened and what to check: the batch's ground truth or the model's prediction."""
    where = (f"loss is {loss.item()} at epoch {epoch}, iteration {iteration} (stitch {stitch.id}, "
             f"{stitch.route}): ")
    if not torch.isfinite(depths).all():
        return where + ("the ground-truth depth of this batch holds inf/NaN; depth must be finite metres (0 where "
                        "unknown): check the depth files under dataloader.root")
    if not torch.isfinite(pred).all():
        return where + ("the prediction is not finite (training diverged): lower optimizer.lr, keep "
                        "optimizer.clip_grad > 0 or set train.amp=false, then continue from the last checkpoint "
                        "with --resume")
    return where + "prediction and ground truth are finite; check the loss settings (train.loss_warmup_iters)"


def ls_init(model: DPTDepthModel, train_set: Dataset, recipe: TrainRecipe, workers: int, ctx: DistContext) -> None:
    """LS init of every stitching layer from ``recipe.ls_init_images`` training frames drawn at random (seeded),
    as the training loader gives them (border crop, augmentation, random crop), as upstream does."""
    ls_init_from_dataset(model.backbone, train_set, recipe.ls_init_images, recipe.seed,
                         recipe.batch_size // ctx.world_size, ctx.device, workers)


def train(model: DPTDepthModel, spec: ModelSpec, cfg: Dict[str, Any], recipe: TrainRecipe, frames, ctx: DistContext,
          flops: FlopsTable, resume_path: Optional[str]) -> Dict[str, Any]:
    """Train (or continue training from the checkpoint ``resume_path``) into ``cfg["train"]["output_dir"]``;
    returns ``{"checkpoint": the last checkpoint, "iteration": iterations done}``.

    Scalars go through detectron2's ``EventStorage`` to its writers (``training_writers``) on rank 0 (console printer,
    ``metrics.json``, TensorBoard) every ``train.log_period`` iterations and at the end of each epoch, with the
    epoch's ``epoch/mean_silog`` and ``epoch/param_checksum`` (float64 sum of every parameter). After each epoch
    rank 0 writes ``model_<index of the epoch's last iteration, 7 digits>.pth`` (``model_final.pth`` after the last
    epoch), names it in ``last_checkpoint`` and deletes the periodic checkpoints but the newest
    ``train.max_to_keep``.
    """
    train_cfg, workers = cfg["train"], cfg["dataloader"]["workers"]
    output_dir = train_cfg["output_dir"]
    train_set = DepthDataset(frames, TrainAugmentation(**recipe.augmentation), recipe.seed)
    data_sampler = DistributedSampler(train_set, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True,
                                      seed=recipe.seed, drop_last=True)
    loader = DataLoader(train_set, recipe.batch_size // ctx.world_size, sampler=data_sampler, drop_last=True,
                        num_workers=workers, pin_memory=ctx.device.type == "cuda")
    if len(loader) == 0:
        raise ValueError(f"the {len(train_set)} training frames give no full batch of train.batch_size="
                         f"{recipe.batch_size}")
    amp = ctx.device.type == "cuda" and recipe.amp
    optimizer = build_optimizer(model, recipe)
    max_iter = recipe.epochs * len(loader)
    scheduler = build_scheduler(optimizer, recipe, max_iter)
    scaler = torch.amp.GradScaler(ctx.device.type, enabled=amp)
    sampler = build_sampler(recipe.sampling, flops.gflops, recipe.flops_step, recipe.seed, "train.sampling")
    logger.info("%s (train.sampling=%s, model.route_types); optimizer groups (tensors, peak lr, weight decay): %s",
                describe_sampler(sampler, spec.route_types), recipe.sampling,
                ", ".join(f"{g['name']} ({len(g['params'])}, {g['max_lr']:.3g}, {g['weight_decay']:.3g})"
                          for g in optimizer.param_groups))  # max_lr: the OneCycle peak of the group
    logger.info(describe_backbone_lora(model, spec.backbone_lora_rank, "model.backbone_lora_rank"))
    start_epoch, iteration, checkpoint = 0, 0, resume_path
    if resume_path:
        state = load_checkpoint(resume_path, model, ctx.device)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        sampler.load_state_dict(state["sampler"])
        start_epoch, iteration = int(state["epoch"]), int(state["iteration"])
        logger.info("resumed from %s after epoch %d (iteration %d)", resume_path, start_epoch, iteration)
    elif ctx.is_main:  # DDP then broadcasts rank 0's weights
        logger.info(describe_ls_init(recipe.ls_init_images, "train.ls_init_images"))
        if recipe.ls_init_images > 0:
            ls_init(model, train_set, recipe, workers, ctx)
    ddp_model = wrap_ddp(model, ctx)
    loss_fn = SILogLoss(warmup_iters=recipe.warmup_iters)
    # a resumed run cuts metrics.json back to its checkpoint and purges TensorBoard's events after it
    writers = training_writers(output_dir, max_iter, iteration) if ctx.is_main else []
    try:
        with EventStorage(iteration) as storage:
            for epoch in range(start_epoch, recipe.epochs):
                data_sampler.set_epoch(epoch)
                train_set.set_epoch(epoch)
                torch.manual_seed(epoch_seed(recipe.seed, epoch, ctx.rank))
                stats = train_one_epoch(model, ddp_model, loader, optimizer, scheduler, scaler, sampler, loss_fn,
                                        recipe, ctx, epoch, iteration, amp, writers, train_cfg["log_period"])
                iteration = stats["iteration"]
                checksum = param_checksum(model)
                storage.iter = iteration - 1
                storage.put_scalars(**{"epoch/mean_silog": stats["mean_loss"], "epoch/param_checksum": checksum},
                                    smoothing_hint=False)
                for writer in writers:
                    writer.write()
                logger.info("epoch %d/%d (iteration %d): mean loss %.4f, parameter checksum %.17g, stitch sequence "
                            "%s", epoch + 1, recipe.epochs, iteration, stats["mean_loss"], checksum,
                            stitch_sequence_digest(stats["stitches"]))
                checkpoint = os.path.join(output_dir, checkpoint_name(iteration - 1, epoch + 1 == recipe.epochs))
                if ctx.is_main:
                    save_checkpoint(checkpoint, model, spec, recipe, optimizer, scheduler, scaler, sampler, epoch + 1,
                                    iteration, cfg["dataloader"]["eval_size"])
                    tag_last_checkpoint(output_dir, checkpoint)
                    for path in prune_checkpoints(output_dir, train_cfg["max_to_keep"]):
                        logger.info("deleted %s (train.max_to_keep=%d)", path, train_cfg["max_to_keep"])
                barrier(ctx)
    finally:
        for writer in writers:
            writer.close()
    return {"checkpoint": checkpoint, "iteration": iteration}


# --------------------------------------------------------------------------------------------------
def save_checkpoint(path: str, model: DPTDepthModel, spec: ModelSpec, recipe: TrainRecipe, optimizer, scheduler,
                    scaler, sampler, epoch: int, iteration: int, eval_size: Sequence[int]) -> None:
    """Everything needed to resume after ``epoch`` (completed epochs) / ``iteration`` (completed steps), and the
    evaluation size ``(H, W)`` of the run (``--eval-only`` evaluates at it)."""
    save_snnet(path, model.backbone, extra={
        "spec": spec.to_dict(), "recipe": recipe.to_dict(), "head": model.head.state_dict(),
        "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
        "sampler": sampler.state_dict(), "epoch": epoch, "iteration": iteration,
        "eval_size": [int(s) for s in eval_size],
    })


def read_checkpoint_header(path: str) -> Dict[str, Any]:
    """``{"spec": ModelSpec, "recipe", "epoch", "iteration", "eval_size": (H, W) or None}`` of a training checkpoint,
    read memory-mapped (the weights are not loaded): a missing, truncated or foreign file fails here, before any
    compute. ``eval_size`` is None for a checkpoint written before it was recorded."""
    state = read_checkpoint_file(path)  # read before the model is built: no more than it holds on disk
    missing = [k for k in ("spec", "recipe", "epoch", "iteration") if not isinstance(state, dict) or k not in state]
    if missing:
        raise RuntimeError(f"{path!r} is not a checkpoint of projects/snnet_dpt/train.py (no {missing})")
    eval_size = state.get("eval_size")
    recipe = {"sampling": "ros", **state["recipe"]}  # a checkpoint written before train.sampling: ROS
    return {"spec": ModelSpec.from_dict(state["spec"]), "recipe": recipe, "epoch": int(state["epoch"]),
            "iteration": int(state["iteration"]), "eval_size": None if eval_size is None else tuple(eval_size)}


def load_checkpoint(path: str, model: DPTDepthModel, map_location: torch.device | str = "cpu") -> Dict[str, Any]:
    """Load the weights of a training checkpoint into ``model``; returns the whole checkpoint."""
    state = load_snnet(path, model.backbone, map_location=map_location,  # checks the SN-Net architecture
                       expected_bytes=state_bytes(model))
    if "head" not in state:
        raise RuntimeError(f"{path!r} holds an SN-Net without a DPT head")
    model.head.load_state_dict(state["head"])
    return state


def check_resumable(header: Dict[str, Any], spec: ModelSpec, recipe: TrainRecipe) -> None:
    """Refuse to resume a run with another architecture or optimisation recipe (the schedule would differ);
    ``header``: ``read_checkpoint_header`` of the checkpoint."""
    check_run_resumable(header["spec"].to_dict(), spec.to_dict(), header["recipe"], recipe.to_dict())


def wrap_ddp(model: DPTDepthModel, ctx: DistContext) -> nn.Module:
    """DDP wrapper (broadcasts rank 0's weights); each iteration runs one stitch, so most of the SN-Net's
    parameters are unused in a given step (``find_unused_parameters``)."""
    if not ctx.enabled:
        return model
    return DistributedDataParallel(model, device_ids=[ctx.local_rank] if ctx.device.type == "cuda" else None,
                                   find_unused_parameters=True)
