"""Training and evaluation of the stitched DPT: optimizer, schedule, one epoch with ROS, checkpoints,
per-stitch evaluation (DDP-aware).

Exact resume: a checkpoint is written after every epoch with the model, optimizer, OneCycle schedule,
AMP scaler and sampler state. Everything random is a function of (seed, epoch, ...): the data order
(``DistributedSampler``), each frame's augmentation (``DepthDataset``), the stitch of each iteration (the
engine's sampler) and torch's generator (re-seeded every epoch, for stochastic depth), so a run resumed
from epoch ``e`` trains exactly as the uninterrupted run from epoch ``e`` on.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any, Dict, Iterable, List, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from snnet_core import FlopsTable, ResourceConstrainedSampler, evaluate_stitches, load_snnet, save_snnet
from snnet_core.report import RESULTS_FILE, load_results

from .distributed import DistContext, broadcast_object
from .loss import SILogLoss
from .metrics import HIGHER_IS_BETTER, DepthMetricAccumulator
from .model import DPTDepthModel, ModelSpec

logger = logging.getLogger(__name__)
CHECKPOINT_NAME = "checkpoint_last.pth"
NO_DECAY_NAMES = ("pos_embed", "cls_token", "reg_token")
NORM_TYPES = (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm2d)


@dataclasses.dataclass
class TrainRecipe:
    """Optimisation settings; stored in the checkpoint and checked on resume.

    ``batch_size`` is the total over all processes. ``lr`` is the peak learning rate of the DPT head and
    the stitching layers; the anchors' blocks and embeddings get ``lr * backbone_lr_mult``.
    """

    epochs: int = 24
    batch_size: int = 16
    lr: float = 2e-5
    backbone_lr_mult: float = 0.1
    weight_decay: float = 0.01
    clip_grad: float = 1.0
    flops_step: float = 10.0
    warmup_iters: int = 100
    seed: int = 0
    world_size: int = 1


def param_groups(model: DPTDepthModel, lr: float, weight_decay: float, backbone_lr_mult: float) -> List[Dict[str, Any]]:
    """AdamW groups: anchors at ``lr * backbone_lr_mult``, stitching layers and head at ``lr``; no weight
    decay on position embeddings, cls tokens and normalisation layers. Frozen parameters (the LS weights of
    LoRA stitching layers) are left out."""
    no_decay = {id(p) for m in model.modules() if isinstance(m, NORM_TYPES) for p in m.parameters()}
    groups: Dict[tuple, List[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        backbone = name.startswith("backbone.anchors.")
        decay = id(p) not in no_decay and not name.endswith(NO_DECAY_NAMES)
        groups.setdefault((backbone, decay), []).append(p)
    return [
        {"name": f"{'anchors' if backbone else 'stitching+head'}{'' if decay else '/no_decay'}", "params": params,
         "lr": lr * (backbone_lr_mult if backbone else 1.0), "weight_decay": weight_decay if decay else 0.0}
        for (backbone, decay), params in sorted(groups.items(), key=lambda kv: (not kv[0][0], not kv[0][1]))
    ]


def build_optimizer(model: DPTDepthModel, recipe: TrainRecipe) -> torch.optim.AdamW:
    return torch.optim.AdamW(param_groups(model, recipe.lr, recipe.weight_decay, recipe.backbone_lr_mult))


def build_scheduler(optimizer: torch.optim.Optimizer, total_steps: int) -> torch.optim.lr_scheduler.OneCycleLR:
    """OneCycle over the whole run (mmcv/toolbox defaults: 30% warm-up, div 25, final div 100, cosine)."""
    return torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=[g["lr"] for g in optimizer.param_groups], total_steps=total_steps,
        pct_start=0.3, div_factor=25.0, final_div_factor=100.0,
    )


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """Seed of torch's generator for one epoch on one rank."""
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0])


