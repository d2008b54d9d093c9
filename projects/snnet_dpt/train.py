#!/usr/bin/env python
"""Train, evaluate and export SN-Netv2 + DPT for NYUv2 depth (paper Section 5.3), with the flags and output layout
of detectron2 and of ``projects/snnet_vitdet/train_net.py``.

The recipe is a detectron2 LazyConfig file (default: the paper's, ``configs/dpt_snnetv2_deit3_s_l_nyu.py``);
``key=value`` arguments after the flags override its entries:

    python projects/snnet_dpt/train.py --stitch all            # the paper recipe on data/nyu
    python projects/snnet_dpt/train.py --num-gpus 4 train.output_dir=output/dpt_s_l     # as detectron2 (launch)
    torchrun --nproc_per_node 4 projects/snnet_dpt/train.py train.output_dir=output/dpt_s_l  # the same, torchrun
    python projects/snnet_dpt/train.py --config-file projects/snnet_dpt/configs/synthetic/dpt_snnetv2_tiny.py
    python projects/snnet_dpt/train.py --config-file ... --eval-only --stitch all --export-stitch best:0.3

A training run writes into ``train.output_dir`` (``snnet_core.io.run_dir`` describes the layout): ``config.yaml``,
``log.txt`` (detectron2's logger: the console lines and more), ``metrics.json`` and a TensorBoard event file
(``total_loss``, one ``route_loss/<route type or anchor>`` curve each, ``lr``, per epoch ``epoch/mean_silog``),
``model_<iteration>.pth`` after each epoch (the newest ``train.max_to_keep``), ``model_final.pth`` and
``last_checkpoint`` naming the newest; ``--resume`` continues from it, ``--overwrite`` replaces the run.

After training, or with ``--eval-only`` (the checkpoint ``train.init_checkpoint``, default the one
``last_checkpoint`` names, at the ``dataloader.eval_size`` recorded in it), the stitches chosen by ``--stitch`` are
evaluated into a per-stitch report (``--report-dir``, default ``<train.output_dir>/stitch_report_<dataloader.
test_name>``), in groups of ``test.stitch_group_size`` stitches that each take one pass over the test set with their
route prefixes shared (``test.share_prefixes=false``: stitch by stitch; the numbers are the same).
``--stitch pareto`` evaluates the Pareto frontier of ``--pareto-from`` (default: the report directory's results).
``--measure-latency`` (with ``--latency-batch N``, ``--latency-size H W``, ``--latency-amp``) adds each stitch's
latency as deployed, on this device, to that report (``python -m snnet_core.select REPORT --max-latency-ms MS``);
``--export-stitch ID[,ID]|pareto|best:G`` writes standalone DPT models ``<train.output_dir>/stitch_<ID>/
model_final.pth`` (``pareto`` and ``best:G`` choose from the report).

Everything that can be checked without compute is checked before anything is written: settings, data files
and values, the output directory (a run there is continued with ``--resume`` or replaced with ``--overwrite``,
never mixed into), the checkpoint of ``--resume``/``--eval-only`` and the report directory. A per-stitch report
is keyed by the checkpoint's bytes (SHA-256) and every setting that changes a metric (``report_key``); rows of
another model or setting are never merged into it.
"""
from __future__ import annotations

import os
import sys
import warnings

# run as a script, the repository's packages (snnet_core, projects, datasets) are imported from the
# checkout: only snnet_core is installed, so that `projects`/`datasets` shadow nothing elsewhere
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated", category=FutureWarning)  # fvcore

import argparse
import dataclasses
import json
import logging
from typing import Any, Callable, Dict, List, Optional, Sequence

import timm
import torch
import yaml
from omegaconf import OmegaConf
from torch.utils.data import DataLoader, Subset

