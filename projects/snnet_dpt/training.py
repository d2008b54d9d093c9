"""Training and evaluation of the stitched DPT: optimizer, schedule, one epoch with ROS, checkpoints,
per-stitch evaluation (DDP-aware; stitch by stitch, or in groups that share route prefixes).

Exact resume: a checkpoint is written after every epoch with the model, optimizer, OneCycle schedule,
AMP scaler and sampler state. Everything random is a function of (seed, epoch, ...): the data order
(``DistributedSampler``), each frame's augmentation (``DepthDataset``), the stitch of each iteration (the
engine's sampler) and torch's generator (re-seeded every epoch, for stochastic depth), so a run resumed
from epoch ``e`` trains exactly as the uninterrupted run from epoch ``e`` on; its log is first cut back to the
checkpoint (``truncate_log``), so that it describes one history.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from snnet_core import FlopsTable, ResourceConstrainedSampler, evaluate_stitches, load_snnet, save_snnet
from snnet_core.atomic_io import write_atomic
from snnet_core.checkpoint import describe_load_error
from snnet_core.latency import LATENCY_COLUMN, time_stitches
from snnet_core.prefix_trie import stitch_groups
from snnet_core.latency_options import LatencyOptions
from snnet_core.report import RESULTS_FILE, evaluate_stitch_groups, load_results
from snnet_core.stitch_space import Stitch

from .distributed import DistContext, broadcast_object, gather_objects
from .loss import SILogLoss
from .metrics import HIGHER_IS_BETTER, DepthMetricAccumulator
from .model import DPTDepthModel, ModelSpec

logger = logging.getLogger(__name__)
CHECKPOINT_NAME = "checkpoint_last.pth"
TASK = "depth"  # the task tag of the per-stitch results files (another task's results are refused)


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

    Appends one JSON line per iteration (stitch, loss, learning rate per group) to ``log_path``, line-buffered (a
    line is in the file as soon as its step is done). Returns
    ``{"iteration": next iteration, "mean_loss": ...}``.
    """
    model.train()
    params = [p for g in optimizer.param_groups for p in g["params"]]
    losses = []
    with open(log_path, "a", buffering=1) as log:
        for images, depths in tqdm(loader, desc=f"epoch {epoch}", unit="it", disable=not ctx.is_main, leave=False):
            stitch_id = sampler.sample(iteration)
            model.backbone.set_stitch(stitch_id)
            images = images.to(ctx.device, non_blocking=True)
            depths = depths.to(ctx.device, non_blocking=True)
            with torch.autocast(ctx.device.type, dtype=torch.float16, enabled=amp):
                pred = ddp_model(images)
            loss = loss_fn(pred.float(), depths, iteration)
            if not torch.isfinite(loss):
                raise FloatingPointError(non_finite_loss_message(loss, pred, depths, epoch, iteration,
                                                                 model.backbone.space[stitch_id]))
            lrs = {g["name"]: g["lr"] for g in optimizer.param_groups}  # this step's learning rates
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
                                  "lr": lrs}) + "\n")
            iteration += 1
    return {"iteration": iteration, "mean_loss": float(np.mean(losses))}


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


def flip_average(pred: torch.Tensor, pred_of_mirrored: torch.Tensor) -> torch.Tensor:
    """Flip TTA: the mean of ``pred`` and the mirrored prediction of the mirrored image, ``(B, 1, H, W)``."""
    return (pred + pred_of_mirrored.flip(-1)) / 2


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
                pred = flip_average(pred, model(images.flip(-1)).float())
        acc.update(pred, depths.to(ctx.device))
    acc.all_reduce(ctx.device)
    return acc.compute()


@torch.no_grad()
def evaluate_group(model: DPTDepthModel, loader: Iterable, stitch_ids: Sequence[int], ctx: DistContext,
                   flip: bool = True, amp: bool = False) -> Dict[int, Dict[str, float]]:
    """``{stitch id: depth metrics}`` of every stitch of ``stitch_ids`` in one pass over ``loader``.

    Each batch ``(B, 3, H, W)`` runs once through the trie of the stitches' routes (``predict_stitches``), and
    with ``flip`` once more mirrored; each stitch's predictions and metrics are those ``evaluate`` computes for
    it alone (same operations, same order). Between the two passes one prediction ``(B, 1, H, W)`` per stitch
    is held. Not reduced over ranks: ``loader`` holds every test image.
    """
    model.eval()
    head = model.head
    accumulators = {sid: DepthMetricAccumulator(head.min_depth, head.max_depth) for sid in stitch_ids}
    for images, depths in loader:
        images = images.to(ctx.device, non_blocking=True)
        with torch.autocast(ctx.device.type, dtype=torch.float16, enabled=amp):
            preds = {sid: pred.float() for sid, pred in model.predict_stitches(images, stitch_ids)}
            if flip:
                for sid, pred in model.predict_stitches(images.flip(-1), stitch_ids):
                    preds[sid] = flip_average(preds[sid], pred.float())
        depths = depths.to(ctx.device)
        for sid, acc in accumulators.items():
            acc.update(preds[sid], depths)
    return {sid: acc.compute() for sid, acc in accumulators.items()}