def param_checksum(model: nn.Module) -> float:
    """Sum of all parameters in float64: equal on every DDP rank when the replicas agree."""
    with torch.no_grad():
        return float(sum(p.double().sum() for p in model.parameters()))


# --------------------------------------------------------------------------------------------------
def train_one_epoch(
    model: DPTDepthModel,
    ddp_model: nn.Module,
    loader: Iterable,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    sampler: ResourceConstrainedSampler,
    loss_fn: SILogLoss,
    recipe: TrainRecipe,
    ctx: DistContext,
    epoch: int,
    iteration: int,
    log_path: str,
    amp: bool,
) -> Dict[str, float]:
    """One epoch; each iteration trains the stitch ``sampler.sample(iteration)`` (the same on every rank).

    Appends one JSON line per iteration (stitch, loss, lr) to ``log_path``. Returns ``{"iteration": next
    iteration, "mean_loss": ...}``.
    """
    model.train()
    params = [p for g in optimizer.param_groups for p in g["params"]]
    losses = []
    with open(log_path, "a") as log:
        for images, depths in tqdm(loader, desc=f"epoch {epoch}", unit="it", disable=not ctx.is_main, leave=False):
            stitch_id = sampler.sample(iteration)
            model.backbone.set_stitch(stitch_id)
            images = images.to(ctx.device, non_blocking=True)
            depths = depths.to(ctx.device, non_blocking=True)
            with torch.autocast(ctx.device.type, dtype=torch.float16, enabled=amp):
                pred = ddp_model(images)
            loss = loss_fn(pred.float(), depths, iteration)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss is {loss.item()} at iteration {iteration} (stitch {stitch_id})")
            lr = optimizer.param_groups[-1]["lr"]  # this step's (head) learning rate
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if recipe.clip_grad > 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(params, recipe.clip_grad)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            losses.append(loss.item())
            log.write(json.dumps({"epoch": epoch, "iter": iteration, "stitch": stitch_id, "loss": losses[-1],
                                  "lr": lr}) + "\n")
            iteration += 1
    return {"iteration": iteration, "mean_loss": float(np.mean(losses))}


@torch.no_grad()
def evaluate(model: DPTDepthModel, loader: Iterable, ctx: DistContext, flip: bool = True,
             amp: bool = False) -> Dict[str, float]:
    """Depth metrics of ``model`` (its selected stitch) over ``loader`` (this rank's shard), reduced over ranks.

    ``flip``: average the prediction with that of the mirrored image.
    """
    model.eval()
    head = model.head
    acc = DepthMetricAccumulator(head.min_depth, head.max_depth)
    for images, depths in loader:
        images = images.to(ctx.device, non_blocking=True)
        with torch.autocast(ctx.device.type, dtype=torch.float16, enabled=amp):
            pred = model(images).float()
            if flip:
                pred = (pred + model(images.flip(-1)).float().flip(-1)) / 2
        acc.update(pred, depths.to(ctx.device))
    acc.all_reduce(ctx.device)
    return acc.compute()


def evaluate_stitch_report(
    model: DPTDepthModel,
    loader: Iterable,
    stitch_ids: Sequence[int],
    flops: FlopsTable,
    output_dir: str,
    run_key: str,
    ctx: DistContext,
    primary_metric: str = "a1",
    flip: bool = True,
    amp: bool = False,
) -> Optional[dict]:
    """Evaluate stitches through the engine's resumable report loop (rank 0 writes; all ranks compute).

    With DDP every rank must evaluate the same stitches in the same order: rank 0 resolves which are
    still to do (after an interruption) and broadcasts them. Returns the results record on rank 0.
    """
    snnet = model.backbone

    def evaluate_one(stitch_id: int) -> Dict[str, float]:
        snnet.set_stitch(stitch_id)
        return evaluate(model, loader, ctx, flip, amp)

    report_args = dict(space=snnet.space, flops=flops, output_dir=output_dir, primary_metric=primary_metric,
                       higher_is_better=primary_metric in HIGHER_IS_BETTER, run_key=run_key,
                       title=f"SN-Netv2 DPT on NYUv2 at {flops.input_size[0]}x{flops.input_size[1]}")
    if not ctx.enabled:
        return evaluate_stitches(evaluate_one, stitch_ids, **report_args)
    error, todo = None, []
    if ctx.is_main:
        record = load_results(output_dir)
        if record and record.get("run_key") != run_key:
            error = f"{os.path.join(output_dir, RESULTS_FILE)} holds results of another run; choose a new --eval-dir"
        else:
            todo = [int(s) for s in stitch_ids if str(int(s)) not in record.get("stitches", {})]
    error, todo = broadcast_object(ctx, (error, todo))
    if error:
        raise RuntimeError(error)
    if ctx.is_main:
        return evaluate_stitches(evaluate_one, stitch_ids, **report_args)
    for stitch_id in todo:
        evaluate_one(stitch_id)
    return None