from projects.snnet_dpt.console import run_logging
from projects.snnet_dpt.evaluation import TASK, evaluate_stitch_report, report_conflict
from projects.snnet_dpt.export import save_exported_stitch
from projects.snnet_dpt.metrics import HIGHER_IS_BETTER, METRIC_NAMES, eigen_crop_box
from projects.snnet_dpt.model import ModelSpec, build_model, check_anchor_names, depth_flops_table
from projects.snnet_dpt.nyu import build_nyu_split, check_depth_values, shared_frames
from projects.snnet_dpt.training import (
    TrainRecipe, check_resumable, load_checkpoint, read_checkpoint_header, train,
)
from projects.snnet_dpt.transforms import DepthDataset
from snnet_core import load_results, select_stitches
from snnet_core.io.atomic_io import file_sha256, write_atomic
from snnet_core.io.config_io import (
    Check, apply_overrides, check_config_kind, check_values, input_size_problem, integer, load_config_file,
    local_checkpoint, lookup, number, one_of, pair,
)
from snnet_core.cli import run_command
from snnet_core.distributed import DistContext, barrier, broadcast_object
from snnet_core.evaluation.latency import write_latency_info
from snnet_core.evaluation.latency_options import LatencyOptions, latency_options
from snnet_core.evaluation.report import RESULTS_FILE
from snnet_core.io.run_dir import (
    LAST_CHECKPOINT, check_export_targets, clear_run, command_line_sets, eval_size_for_checkpoint,
    remove_killed_writes,
)
from snnet_core.model.stitch_space import evaluated_route_types, route_types_check
from snnet_core.select import export_reads_report, resolve_export_selection
from snnet_core.training.sampling import SAMPLINGS
from snnet_core.train_script import (
    check_eval_only_flags, export_stitches, launch_job, run_checkpoint, training_argument_parser,
)
from snnet_core.train_script import run_process as run_training_process

logger = logging.getLogger("projects.snnet_dpt.train")

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "dpt_snnetv2_deit3_s_l_nyu.py")
CONFIG_NAME = "config.yaml"
SECTIONS = ("model", "dataloader", "optimizer", "lr_schedule", "train", "test")


def build_argument_parser() -> argparse.ArgumentParser:
    """The projects' training command line (``snnet_core.train_script.training_argument_parser``: detectron2's
    ``default_argument_parser`` with the per-stitch flags, as ``projects/snnet_vitdet/train_net.py`` builds it);
    ``--config-file`` defaults to the paper's recipe."""
    return training_argument_parser(DEFAULT_CONFIG, {  # detectron2's help of its flags, in this project's terms
        "config_file": "LazyConfig recipe (default: the paper's, configs/dpt_snnetv2_deit3_s_l_nyu.py)",
        "resume": f"continue training from the checkpoint <train.output_dir>/{LAST_CHECKPOINT} names (refused if "
                  "the model or recipe changed)",
        "eval_only": "evaluate (and export) the checkpoint train.init_checkpoint (default: the one "
                     f"<train.output_dir>/{LAST_CHECKPOINT} names) at the dataloader.eval_size recorded in it",
        "opts": "config overrides, e.g. train.output_dir=output/x optimizer.lr=1e-5 (an unknown key is an error)",
    }, "write <train.output_dir>/stitch_<ID>/model_final.pth, a standalone DPT model of that stitch (pareto / best:G "
       "choose from the per-stitch report)", __doc__)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    return check_eval_only_flags(build_argument_parser().parse_args(argv))


def load_config(path: str, overrides: Sequence[str]) -> Dict[str, Any]:
    """The config file (``snnet_core.io.config_io.load_config_file``: a YAML file is read as data) with ``key=value``
    overrides applied, as plain Python containers. A detection config, or an override of a key the file does
    not hold (named with the closest keys), is an error."""
    cfg = load_config_file(path)
    check_config_kind(cfg, path, "depth", SECTIONS)
    return OmegaConf.to_container(apply_overrides(cfg, overrides, path), resolve=True)


def _anchor_patch_size(cfg: Dict[str, Any]) -> Optional[int]:
    """The patch size of the slow anchor (built on the meta device: no memory); ``None`` if it cannot be built
    (``model_spec`` then names the problem)."""
    try:
        overrides = dict(cfg["model"]["anchor_overrides"][1])
        with torch.device("meta"):
            return int(timm.create_model(cfg["model"]["anchors"][1], pretrained=False, **overrides)
                       .patch_embed.patch_size[0])
    except Exception:
        return None


def _checkpoint_problems(cfg: Dict[str, Any]) -> List[str]:
    """Remote checkpoints (``model.pretrained``, ``train.init_checkpoint``) not in the download cache; a cached one
    is replaced by its local file."""
    problems = []
    paths = [(f"model.pretrained.{i}", cfg["model"], "pretrained", i) for i in range(len(cfg["model"]["pretrained"]))]
    for key, holder, name, index in paths + [("train.init_checkpoint", cfg["train"], "init_checkpoint", None)]:
        value = holder[name] if index is None else holder[name][index]
        if not value:
            continue
        try:
            local = local_checkpoint(value, key)
        except FileNotFoundError as exc:
            problems.append(str(exc))
            continue
        if index is None:
            holder[name] = local
        else:
            holder[name] = [local if i == index else v for i, v in enumerate(holder[name])]
    return problems