def time_depth_stitches(model: DPTDepthModel, stitch_ids: Sequence[int], options: LatencyOptions) -> Dict[int, float]:
    """Median milliseconds of one forward of each stitch deployed alone (the exported stitch under ``model``'s DPT
    head, as ``export.export_depth_model`` builds it; one forward, no flip averaging) on ``options.batch`` random
    images of ``options.size``, on ``options.device``."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(options.batch, 3, *options.size, generator=generator).to(options.device)
    model.eval()
    timed = time_stitches(model.backbone, stitch_ids, images,
                          lambda route: DPTDepthModel(route, model.head, model.patch_size), options.warmup,
                          options.runs, options.amp, options.device)
    return timed.ms


def _key_parts(run_key: str) -> Dict[str, str]:
    return dict(part.split("=", 1) for part in run_key.split("|") if "=" in part)


def report_conflict(output_dir: str, run_key: str) -> Optional[str]:
    """Why the per-stitch results in ``output_dir`` cannot take rows of the evaluation ``run_key`` (they are of
    another model or setting: the parts of the two keys that differ), or None if they can."""
    record = load_results(output_dir)
    if not record or record.get("run_key") == run_key:
        return None
    there, now = _key_parts(record.get("run_key") or ""), _key_parts(run_key)
    differing = [f"{k} {there.get(k)} there vs {v} now" for k, v in now.items() if there.get(k) != v]
    return (f"{os.path.join(output_dir, RESULTS_FILE)} holds the per-stitch report of another model or setting "
            f"({'; '.join(differing)}): set test.eval_dir to a new directory, or move that report away")


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
    group_size: Optional[int] = None,
    latency: Optional[LatencyOptions] = None,
) -> Optional[dict]:
    """Evaluate stitches into the engine's resumable report (rank 0 writes; all ranks compute).

    Rank 0 resolves which stitches are still to do (after an interruption) and broadcasts them. Then

    - ``group_size=None``: the per-stitch loop. Every rank evaluates every stitch on its shard of the test
      images (``loader``), metrics summed over ranks; each stitch's row is written when it is done.
    - ``group_size=N``: the grouped evaluation. The stitches, in route order, are cut into groups of ``N``
      (``stitch_groups``); a group is evaluated in one pass over every test image (``loader``, not sharded)
      sharing route prefixes (``evaluate_group``). With several ranks the groups are dealt out in rounds, one
      group per rank, and rank 0 gathers and writes each round's rows: every stitch is computed by one process
      exactly as one process alone computes it, and an interruption loses at most one round (one group per rank).

    With ``latency``, rank 0 times every stitch as deployed (``time_depth_stitches``) once its metrics are in, into
    the ``latency_ms`` column; ``run_key`` should name the latency settings.

    Returns the results record on rank 0.
    """
    snnet = model.backbone
    report_args = dict(space=snnet.space, flops=flops, output_dir=output_dir, primary_metric=primary_metric,
                       higher_is_better=primary_metric in HIGHER_IS_BETTER, run_key=run_key, task=TASK,
                       title=f"SN-Netv2 DPT on NYUv2 at {flops.input_size[0]}x{flops.input_size[1]}", resume=False)
    error, todo = None, []
    if ctx.is_main:
        error = report_conflict(output_dir, run_key)
        done = {} if error else load_results(output_dir).get("stitches", {})
        todo = [int(s) for s in stitch_ids if str(int(s)) not in done]
    error, todo = broadcast_object(ctx, (error, todo))
    if error:
        raise RuntimeError(error)

    def timed(metrics: Dict[int, Dict[str, float]]) -> Dict[int, Dict[str, float]]:
        """``metrics`` with each stitch's ``latency_ms`` (on rank 0, with ``latency``)."""
        if latency is None or not ctx.is_main:
            return metrics
        ms = time_depth_stitches(model, list(metrics), latency)
        return {sid: {**values, LATENCY_COLUMN: ms[sid]} for sid, values in metrics.items()}

    if group_size is None:
        def evaluate_one(stitch_id: int) -> Dict[str, float]:
            snnet.set_stitch(stitch_id)
            return timed({stitch_id: evaluate(model, loader, ctx, flip, amp)})[stitch_id]

        if ctx.is_main:  # exactly the broadcast stitches, whatever another evaluator merges meanwhile
            return evaluate_stitches(evaluate_one, todo, **report_args)
        for stitch_id in todo:
            evaluate_one(stitch_id)
        return None

    groups = stitch_groups(snnet, todo, group_size)
    rounds = {}  # the stitches of a round (rank 0 writes them together) -> the group of each rank
    for start in range(0, len(groups), ctx.world_size):
        dealt = groups[start:start + ctx.world_size]
        rounds[tuple(sid for group in dealt for sid in group)] = dealt
    logger.info("%d stitches in %d groups of up to %d, one pass over the test set each, in %d rounds over %d "
                "process(es)", len(todo), len(groups), group_size, len(rounds), ctx.world_size)

    def evaluate_round(stitches: Sequence[int]) -> Dict[int, Dict[str, float]]:
        dealt = rounds[tuple(stitches)]
        mine = evaluate_group(model, loader, dealt[ctx.rank], ctx, flip, amp) if ctx.rank < len(dealt) else {}
        return timed({sid: metrics for results in gather_objects(ctx, mine) for sid, metrics in results.items()})

    if ctx.is_main:
        return evaluate_stitch_groups(evaluate_round, [list(stitches) for stitches in rounds], **report_args)
    for stitches in rounds:
        evaluate_round(stitches)
    return None


