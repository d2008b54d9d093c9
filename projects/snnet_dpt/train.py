#!/usr/bin/env python
"""Train, evaluate and export SN-Netv2 + DPT for NYUv2 depth (paper Section 5.3).

The recipe is a detectron2 LazyConfig file (default: the paper's, ``configs/dpt_snnetv2_deit3_s_l_nyu.py``);
``key=value`` arguments override its entries, as in detectron2:

    python projects/snnet_dpt/train.py --stitch all            # the paper recipe on data/nyu
    torchrun --nproc_per_node 4 projects/snnet_dpt/train.py train.output_dir=output/dpt_s_l
    python projects/snnet_dpt/train.py --config-file projects/snnet_dpt/configs/synthetic/dpt_snnetv2_tiny.py

After training (or with ``--eval-only``) the stitches chosen by ``--stitch`` are evaluated into a per-stitch
report (``test.eval_dir``, default ``<train.output_dir>/stitch_eval``), in groups of ``test.stitch_group_size``
stitches that each take one pass over the test set with their route prefixes shared (``test.share_prefixes=false``:
stitch by stitch; the numbers are the same); ``--measure-latency`` (with ``--latency-batch N``,
``--latency-size H W``, ``--latency-amp``) adds each stitch's latency as deployed, on this device, to that report
(``python -m snnet_core.select REPORT --max-latency-ms MS``); ``--export-stitch ID`` writes a
standalone DPT model of one stitch. The resolved config of a training run is saved as
``<train.output_dir>/config.yaml``.

Everything that can be checked without compute is checked before anything is written: settings, data files
and values, the output directory (a run there is continued with ``--resume`` or replaced with ``--overwrite``,
never mixed into), the checkpoint of ``--resume``/``--eval-only`` and the report directory. A per-stitch report
is keyed by the checkpoint's bytes (SHA-256) and every setting that changes a metric (``report_key``); rows of
another model or setting are never merged into it.
"""
from __future__ import annotations

import os
import sys

# run as a script, the repository's packages (snnet_core, projects, datasets) are imported from the
# checkout: only snnet_core is installed, so that `projects`/`datasets` shadow nothing elsewhere
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import argparse
import glob
import json
import logging
import math
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
import yaml
from detectron2.config import LazyConfig
from omegaconf import OmegaConf
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from projects.snnet_dpt.distributed import DistContext, barrier, broadcast_object, cleanup, init_distributed
from projects.snnet_dpt.engine import (
    CHECKPOINT_NAME, TASK, TrainRecipe, build_optimizer, build_scheduler, check_resumable, epoch_seed,
    evaluate_stitch_report, file_sha256, load_checkpoint, param_checksum, read_checkpoint_header, report_conflict,
    save_checkpoint, train_one_epoch, truncate_log, wrap_ddp,
)
from projects.snnet_dpt.export import save_exported_stitch
from projects.snnet_dpt.loss import SILogLoss
from projects.snnet_dpt.metrics import HIGHER_IS_BETTER, METRIC_NAMES, eigen_crop_box
from projects.snnet_dpt.model import DPTDepthModel, ModelSpec, build_model, check_anchor_names, depth_flops_table
from projects.snnet_dpt.nyu import build_nyu_split, check_depth_values, shared_frames
from projects.snnet_dpt.transforms import DepthDataset, TrainAugmentation
from snnet_core import ResourceConstrainedSampler, load_results, ls_init_stitching_layers, select_stitches
from snnet_core.atomic_io import remove_stale_temporaries, write_atomic
from snnet_core.latency import write_latency_info
from snnet_core.latency_options import LatencyOptions, add_latency_arguments, latency_options
from snnet_core.report import RESULTS_FILE