def check_settings(cfg: Dict[str, Any], training: bool, source: str = "the config") -> None:
    """Refuse values that would fail later or train or evaluate something else than asked (a zero, negative or
    NaN learning rate, no epoch, ``test.max_images=0``, a size that is not a multiple of the patch size, a
    remote checkpoint), before anything is read or computed: one ``ConfigError`` lists every problem."""
    name_ok = Check(lambda v: isinstance(v, str) and v.strip(".") != "" and "/" not in v,
                    "a name without '/' (it names the report directory stitch_report_<test_name>)")
    probability, factor = number(0, 1), number(0, low_open=True)
    checks = {
        "model.lora_rank": integer(0, note="0: fully trainable stitching layers"),
        "model.lora_alpha": number(0, low_open=True),
        "model.backbone_lora_rank": integer(0, note="0: off, the anchors train in full"),
        "model.route_types": route_types_check(),
        "model.features": integer(1), "model.min_depth": number(0, low_open=True),
        "model.max_depth": Check(lambda v: number().valid(v) and v > cfg["model"]["min_depth"],
                                 f"a finite number > model.min_depth ({cfg['model']['min_depth']!r})"),
        "model.post_process_channels": Check(lambda v: len(v) == 4 and all(integer(1).valid(c) for c in v),
                                             "four integers >= 1"),
        "model.out_indices": Check(lambda v: v is None or (len(v) == 4 and all(integer(0).valid(i) for i in v)),
                                   "None (the default blocks) or four block indices >= 0"),
        "model.drop_path": pair(number(0, 1, high_open=True)),
        "dataloader.workers": integer(0), "dataloader.test_name": name_ok,
        "dataloader.augmentation.rotate_prob": probability, "dataloader.augmentation.flip_prob": probability,
        "dataloader.augmentation.color_prob": probability, "dataloader.augmentation.rotate_degrees": number(0),
        "dataloader.augmentation.gamma": pair(factor, ordered=True),
        "dataloader.augmentation.brightness": pair(factor, ordered=True),
        "dataloader.augmentation.colour": pair(factor, ordered=True),
        "test.max_images": Check(lambda v: v is None or integer(1).valid(v),
                                 "None (every test frame) or a number of frames >= 1"),
        "test.batch_size": integer(1), "test.share_prefixes": one_of(True, False),
        "test.stitch_group_size": integer(1, note="stitches per data pass"), "test.flip": one_of(True, False),
        "test.primary_metric": one_of(*METRIC_NAMES),
    }
    if training:
        checks.update({
            "optimizer.lr": number(0, low_open=True), "optimizer.weight_decay": number(0),
            "optimizer.clip_grad": number(0, note="0: off"), "optimizer.eps": number(0, low_open=True),
            "optimizer.betas": pair(number(0, 1, high_open=True)),
            "lr_schedule.pct_start": number(0, 1, low_open=True, high_open=True),
            "lr_schedule.div_factor": number(0, low_open=True), "lr_schedule.final_div_factor": number(0, low_open=True),
            "lr_schedule.base_momentum": number(0, 1, high_open=True),
            "lr_schedule.max_momentum": Check(lambda v: number().valid(v) and cfg["lr_schedule"]["base_momentum"] <= v < 1,
                                              "a number in [lr_schedule.base_momentum, 1)"),
            "train.epochs": integer(1), "train.batch_size": integer(1),
            "train.ls_init_images": integer(0, note="0: no LS init, default init"), "train.loss_warmup_iters": integer(0),
            "train.flops_step": number(0, low_open=True, note="GFLOPs"), "train.seed": integer(0),
            "train.sampling": one_of(*SAMPLINGS),
            "train.log_period": integer(1, note="iterations between log lines"),
            "train.max_to_keep": integer(1, note="periodic checkpoints kept"), "train.amp": one_of(True, False),
            "train.init_checkpoint": Check(lambda v: not v, "empty: it names the checkpoint --eval-only evaluates; "
                                           "training starts from model.pretrained, --resume continues from "
                                           f"<train.output_dir>/{LAST_CHECKPOINT}"),
        })
    sizes = ["dataloader.eval_size"] + (["dataloader.augmentation.crop_size"] if training else [])
    patch = _anchor_patch_size(cfg)
    more = [input_size_problem(key, lookup(cfg, key), patch) for key in sizes] if patch else []
    check_values(cfg, checks, source, more=more + _checkpoint_problems(cfg))


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
        clip_grad=opt["clip_grad"], flops_step=train["flops_step"], sampling=train["sampling"], warmup_iters=train["loss_warmup_iters"],
        ls_init_images=train["ls_init_images"], amp=train["amp"], seed=train["seed"],
        augmentation=cfg["dataloader"]["augmentation"], world_size=world_size, **sched,
    )