# --------------------------------------------------------------------------------------------------
def save_checkpoint(path: str, model: DPTDepthModel, spec: ModelSpec, recipe: TrainRecipe, optimizer, scheduler,
                    scaler, sampler, epoch: int, iteration: int) -> None:
    """Everything needed to resume after ``epoch`` (completed epochs) / ``iteration`` (completed steps)."""
    save_snnet(path, model.backbone, extra={
        "spec": spec.to_dict(), "recipe": dataclasses.asdict(recipe), "head": model.head.state_dict(),
        "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
        "sampler": sampler.state_dict(), "epoch": epoch, "iteration": iteration,
    })


def read_checkpoint_spec(path: str) -> ModelSpec:
    """The ``ModelSpec`` stored in a training checkpoint (memory-mapped read: the weights are not loaded)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist")
    state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    if "spec" not in state:
        raise RuntimeError(f"{path!r} is not a checkpoint of projects/snnet_dpt/train.py (no model spec)")
    return ModelSpec.from_dict(state["spec"])


def load_checkpoint(path: str, model: DPTDepthModel, map_location: torch.device | str = "cpu") -> Dict[str, Any]:
    """Load the weights of a training checkpoint into ``model``; returns the whole checkpoint."""
    state = load_snnet(path, model.backbone, map_location=map_location)  # checks the SN-Net architecture
    if "head" not in state:
        raise RuntimeError(f"{path!r} holds an SN-Net without a DPT head")
    model.head.load_state_dict(state["head"])
    return state


def check_resumable(state: Dict[str, Any], spec: ModelSpec, recipe: TrainRecipe) -> None:
    """Refuse to resume a run with another architecture or optimisation recipe (the schedule would differ)."""
    saved_spec, saved_recipe = state["spec"], state["recipe"]
    diffs = [f"{k}: checkpoint {saved_spec.get(k)} vs now {v}" for k, v in spec.to_dict().items()
             if saved_spec.get(k) != v]
    diffs += [f"{k}: checkpoint {saved_recipe.get(k)} vs now {v}" for k, v in dataclasses.asdict(recipe).items()
              if k != "world_size" and saved_recipe.get(k) != v]
    if diffs:
        raise ValueError("cannot resume: the run was started with other settings (" + "; ".join(diffs) + ")")
    if saved_recipe["world_size"] != recipe.world_size:
        logger.warning("resuming a %d-process run with %d processes: same schedule, but not bit-exact data order",
                       saved_recipe["world_size"], recipe.world_size)


def wrap_ddp(model: DPTDepthModel, ctx: DistContext) -> nn.Module:
    """DDP wrapper (broadcasts rank 0's weights); each iteration runs one stitch, so most of the SN-Net's
    parameters are unused in a given step (``find_unused_parameters``)."""
    if not ctx.enabled:
        return model
    return DistributedDataParallel(model, device_ids=[ctx.local_rank] if ctx.device.type == "cuda" else None,
                                   find_unused_parameters=True)