logger = logging.getLogger("snnet_dpt")

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "dpt_snnetv2_deit3_s_l_nyu.py")
CONFIG_NAME = "config.yaml"
LOG_PATTERN = "train_log.rank{}.jsonl"
EVAL_DIR_NAME = "stitch_eval"  # default test.eval_dir under train.output_dir
# what a run leaves in train.output_dir (--overwrite deletes exactly these)
RUN_FILES = (CHECKPOINT_NAME, CONFIG_NAME, LOG_PATTERN.format("*"), "stitch_*_dpt.pth",
             os.path.join(EVAL_DIR_NAME, RESULTS_FILE), os.path.join(EVAL_DIR_NAME, "stitch_report.*"))
_ABSENT = object()


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", default=DEFAULT_CONFIG, metavar="FILE",
                   help="LazyConfig recipe (default: the paper's, configs/dpt_snnetv2_deit3_s_l_nyu.py)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--eval-only", action="store_true",
                      help="evaluate (and export) the checkpoint train.checkpoint (default <output_dir>/"
                           f"{CHECKPOINT_NAME}); model.pretrained is not read")
    mode.add_argument("--resume", action="store_true",
                      help="continue training from train.checkpoint (refused if the model or recipe changed)")
    mode.add_argument("--overwrite", action="store_true",
                      help="train afresh into a train.output_dir that holds a run, deleting that run's checkpoint, "
                           f"logs, {CONFIG_NAME}, exported stitches and {EVAL_DIR_NAME}/ report first")
    p.add_argument("--stitch", default="all", help="stitches to evaluate: all | ID[,ID...] | pareto | none")
    p.add_argument("--export-stitch", type=int, metavar="ID", help="write <output_dir>/stitch_<ID>_dpt.pth")
    add_latency_arguments(p)
    p.add_argument("opts", nargs=argparse.REMAINDER, metavar="KEY=VALUE",
                   help="config overrides, e.g. train.output_dir=output/x optimizer.lr=1e-5")
    return p.parse_args(argv)