def save_config(cfg: Dict[str, Any], output_dir: str) -> None:
    """``<output_dir>/config.yaml``: the resolved recipe of the run (loadable with ``--config-file``)."""
    write_atomic(os.path.join(output_dir, CONFIG_NAME), lambda f: yaml.safe_dump(cfg, f, sort_keys=False))


# --------------------------------------------------------------------------------------------------
def nyu_frames(cfg: Dict[str, Any], split: str):
    data = cfg["dataloader"]
    return build_nyu_split(data["layout"], data["root"], split, data[f"{split}_list"], data["depth_source"])


def report_dir_of(args: argparse.Namespace, cfg: Dict[str, Any]) -> str:
    """The per-stitch report directory: ``--report-dir`` or ``<train.output_dir>/stitch_report_<test_name>``."""
    default = os.path.join(cfg["train"]["output_dir"], "stitch_report_" + cfg["dataloader"]["test_name"])
    return args.report_dir or default


def check_report_dir(report_dir: str, replaced: Sequence[str], header: Optional[Dict[str, Any]],
                     recipe: TrainRecipe) -> None:
    """A training run may evaluate into ``report_dir`` only if the report there (if any) will be its own: that of
    the resumed checkpoint when no epoch is left to train (the checkpoint then stays as it is), or one that
    ``--overwrite`` deletes (``replaced``)."""
    results = os.path.abspath(os.path.join(report_dir, RESULTS_FILE))
    finished = header is not None and header["epoch"] >= recipe.epochs
    deleted = any(results == p or results.startswith(p + os.sep) for p in map(os.path.abspath, replaced))
    if os.path.isfile(results) and not deleted and not finished:
        raise FileExistsError(f"{results} holds the per-stitch report of another model, and this run trains a new "
                              "one: give --report-dir a new directory, move that report away, or pass --stitch none "
                              "(then evaluate with --eval-only)")


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


def start_run_dir(cfg: Dict[str, Any], output_dir: str, replaced: Sequence[str]) -> None:
    """Rank 0, once every check has passed: delete what ``--overwrite`` replaces and the temporaries of killed
    writes of this run, then write ``config.yaml``."""
    clear_run(list(replaced))
    if replaced:
        logger.warning("--overwrite: deleted the previous run's %s",
                       ", ".join(os.path.relpath(p, output_dir) for p in replaced))
    remove_killed_writes(output_dir)
    save_config(cfg, output_dir)


def _file_identity(path: str) -> tuple:
    """(inode, size, mtime) of a file: an atomic rewrite (a new inode) changes it."""
    st = os.stat(path)
    return st.st_ino, st.st_size, st.st_mtime_ns