# --------------------------------------------------------------------------------------------------
def save_checkpoint(path: str, model: DPTDepthModel, spec: ModelSpec, recipe: TrainRecipe, optimizer, scheduler,
                    scaler, sampler, epoch: int, iteration: int) -> None:
    """Everything needed to resume after ``epoch`` (completed epochs) / ``iteration`` (completed steps)."""
    save_snnet(path, model.backbone, extra={
        "spec": spec.to_dict(), "recipe": recipe.to_dict(), "head": model.head.state_dict(),
        "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
        "sampler": sampler.state_dict(), "epoch": epoch, "iteration": iteration,
    })


def read_checkpoint_header(path: str) -> Dict[str, Any]:
    """``{"spec": ModelSpec, "recipe", "epoch", "iteration"}`` of a training checkpoint, read memory-mapped (the
    weights are not loaded): a missing, truncated or foreign file fails here, before any compute."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:
        raise RuntimeError(f"could not read the checkpoint: {describe_load_error(path, exc)}") from exc
    missing = [k for k in ("spec", "recipe", "epoch", "iteration") if not isinstance(state, dict) or k not in state]
    if missing:
        raise RuntimeError(f"{path!r} is not a checkpoint of projects/snnet_dpt/train.py (no {missing})")
    return {"spec": ModelSpec.from_dict(state["spec"]), "recipe": state["recipe"], "epoch": int(state["epoch"]),
            "iteration": int(state["iteration"])}


def file_sha256(path: str) -> str:
    """Hex SHA-256 of a file's bytes (read in 1 MiB blocks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def truncate_log(path: str, epochs_done: int) -> int:
    """Cut a training log back to a checkpoint taken after ``epochs_done`` epochs, atomically, so that a resumed
    run appends to one history: lines of later epochs (those of the interrupted epoch) and a last line cut short
    by a kill are dropped. Returns the number of lines dropped."""
    if not os.path.isfile(path):
        return 0
    with open(path) as f:
        lines = f.readlines()
    kept = []
    for number, line in enumerate(lines, 1):
        try:
            epoch = json.loads(line)["epoch"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            if number == len(lines):  # written when the run was killed
                break
            raise ValueError(f"{path}:{number} is not a line of the training log ({exc}); move the log away to "
                             "resume") from exc
        if epoch < epochs_done:
            kept.append(line if line.endswith("\n") else line + "\n")
    if kept != lines:
        write_atomic(path, lambda f: f.writelines(kept))
    return len(lines) - len(kept)


def load_checkpoint(path: str, model: DPTDepthModel, map_location: torch.device | str = "cpu") -> Dict[str, Any]:
    """Load the weights of a training checkpoint into ``model``; returns the whole checkpoint."""
    state = load_snnet(path, model.backbone, map_location=map_location)  # checks the SN-Net architecture
    if "head" not in state:
        raise RuntimeError(f"{path!r} holds an SN-Net without a DPT head")
    model.head.load_state_dict(state["head"])
    return state


def check_resumable(header: Dict[str, Any], spec: ModelSpec, recipe: TrainRecipe) -> None:
    """Refuse to resume a run with another architecture or optimisation recipe (the schedule would differ);
    ``header``: ``read_checkpoint_header`` of the checkpoint."""
    saved_spec, saved_recipe = header["spec"].to_dict(), header["recipe"]
    diffs = [f"{k}: checkpoint {saved_spec.get(k)} vs now {v}" for k, v in spec.to_dict().items()
             if saved_spec.get(k) != v]
    diffs += [f"{k}: checkpoint {saved_recipe.get(k)} vs now {v}" for k, v in recipe.to_dict().items()
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