def load_config(path: str, overrides: Sequence[str]) -> Dict[str, Any]:
    """The config file with ``key=value`` overrides applied, as plain Python containers.

    Unlike detectron2's ``apply_overrides`` (which adds a key it does not know), an override of a key the
    file does not hold is an error: a typo would otherwise silently train the default recipe.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file {path!r} does not exist (see projects/snnet_dpt/configs/)")
    cfg = LazyConfig.load(path)
    for item in overrides:
        if item.startswith("--"):
            raise ValueError(f"{item!r} comes after a KEY=VALUE override: put the flags before the overrides")
        key = item.split("=", 1)[0].lstrip("+~")
        if "=" not in item or OmegaConf.select(cfg, key, default=_ABSENT) is _ABSENT:
            raise KeyError(f"override {item!r}: {path} has no key {key!r} (use KEY=VALUE with a key of the file, "
                           f"e.g. train.output_dir=...; sections: {', '.join(cfg.keys())})")
    cfg = LazyConfig.apply_overrides(cfg, list(overrides))
    return OmegaConf.to_container(cfg, resolve=True)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_count(value: Any, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def check_settings(cfg: Dict[str, Any], training: bool) -> None:
    """Refuse values that would run but train or evaluate something else than asked (a zero, negative or NaN
    learning rate, no epoch, ``test.max_images=0``), before anything is read or computed."""
    rules = [("test.max_images", lambda v: v is None or _is_count(v, 1),
              "None (every test frame) or a number of frames >= 1"),
             ("test.batch_size", lambda v: _is_count(v, 1), "an integer >= 1"),
             ("test.share_prefixes", lambda v: isinstance(v, bool), "true or false"),
             ("test.stitch_group_size", lambda v: _is_count(v, 1), "an integer >= 1 (stitches per data pass)")]
    if training:
        rules += [("optimizer.lr", lambda v: _is_number(v) and v > 0, "a finite number > 0"),
                  ("optimizer.weight_decay", lambda v: _is_number(v) and v >= 0, "a finite number >= 0"),
                  ("optimizer.clip_grad", lambda v: _is_number(v) and v >= 0, "a finite number >= 0 (0: off)"),
                  ("train.epochs", lambda v: _is_count(v, 1), "an integer >= 1"),
                  ("train.batch_size", lambda v: _is_count(v, 1), "an integer >= 1"),
                  ("train.ls_init_images", lambda v: _is_count(v, 0), "an integer >= 0 (0: no LS init)"),
                  ("train.loss_warmup_iters", lambda v: _is_count(v, 0), "an integer >= 0"),
                  ("train.flops_step", lambda v: _is_number(v) and v > 0, "a finite number of GFLOPs > 0")]
    for key, valid, expected in rules:
        section, name = key.split(".")
        value = cfg[section][name]
        if not valid(value):
            raise ValueError(f"{key}={value!r} is not valid: expected {expected}")


def model_spec(cfg: Dict[str, Any]) -> ModelSpec:
    """The ``ModelSpec`` of ``cfg["model"]`` (all its keys but ``pretrained``), its anchors checked."""
    check_anchor_names(cfg["model"]["anchors"])
    return ModelSpec.from_dict({k: v for k, v in cfg["model"].items() if k != "pretrained"})


def recipe_from_config(cfg: Dict[str, Any], world_size: int = 1) -> TrainRecipe:
    """The ``TrainRecipe`` of a resolved config for a run on ``world_size`` processes."""
    train, opt, sched = cfg["train"], cfg["optimizer"], cfg["lr_schedule"]
    if train["batch_size"] % world_size:
        raise ValueError(f"train.batch_size={train['batch_size']} (total) is not divisible by the {world_size} "
                         "processes")
    return TrainRecipe(
        epochs=train["epochs"], batch_size=train["batch_size"], lr=opt["lr"], betas=tuple(opt["betas"]),
        eps=opt["eps"], weight_decay=opt["weight_decay"], param_rules=opt["param_rules"],
        clip_grad=opt["clip_grad"], flops_step=train["flops_step"], warmup_iters=train["loss_warmup_iters"],
        ls_init_images=train["ls_init_images"], amp=train["amp"], seed=train["seed"],
        augmentation=cfg["dataloader"]["augmentation"], world_size=world_size, **sched,
    )


def setup_logging(ctx: DistContext) -> None:
    logging.basicConfig(level=logging.INFO if ctx.is_main else logging.WARNING,
                        format=f"[%(asctime)s rank{ctx.rank}] %(name)s: %(message)s", datefmt="%H:%M:%S")


def save_config(cfg: Dict[str, Any], output_dir: str) -> None:
    """``<output_dir>/config.yaml``: the resolved recipe of the run (loadable with ``--config-file``)."""
    write_atomic(os.path.join(output_dir, CONFIG_NAME), lambda f: yaml.safe_dump(cfg, f, sort_keys=False))


# --------------------------------------------------------------------------------------------------
def nyu_frames(cfg: Dict[str, Any], split: str):
    data = cfg["dataloader"]
    return build_nyu_split(data["layout"], data["root"], split, data[f"{split}_list"], data["depth_source"])


def previous_run_files(output_dir: str) -> List[str]:
    """The files of a run already in ``output_dir`` (``RUN_FILES``)."""
    return sorted(path for pattern in RUN_FILES for path in glob.glob(os.path.join(glob.escape(output_dir), pattern)))


def check_output_dir(output_dir: str, args: argparse.Namespace, checkpoint: str) -> List[str]:
    """Refuse to train into a directory that holds a run unless ``--resume`` or ``--overwrite`` says what to do
    with it; returns the files ``--overwrite`` replaces."""
    found = previous_run_files(output_dir)
    if found and not (args.resume or args.overwrite):
        shown = ", ".join(os.path.relpath(p, output_dir) for p in found[:6]) + (", ..." if len(found) > 6 else "")
        raise FileExistsError(f"train.output_dir={output_dir!r} already holds a run ({shown}): pass --resume to "
                              "continue it, --overwrite to replace it (deletes those files), or choose another "
                              "train.output_dir")
    if args.resume and not os.path.isfile(checkpoint):
        raise FileNotFoundError(f"--resume: checkpoint {checkpoint!r} does not exist (a run stopped before its first "
                                "epoch ended has none): start afresh with --overwrite, or set train.checkpoint")
    return found if args.overwrite else []


def check_report_dir(eval_dir: str, replaced: Sequence[str], header: Optional[Dict[str, Any]],
                     recipe: TrainRecipe) -> None:
    """A training run may evaluate into ``eval_dir`` only if the report there (if any) will be its own: that of
    the resumed checkpoint when no epoch is left to train (the checkpoint then stays as it is)."""
    results = os.path.abspath(os.path.join(eval_dir, RESULTS_FILE))
    finished = header is not None and header["epoch"] >= recipe.epochs
    if os.path.isfile(results) and results not in {os.path.abspath(p) for p in replaced} and not finished:
        raise FileExistsError(f"{results} holds the per-stitch report of another model, and this run trains a new "
                              "one: set test.eval_dir to a new directory, move that report away, or pass "
                              "--stitch none (then evaluate with --eval-only)")


def check_splits(train_frames, test_frames) -> None:
    """Refuse a test split that shares frames with the training split (its metrics would measure memory)."""
    shared = shared_frames(train_frames, test_frames)
    if shared:
        raise ValueError(f"{len(shared)} of the {len(test_frames)} test frames are training frames too (e.g. "
                         f"{shared[0]}): the training split {train_frames.source} and the test split "
                         f"{test_frames.source} overlap. Use the official disjoint splits (datasets/prepare_nyu.md)")


def report_key(checkpoint: str, cfg: Dict[str, Any], test_frames, amp: bool,
               latency: Optional[LatencyOptions] = None) -> str:
    """Identity of a per-stitch report: the checkpoint's bytes and every setting that changes a metric (test
    frames and ground truth, number of images, evaluation size, Eigen crop, flip, fp16), and with ``latency``
    how the stitches are timed (device, batch, size, AMP, runs)."""
    data, test = cfg["dataloader"], cfg["test"]
    height, width = data["eval_size"]
    parts = {
        "weights": "sha256:" + file_sha256(checkpoint)[:16], "test_set": test_frames.source,
        "images": min(len(test_frames), test["max_images"] or len(test_frames)), "eval_size": f"{height}x{width}",
        "eigen_crop": ",".join(map(str, eigen_crop_box(height, width))), "flip": test["flip"], "amp": amp,
    }
    if latency is not None:
        parts["latency"] = json.dumps(latency.info(), sort_keys=True)
    return "|".join(f"{k}={v}" for k, v in parts.items())


def check_test_frames(frames, cfg: Dict[str, Any]) -> None:
    size, eval_size = tuple(frames.read(0)[1].shape), tuple(cfg["dataloader"]["eval_size"])
    if size != eval_size:
        raise ValueError(f"test frames are {size[0]}x{size[1]} but dataloader.eval_size is "
                         f"{eval_size[0]}x{eval_size[1]}")


def build_test_loader(frames, cfg: Dict[str, Any], ctx: DistContext) -> DataLoader:
    """The test frames ``evaluate_stitch_report`` needs on this rank: every frame for the grouped evaluation
    (``test.share_prefixes``: ranks split the stitch groups), else this rank's shard (every ``world_size``-th
    frame, no padding)."""
    dataset = DepthDataset(frames)
    count = min(len(dataset), cfg["test"]["max_images"] or len(dataset))
    rank, step = (0, 1) if cfg["test"]["share_prefixes"] else (ctx.rank, ctx.world_size)
    shard = Subset(dataset, list(range(rank, count, step)))
    return DataLoader(shard, cfg["test"]["batch_size"], shuffle=False, num_workers=cfg["dataloader"]["workers"],
                      pin_memory=ctx.device.type == "cuda")


def ls_init(model: DPTDepthModel, train_set: Dataset, recipe: TrainRecipe, workers: int, ctx: DistContext) -> None:
    """LS init of every stitching layer from ``recipe.ls_init_images`` training frames drawn at random (seeded),
    as the training loader gives them (border crop, augmentation, random crop), as upstream does."""
    count = min(recipe.ls_init_images, len(train_set))
    chosen = np.random.default_rng([recipe.seed, count]).choice(len(train_set), count, replace=False)
    loader = DataLoader(Subset(train_set, sorted(chosen.tolist())), batch_size=recipe.batch_size // ctx.world_size,
                        shuffle=False, num_workers=workers)
    errors = ls_init_stitching_layers(model.backbone, (images.to(ctx.device) for images, _ in loader),
                                      num_images=count)
    logger.info("LS init on %d training frames: mean squared error per stitching layer %s", count,
                {k: round(v, 5) for k, v in sorted(errors.items())})


def train(model: DPTDepthModel, spec: ModelSpec, cfg: Dict[str, Any], recipe: TrainRecipe, frames, ctx: DistContext,
          flops, resume_path: Optional[str]) -> Dict[str, Any]:
    """Train (or continue training) and return ``{"checkpoint", "iteration"}`` of the last checkpoint."""
    output_dir, workers = cfg["train"]["output_dir"], cfg["dataloader"]["workers"]
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
    scheduler = build_scheduler(optimizer, recipe, recipe.epochs * len(loader))
    scaler = torch.amp.GradScaler(ctx.device.type, enabled=amp)
    sampler = ResourceConstrainedSampler(flops.gflops, recipe.flops_step, recipe.seed)
    logger.info("ROS: %d stitches in %d FLOPs bins of %g GFLOPs; optimizer groups %s", len(flops.gflops),
                len(sampler.bins), recipe.flops_step,
                {g["name"]: (len(g["params"]), g["lr"], g["weight_decay"]) for g in optimizer.param_groups})
    start_epoch, iteration = 0, 0
    log_path = os.path.join(output_dir, LOG_PATTERN.format(ctx.rank))
    remove_stale_temporaries(log_path)
    if resume_path:
        state = load_checkpoint(resume_path, model, ctx.device)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        sampler.load_state_dict(state["sampler"])
        start_epoch, iteration = int(state["epoch"]), int(state["iteration"])
        dropped = truncate_log(log_path, start_epoch)
        logger.info("resumed from %s after epoch %d (iteration %d)%s", resume_path, start_epoch, iteration,
                    f"; dropped {dropped} log lines written after it" if dropped else "")
    elif recipe.ls_init_images > 0 and ctx.is_main:  # DDP then broadcasts rank 0's weights
        ls_init(model, train_set, recipe, workers, ctx)
    ddp_model = wrap_ddp(model, ctx)
    loss_fn = SILogLoss(warmup_iters=recipe.warmup_iters)
    checkpoint = os.path.join(output_dir, CHECKPOINT_NAME)
    for epoch in range(start_epoch, recipe.epochs):
        data_sampler.set_epoch(epoch)
        train_set.set_epoch(epoch)
        torch.manual_seed(epoch_seed(recipe.seed, epoch, ctx.rank))
        stats = train_one_epoch(model, ddp_model, loader, optimizer, scheduler, scaler, sampler, loss_fn, recipe,
                                ctx, epoch, iteration, log_path, amp)
        iteration = stats["iteration"]
        with open(log_path, "a") as log:
            log.write(json.dumps({"epoch": epoch, "iter": iteration, "event": "epoch_end",
                                  "mean_loss": stats["mean_loss"], "param_checksum": param_checksum(model)}) + "\n")
        logger.info("epoch %d/%d: mean loss %.4f (iteration %d)", epoch + 1, recipe.epochs, stats["mean_loss"],
                    iteration)
        if ctx.is_main:
            save_checkpoint(checkpoint, model, spec, recipe, optimizer, scheduler, scaler, sampler, epoch + 1,
                            iteration)
        barrier(ctx)
    return {"checkpoint": checkpoint, "iteration": iteration}


def start_run_dir(cfg: Dict[str, Any], output_dir: str, replaced: Sequence[str]) -> None:
    """Rank 0, once every check has passed: delete what ``--overwrite`` replaces and the temporaries of killed
    writes of this run, then write ``config.yaml``."""
    for path in replaced:
        os.remove(path)
    if replaced:
        logger.warning("--overwrite: deleted the previous run's %s", ", ".join(replaced))
    for path in (os.path.join(output_dir, CHECKPOINT_NAME), os.path.join(output_dir, CONFIG_NAME)):
        for tmp in remove_stale_temporaries(path):
            logger.info("removed %s, left by a write that was killed", tmp)
    save_config(cfg, output_dir)


def _file_identity(path: str) -> tuple:
    """(inode, size, mtime) of a file: an atomic rewrite (a new inode) changes it."""
    st = os.stat(path)
    return st.st_ino, st.st_size, st.st_mtime_ns


def run(cfg: Dict[str, Any], args: argparse.Namespace, ctx: DistContext) -> Dict[str, Any]:
    output_dir, test_cfg = cfg["train"]["output_dir"], cfg["test"]
    eval_dir = test_cfg["eval_dir"] or os.path.join(output_dir, EVAL_DIR_NAME)
    training = not args.eval_only
    checkpoint = cfg["train"]["checkpoint"] or os.path.join(output_dir, CHECKPOINT_NAME)
    resume_path = checkpoint if training and args.resume else None
    fresh = training and not resume_path
    amp = ctx.device.type == "cuda" and cfg["train"]["amp"]
    # everything that can be checked without compute is checked first: settings, output directory, checkpoint,
    # data files and values, report directory
    check_settings(cfg, training)
    latency = latency_options(args, ctx.device, None, cfg["dataloader"]["eval_size"], cfg["train"]["amp"])
    if latency is not None and args.stitch == "none":
        raise ValueError("--measure-latency times the stitches of the per-stitch report: give --stitch "
                         "all|pareto|ID[,ID...], not none")
    if test_cfg["primary_metric"] not in METRIC_NAMES:
        raise ValueError(f"test.primary_metric={test_cfg['primary_metric']!r}: choose one of {METRIC_NAMES}")
    recipe = recipe_from_config(cfg, ctx.world_size) if training else None
    replaced = check_output_dir(output_dir, args, checkpoint) if training else []
    header = None if fresh else read_checkpoint_header(checkpoint)
    spec = model_spec(cfg) if training else header["spec"]
    if resume_path:
        check_resumable(header, spec, recipe)
    train_frames = nyu_frames(cfg, "train") if training else None
    test_frames = nyu_frames(cfg, "test") if args.stitch != "none" else None
    for frames in (train_frames, test_frames):
        if frames is not None:
            check_depth_values(frames, spec.max_depth)
    run_key = None
    if test_frames is not None:
        check_test_frames(test_frames, cfg)
        if training:
            check_splits(train_frames, test_frames)
            check_report_dir(eval_dir, replaced, header, recipe)
        else:
            checkpoint_id = _file_identity(checkpoint)
            run_key = broadcast_object(ctx, report_key(checkpoint, cfg, test_frames, amp, latency)
                                       if ctx.is_main else None)
            conflict = report_conflict(eval_dir, run_key) if ctx.is_main else None
            if conflict:
                raise RuntimeError(conflict)
    torch.manual_seed(cfg["train"]["seed"])
    pretrained = cfg["model"]["pretrained"]
    model = build_model(spec, pretrained if fresh else (None, None)).to(ctx.device)
    if latency is not None:  # before any training: a --latency-size the model cannot take fails now
        latency.check_size(model.patch_size)
    if fresh and not all(pretrained):
        logger.warning("model.pretrained holds no checkpoint for some anchor: it starts from random weights")
    missing = [path for path in pretrained if path and not os.path.isfile(path)]
    if not fresh and missing:
        logger.warning("model.pretrained %s does not exist; it is not read: with --%s every weight comes from %s",
                       missing, "resume" if training else "eval-only", checkpoint)
    space = model.backbone.space
    stitch_ids: List[int] = []
    if test_frames is not None:  # resolved up front: a bad selection fails before training
        pareto_source = test_cfg["pareto_source"] or os.path.join(eval_dir, RESULTS_FILE)
        stitch_ids = select_stitches(args.stitch, space, pareto_source=pareto_source, task=TASK,
                                     metric=test_cfg["primary_metric"],
                                     higher_is_better=test_cfg["primary_metric"] in HIGHER_IS_BETTER)
    if args.export_stitch is not None:
        space[args.export_stitch]  # raises a KeyError naming the valid ids before any training
    barrier(ctx)  # every rank has looked at the directories before rank 0 writes into them
    os.makedirs(output_dir, exist_ok=True)
    if training and ctx.is_main:
        start_run_dir(cfg, output_dir, replaced)
    eval_size = tuple(cfg["dataloader"]["eval_size"])
    if ctx.is_main:  # rank 0 counts (and caches) the FLOPs table, the others read the cache
        flops = depth_flops_table(model, eval_size, cache_dir=output_dir)
    barrier(ctx)
    if not ctx.is_main:
        flops = depth_flops_table(model, eval_size, cache_dir=output_dir)
    logger.info("%d stitches, %.4g-%.4g GFLOPs at %dx%d (DPT head %.4g GFLOPs)", len(space), min(flops.gflops.values()),
                max(flops.gflops.values()), *eval_size, flops.head_gflops)
    if training:
        result = train(model, spec, cfg, recipe, train_frames, ctx, flops, resume_path)
        if stitch_ids:
            run_key = broadcast_object(ctx, report_key(result["checkpoint"], cfg, test_frames, amp, latency)
                                       if ctx.is_main else None)
    else:
        state = load_checkpoint(checkpoint, model, ctx.device)
        if test_frames is not None and _file_identity(checkpoint) != checkpoint_id:
            raise RuntimeError(f"{checkpoint!r} was replaced while it was read (a training run writing it?): "
                               "evaluate a copy of it")
        result = {"checkpoint": checkpoint, "iteration": int(state["iteration"])}
    if stitch_ids:
        group_size = test_cfg["stitch_group_size"] if test_cfg["share_prefixes"] else None
        result["report"] = evaluate_stitch_report(model, build_test_loader(test_frames, cfg, ctx), stitch_ids, flops,
                                                  eval_dir, run_key, ctx, test_cfg["primary_metric"],
                                                  test_cfg["flip"], amp, group_size, latency)
        if latency is not None and ctx.is_main:
            write_latency_info(eval_dir, latency.info())
            result["report"] = load_results(eval_dir)
    if args.export_stitch is not None and ctx.is_main:
        path = os.path.join(output_dir, f"stitch_{args.export_stitch}_dpt.pth")
        save_exported_stitch(path, model, spec, args.export_stitch)
        logger.info("exported stitch %d (%s) to %s", args.export_stitch, space[args.export_stitch].route, path)
        result["export"] = path
    return result


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    args = parse_args(argv)
    cfg = load_config(args.config_file, args.opts)
    ctx = init_distributed(cfg["train"]["device"])
    setup_logging(ctx)
    try:
        return run(cfg, args, ctx)
    finally:
        cleanup(ctx)


if __name__ == "__main__":
    main()