def run(cfg: Dict[str, Any], args: argparse.Namespace, ctx: DistContext,
        log_to_file: Callable[[str], None] = lambda output_dir: None) -> Dict[str, Any]:
    output_dir, test_cfg = cfg["train"]["output_dir"], cfg["test"]
    training = not args.eval_only
    amp = ctx.device.type == "cuda" and cfg["train"]["amp"]
    # everything that can be checked without compute is checked first: settings, output directory, checkpoint,
    # data files and values, report directory
    check_settings(cfg, training, args.config_file)
    replaced, checkpoint = run_checkpoint(args, output_dir, cfg["train"]["init_checkpoint"])
    resume_path = checkpoint if training else None
    header = None if checkpoint is None else read_checkpoint_header(checkpoint)
    if not training:
        size, source = eval_size_for_checkpoint(cfg["dataloader"]["eval_size"], header["eval_size"],
                                                command_line_sets(args.opts, "dataloader.eval_size"), checkpoint,
                                                "dataloader.eval_size")
        cfg["dataloader"]["eval_size"] = list(size)
    latency = latency_options(args, ctx.device, None, cfg["dataloader"]["eval_size"], cfg["train"]["amp"])
    if latency is not None and args.stitch == "none":
        raise ValueError("--measure-latency times the stitches of the per-stitch report: give --stitch "
                         "all|pareto|ID[,ID...], not none")
    recipe = recipe_from_config(cfg, ctx.world_size) if training else None
    spec = model_spec(cfg) if training else dataclasses.replace(header["spec"], route_types=tuple(
        evaluated_route_types(header["spec"].route_types, cfg["model"]["route_types"],
                              command_line_sets(args.opts, "model.route_types"), "model.route_types", checkpoint)))
    if resume_path:
        check_resumable(header, spec, recipe)
    train_frames = nyu_frames(cfg, "train") if training else None
    test_frames = nyu_frames(cfg, "test") if args.stitch != "none" else None
    for frames in (train_frames, test_frames):
        if frames is not None:
            check_depth_values(frames, spec.max_depth)
    report_dir = report_dir_of(args, cfg)
    run_key = None
    if test_frames is not None:
        check_test_frames(test_frames, cfg)
        if training:
            check_splits(train_frames, test_frames)
            check_report_dir(report_dir, replaced, header, recipe)
        else:
            checkpoint_id = _file_identity(checkpoint)
            run_key = broadcast_object(ctx, report_key(checkpoint, cfg, test_frames, amp, latency)
                                       if ctx.is_main else None)
            conflict = report_conflict(report_dir, run_key) if ctx.is_main else None
            if conflict:
                raise RuntimeError(conflict)
    torch.manual_seed(cfg["train"]["seed"])
    fresh = checkpoint is None
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
        stitch_ids = select_stitches(args.stitch, space, pareto_source=args.pareto_from or os.path.join(
                                         report_dir, RESULTS_FILE), task=TASK, metric=test_cfg["primary_metric"],
                                     higher_is_better=test_cfg["primary_metric"] in HIGHER_IS_BETTER)
    export_ids = None
    if args.export_stitch is not None and not export_reads_report(args.export_stitch):  # ids: checked before training
        export_ids = resolve_export_selection(args.export_stitch, space, task=TASK)
        check_export_targets(output_dir, export_ids, args.overwrite)
    elif args.export_stitch is not None and not stitch_ids and not os.path.isfile(os.path.join(report_dir,
                                                                                              RESULTS_FILE)):
        raise FileNotFoundError(f"--export-stitch {args.export_stitch} chooses from the per-stitch report, and "
                                f"{os.path.join(report_dir, RESULTS_FILE)} does not exist (this run evaluates no "
                                "stitch): give --stitch all (or pareto, IDs) to evaluate it first, or export IDs")
    barrier(ctx)  # every rank has looked at the directories before rank 0 writes into them
    os.makedirs(output_dir, exist_ok=True)
    if training and ctx.is_main:
        start_run_dir(cfg, output_dir, replaced)
    barrier(ctx)
    log_to_file(output_dir)
    eval_size = tuple(cfg["dataloader"]["eval_size"])
    flops_cache = os.path.join(output_dir, "flops_cache")
    if ctx.is_main:  # rank 0 counts (and caches) the FLOPs table, the others read the cache
        flops = depth_flops_table(model, eval_size, cache_dir=flops_cache)
    barrier(ctx)
    if not ctx.is_main:
        flops = depth_flops_table(model, eval_size, cache_dir=flops_cache)
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
                                                  report_dir, run_key, ctx, test_cfg["primary_metric"],
                                                  test_cfg["flip"], amp, group_size, latency)
        if latency is not None and ctx.is_main:
            write_latency_info(report_dir, latency.info())
            result["report"] = load_results(report_dir)
    if args.export_stitch is not None and ctx.is_main:  # pareto / best:G: from the report written above
        result["export"] = export_stitches(args, export_ids, space, report_dir, output_dir, TASK,
                                           lambda path, i: save_exported_stitch(path, model, spec, i))
    return result


def run_process(args: argparse.Namespace) -> Dict[str, Any]:
    """One process of the job: alone, one of torchrun's, or one that detectron2's ``launch`` started."""
    return run_training_process(args, load_config, run, run_logging)


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """The command line in this process (or under torchrun); returns the run's result (checkpoint, report, export)."""
    return run_process(parse_args(argv))


def cli(argv: Optional[Sequence[str]] = None) -> None:
    """The command line as detectron2 runs it: ``--num-gpus N`` processes per machine through ``launch``
    (``--num-gpus 1``, the default, and torchrun's processes run in this process), started once the config
    loads and the machine has the processes' devices (``snnet_core.cli.launch_command``)."""
    launch_job(parse_args(argv), load_config, run_process)


if __name__ == "__main__":
    run_command(cli)
