#!/usr/bin/env python
"""Train, evaluate and export SN-Netv2 classifiers on ImageNet-1K (paper Section 5.1), with the flags and output layout
of the other projects (``projects/snnet_dpt/train.py``, detectron2's ``train_net.py``).

The recipe is a LazyConfig file (default: the paper's DeiT3-S/L, ``configs/snnetv2_deit3_s_l_in1k.py``);
``key=value`` arguments after the flags override its entries:

    python projects/snnet_cls/train.py                                   # the paper recipe on data/imagenet
    python projects/snnet_cls/train.py --num-gpus 8 train.output_dir=output/cls_s_l      # as detectron2 (launch)
    torchrun --nproc_per_node 8 projects/snnet_cls/train.py train.output_dir=output/cls_s_l   # the same, torchrun
    python projects/snnet_cls/train.py --eval-only train.init_checkpoint=snnetv2_deit3_s_l.pth   # upstream's file
    python projects/snnet_cls/train.py --config-file projects/snnet_cls/configs/synthetic/snnetv2_tiny.py

A training run writes into ``train.output_dir`` (``snnet_core.io.run_dir`` describes the layout): ``config.yaml``,
``log.txt``, ``metrics.json`` and a TensorBoard event file (``total_loss``, one ``route_loss/<route>`` curve each,
``lr``, per epoch ``epoch/mean_loss``), ``model_<iteration>.pth`` after each epoch (the newest
``train.max_to_keep``), ``model_final.pth`` and ``last_checkpoint`` naming the newest; ``--resume`` continues from
it, ``--overwrite`` replaces the run.

After training, or with ``--eval-only`` (the checkpoint ``train.init_checkpoint``, default the one
``last_checkpoint`` names; a checkpoint of upstream SN-Netv2's classification code is converted on load), the
stitches chosen by ``--stitch`` are scored on ``<dataloader.root>/val`` (top-1, top-5, loss, and each stitch's id
in upstream's numbering) into a per-stitch report (``--report-dir``, default ``<train.output_dir>/stitch_report_
<dataloader.test_name>``), in groups of ``test.stitch_group_size`` stitches that each take one pass over the val
set with their route prefixes shared. ``--measure-latency`` adds each stitch's latency as deployed;
``--export-stitch ID[,ID]|pareto|best:G`` writes standalone timm-style classifiers ``<train.output_dir>/
stitch_<ID>/model_final.pth``.

Everything that can be checked without compute is checked before anything is written: settings, the class folders
and image files, the output directory, the checkpoint and the report directory. A per-stitch report is keyed by
the checkpoint's bytes and every setting that changes a metric; rows of another model or setting are never merged
into it.
"""
from __future__ import annotations

import os
import sys
import warnings

# run as a script, the repository's packages (snnet_core, projects, datasets) are imported from the checkout
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated", category=FutureWarning)  # fvcore

import argparse
import json
import logging
from typing import Any, Callable, Dict, List, Optional, Sequence

import timm
import torch
import torch.nn as nn
import yaml
from omegaconf import OmegaConf
from torch.utils.data import DataLoader, Subset

from projects.snnet_cls.console import run_logging
from projects.snnet_cls.data import (
    ImageFolderSplit, SeededSamples, check_images, check_num_classes, check_same_classes, read_split,
)
from projects.snnet_cls.evaluation import PRIMARY_METRIC, TASK, evaluate_stitch_report
from projects.snnet_cls.export import save_exported_classifier
from projects.snnet_cls.model import ModelSpec, build_model, classifier_flops_table
from projects.snnet_cls.training import TrainRecipe, TrainState, fit, ls_init, new_train_state
from projects.snnet_cls.transforms import build_train_transform, eval_transform
from snnet_core import load_results, load_snnet, load_upstream_checkpoint, save_snnet, select_stitches
from snnet_core.cli import run_command
from snnet_core.distributed import DistContext, barrier, broadcast_object
from snnet_core.evaluation.latency import write_latency_info
from snnet_core.evaluation.latency_options import LatencyOptions, latency_options
from snnet_core.evaluation.report import RESULTS_FILE
from snnet_core.evaluation.stitch_report import report_conflict
from snnet_core.io.atomic_io import file_sha256, write_atomic
from snnet_core.io.config_io import (
    Check, apply_overrides, check_config_kind, check_values, integer, load_config_file, local_checkpoint, number,
    one_of,
)
from snnet_core.io.file_claims import check_checkpoint_claims, check_checkpoint_path, state_bytes
from snnet_core.io.run_dir import (
    LAST_CHECKPOINT, check_export_targets, checkpoint_name, clear_run, command_line_sets,
    prune_checkpoints, remove_killed_writes, tag_last_checkpoint,
)
from snnet_core.model.anchor_names import check_anchor_names
from snnet_core.model.backbone_lora import describe_backbone_lora
from snnet_core.model.checkpoint import FORMAT as SNNET_FORMAT
from snnet_core.model.checkpoint import describe_load_error, read_checkpoint_file
from snnet_core.model.stitch_space import StitchSpace, route_types_check
from snnet_core.select import export_reads_report, resolve_export_selection
from snnet_core.training.ls_init import describe_ls_init
from snnet_core.training.run_state import check_resumable
from snnet_core.train_script import (
    check_eval_only_flags, export_stitches, launch_job, run_checkpoint, training_argument_parser,
)
from snnet_core.train_script import run_process as run_training_process
from snnet_core.training.train_log import training_writers

logger = logging.getLogger("projects.snnet_cls.train")

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "snnetv2_deit3_s_l_in1k.py")
CONFIG_NAME = "config.yaml"
SECTIONS = ("model", "dataloader", "optimizer", "lr_schedule", "train", "test")


def build_argument_parser() -> argparse.ArgumentParser:
    """The projects' training command line (``snnet_core.train_script.training_argument_parser``); ``--config-file``
    defaults to the paper's recipe."""
    return training_argument_parser(DEFAULT_CONFIG, {
        "config_file": "LazyConfig recipe (default: the paper's, configs/snnetv2_deit3_s_l_in1k.py)",
        "resume": f"continue training from the checkpoint <train.output_dir>/{LAST_CHECKPOINT} names (refused if "
                  "the model or recipe changed)",
        "eval_only": "evaluate (and export) the checkpoint train.init_checkpoint (default: the one "
                     f"<train.output_dir>/{LAST_CHECKPOINT} names; upstream SN-Netv2's files are converted)",
        "opts": "config overrides, e.g. train.output_dir=output/x optimizer.lr=1e-5 (an unknown key is an error)",
    }, "write <train.output_dir>/stitch_<ID>/model_final.pth, a standalone timm-style classifier of that stitch "
       "(pareto / best:G choose from the per-stitch report)", __doc__)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    return check_eval_only_flags(build_argument_parser().parse_args(argv))


def load_config(path: str, overrides: Sequence[str]) -> Dict[str, Any]:
    """The config file (a YAML file is read as data) with ``key=value`` overrides applied, as plain containers.
    Another project's config, or an override of a key the file does not hold, is an error."""
    cfg = load_config_file(path)
    check_config_kind(cfg, path, "classification", SECTIONS)
    return OmegaConf.to_container(apply_overrides(cfg, overrides, path), resolve=True)


def _local_checkpoints(cfg: Dict[str, Any]) -> List[str]:
    """Remote checkpoints (``model.pretrained``, ``train.init_checkpoint``, the teacher's) not in the download cache;
    a cached one is replaced by its local file."""
    problems = []
    entries = [(f"model.pretrained.{i}", cfg["model"]["pretrained"], i) for i in range(len(cfg["model"]["pretrained"]))]
    entries += [("train.init_checkpoint", cfg["train"], "init_checkpoint"),
                ("train.distillation.teacher_checkpoint", cfg["train"]["distillation"], "teacher_checkpoint")]
    cfg["model"]["pretrained"] = list(cfg["model"]["pretrained"])
    for key, holder, index in entries:
        if holder[index]:
            try:
                holder[index] = local_checkpoint(holder[index], key)
            except FileNotFoundError as exc:
                problems.append(str(exc))
    return problems


def check_settings(cfg: Dict[str, Any], training: bool, source: str = "the config") -> None:
    """Refuse values that would fail later or train or evaluate something else than asked, before anything is read
    or computed: one ``ConfigError`` lists every problem."""
    name_ok = Check(lambda v: isinstance(v, str) and v.strip(".") != "" and "/" not in v,
                    "a name without '/' (it names the report directory stitch_report_<test_name>)")
    built = _meta_anchors(cfg)
    patch = None if built is None else int(built[0].patch_embed.patch_size[0])
    anchors = len(cfg["model"]["anchors"])
    size_ok = Check(lambda v: integer(1).valid(v) and (patch is None or v % patch == 0),
                    f"a positive multiple of the patch size ({patch})")
    checks = {
        "model.anchors": Check(lambda v: not isinstance(v, str) and len(v) >= 2,
                               "two or more timm ViT names, smallest first (more than two: SN-Netv1's sliding-window "
                               "space)"),
        "model.num_classes": integer(1), "model.lora_rank": integer(0, note="0: fully trained stitching layers"),
        "model.lora_alpha": number(0, low_open=True),
        "model.backbone_lora_rank": integer(0, note="0: off, the anchors train in full"),
        "model.route_types": route_types_check(),
        "model.drop_path": Check(lambda v: len(v) == anchors and all(number(0, 1, high_open=True).valid(x) for x in v),
                                 f"one rate in [0, 1) per anchor ({anchors})"),
        "model.pretrained": Check(lambda v: len(v) == anchors and all(x is None or isinstance(x, str) for x in v),
                                  f"one checkpoint path (or None: random init) per anchor ({anchors})"),
        "model.anchor_overrides": Check(lambda v: len(v) == anchors and all(isinstance(x, dict) for x in v),
                                        f"one dict of timm VisionTransformer arguments per anchor ({anchors})"),
        "model.window": Check(lambda v: v is None or (len(v) == 2 and all(integer(1).valid(x) for x in v)),
                              "None (the two-way space of two anchors) or [kernel, stride], both >= 1 (SN-Netv1: "
                              "[2, 1])"),
        "dataloader.input_size": size_ok, "dataloader.eval_crop_ratio": number(0, 1, low_open=True),
        "dataloader.workers": integer(0), "dataloader.test_name": name_ok,
        "dataloader.check_images": one_of(True, False),
        "test.batch_size": integer(1), "test.share_prefixes": one_of(True, False), "test.amp": one_of(True, False),
        "test.stitch_group_size": integer(1, note="stitches per data pass"),
        "test.max_images": Check(lambda v: v is None or integer(1).valid(v), "None (every image) or a count >= 1"),
    }
    if training:
        checks.update({
            "optimizer.lr": number(0, low_open=True), "optimizer.weight_decay": number(0),
            "optimizer.eps": number(0, low_open=True), "optimizer.clip_grad": number(0, note="0: off"),
            "optimizer.opt": Check(lambda v: isinstance(v, str) and v in timm.optim.list_optimizers(),
                                   "a timm optimizer name (timm.optim.list_optimizers()), e.g. lamb"),
            "lr_schedule.warmup_epochs": integer(0), "lr_schedule.warmup_lr": number(0),
            "lr_schedule.min_lr": number(0),
            "train.epochs": integer(1), "train.batch_size": integer(2), "train.smoothing": number(0, 1, high_open=True),
            "train.mixup": number(0), "train.cutmix": number(0), "train.mixup_prob": number(0, 1),
            "train.mixup_switch_prob": number(0, 1), "train.mixup_mode": one_of("batch", "pair", "elem"),
            "train.distillation.type": one_of("none", "soft", "hard"),
            "train.distillation.alpha": number(0, 1), "train.distillation.tau": number(0, low_open=True),
            "train.sampling": one_of("ros", "uniform"), "train.flops_step": number(0, low_open=True, note="GFLOPs"),
            "train.ls_init_images": integer(0, note="0: no LS init, default init"), "train.amp": one_of(True, False),
            "train.seed": integer(0), "train.log_period": integer(1), "train.max_to_keep": integer(1),
            "train.init_checkpoint": Check(lambda v: not v, "empty: it names the checkpoint --eval-only evaluates; "
                                           "training starts from model.pretrained, --resume continues from "
                                           f"<train.output_dir>/{LAST_CHECKPOINT}"),
        })
    more = _local_checkpoints(cfg) + _space_problems(cfg, built, checks)
    if training and cfg["train"]["distillation"]["type"] != "none" and not cfg["train"]["distillation"][
            "teacher_checkpoint"]:
        more.append("train.distillation.type=%s needs train.distillation.teacher_checkpoint=PATH (a local file of "
                    "train.distillation.teacher_model's weights)" % cfg["train"]["distillation"]["type"])
    check_values(cfg, checks, source, more=more)


def _meta_anchors(cfg: Dict[str, Any]) -> Optional[List[nn.Module]]:
    """The anchors of ``cfg["model"]`` built on the meta device (no memory, no weights), ``None`` if some cannot be
    built (the checks of their keys say why)."""
    model = cfg["model"]
    try:
        with torch.device("meta"):
            return [timm.create_model(name, pretrained=False, **dict(overrides))
                    for name, overrides in zip(model["anchors"], model["anchor_overrides"], strict=True)]
    except Exception:
        return None


def _space_problems(cfg: Dict[str, Any], built: Optional[List[nn.Module]], checks: Dict[str, Check]) -> List[str]:
    """What the stitch space of the anchors ``built`` (their depths), ``model.window`` and ``model.route_types``
    refuses, naming the key to change: the anchors' depths first, then the route types of that space."""
    model = cfg["model"]
    if built is None or len(built) < 2 or not all(checks[f"model.{key}"].valid(model[key])
                                                  for key in ("window", "route_types")):
        return []
    depths = [len(anchor.blocks) for anchor in built]
    try:
        StitchSpace(*depths, window=model["window"])
    except ValueError as exc:
        return [f"model.anchors={list(model['anchors'])} (depths {depths}, model.window={model['window']}): {exc}"]
    try:
        StitchSpace(*depths, route_types=model["route_types"], window=model["window"])
    except ValueError as exc:
        return [f"model.route_types={list(model['route_types'])} (model.window={model['window']}): {exc}"]
    return []


def model_spec(cfg: Dict[str, Any]) -> ModelSpec:
    """The ``ModelSpec`` of ``cfg["model"]`` (all its keys but ``pretrained``), its anchors checked."""
    check_anchor_names(cfg["model"]["anchors"], more=True)
    return ModelSpec.from_dict({k: v for k, v in cfg["model"].items() if k != "pretrained"})


def recipe_from_config(cfg: Dict[str, Any], world_size: int = 1) -> TrainRecipe:
    """The ``TrainRecipe`` of a resolved config for a run on ``world_size`` processes."""
    train, opt, sched = cfg["train"], cfg["optimizer"], cfg["lr_schedule"]
    if train["batch_size"] % world_size:
        raise ValueError(f"train.batch_size={train['batch_size']} (total) is not divisible by the {world_size} "
                         "processes")
    distillation = {k: train["distillation"][k] for k in ("type", "alpha", "tau")}
    return TrainRecipe(
        epochs=train["epochs"], batch_size=train["batch_size"], lr=opt["lr"], weight_decay=opt["weight_decay"],
        opt=opt["opt"], opt_eps=opt["eps"], opt_betas=opt["betas"], clip_grad=opt["clip_grad"], **sched,
        smoothing=train["smoothing"], mixup=train["mixup"], cutmix=train["cutmix"], mixup_prob=train["mixup_prob"],
        mixup_switch_prob=train["mixup_switch_prob"], mixup_mode=train["mixup_mode"], distillation=distillation,
        flops_step=train["flops_step"], sampling=train["sampling"], ls_init_images=train["ls_init_images"],
        amp=train["amp"], seed=train["seed"], world_size=world_size,
    )


# --------------------------------------------------------------------------------------------------
# checkpoints
def save_checkpoint(path: str, net, spec: ModelSpec, recipe: TrainRecipe, state: TrainState, classes: Sequence[str],
                    cfg: Dict[str, Any]) -> None:
    """Everything needed to resume after ``state.epoch`` epochs, the class names and the evaluation transform."""
    save_snnet(path, net, extra={
        "spec": spec.to_dict(), "recipe": recipe.to_dict(), "train_state": state.state_dict(),
        "classes": list(classes), "augmentation": dict(cfg["dataloader"]["augmentation"]),
        "input_size": int(cfg["dataloader"]["input_size"]),
        "eval_crop_ratio": float(cfg["dataloader"]["eval_crop_ratio"]),
    })


def read_checkpoint_header(path: str) -> Optional[Dict[str, Any]]:
    """``{"spec", "recipe", "epoch", "classes", ...}`` of a checkpoint of this script, read memory-mapped; ``None``
    for another SN-Netv2 file (upstream's classification checkpoints: converted when loaded). A missing or
    truncated file fails here, before any compute."""
    state = read_checkpoint_file(path, allowed=[argparse.Namespace])  # upstream's files hold their Namespace
    if not isinstance(state, dict) or state.get("format") != SNNET_FORMAT:
        return None
    missing = [k for k in ("spec", "recipe", "train_state", "classes") if k not in state]
    if missing:
        raise RuntimeError(f"{path!r} is an SN-Net checkpoint but not one of projects/snnet_cls/train.py (no "
                           f"{missing}): evaluate it with the project that wrote it")
    return {"spec": ModelSpec.from_dict(state["spec"]), "recipe": state["recipe"], "classes": list(state["classes"]),
            "epoch": int(state["train_state"]["epoch"]), "input_size": state.get("input_size"),
            "eval_crop_ratio": state.get("eval_crop_ratio")}


def load_weights(path: str, net, header: Optional[Dict[str, Any]], device: torch.device) -> Dict[str, Any]:
    """Load ``path`` into ``net``: this script's checkpoint (strict, same architecture) or upstream SN-Netv2's
    classification checkpoint (converted: ``load_upstream_checkpoint``); returns this script's whole checkpoint,
    ``{}`` for upstream's."""
    if header is not None:
        return load_snnet(path, net, map_location=device, expected_bytes=state_bytes(net))
    try:
        report = load_upstream_checkpoint(path, net)
    except ValueError as exc:
        raise ValueError(f"{exc}. The model is built from the config (model.anchors, model.lora_rank, "
                         "model.num_classes): give the config of the anchor pair the checkpoint was trained on "
                         "(projects/snnet_cls/configs/)") from exc
    logger.info("converted %s: %s", path, report)
    return {}


# --------------------------------------------------------------------------------------------------
# data
def read_data(cfg: Dict[str, Any], training: bool, evaluating: bool, num_classes: int, ctx: DistContext
              ) -> Dict[str, Optional[ImageFolderSplit]]:
    """The train and val splits the run reads, checked (class folders, number of classes, and with
    ``dataloader.check_images`` every image header, shared out over the ranks)."""
    root = cfg["dataloader"]["root"]
    splits = {"train": read_split(root, "train") if training else None,
              "val": read_split(root, "val") if evaluating else None}
    if splits["train"] is not None and splits["val"] is not None:
        check_same_classes(splits["train"], splits["val"])
    for split in splits.values():
        if split is not None:
            check_num_classes(split, num_classes)
            if cfg["dataloader"]["check_images"]:
                check_images(split, cfg["test"]["max_images"] if split is splits["val"] else None, ctx)
    return splits


def build_test_loader(split: ImageFolderSplit, cfg: Dict[str, Any], ctx: DistContext) -> DataLoader:
    """The val images ``evaluate_stitch_report`` needs on this rank: every image for the grouped evaluation
    (``test.share_prefixes``), else this rank's shard (every ``world_size``-th image, no padding)."""
    data, test = cfg["dataloader"], cfg["test"]
    dataset = SeededSamples(split.samples, eval_transform(data["input_size"], data["eval_crop_ratio"]))
    count = min(len(dataset), test["max_images"] or len(dataset))
    rank, step = (0, 1) if test["share_prefixes"] else (ctx.rank, ctx.world_size)
    return DataLoader(Subset(dataset, list(range(rank, count, step))), test["batch_size"], shuffle=False,
                      num_workers=data["workers"], pin_memory=ctx.device.type == "cuda")


def report_key(checkpoint: str, cfg: Dict[str, Any], split: ImageFolderSplit, amp: bool,
               latency: Optional[LatencyOptions] = None) -> str:
    """Identity of a per-stitch report: the checkpoint's bytes and every setting that changes a metric (val set,
    number of images, input size, crop ratio, fp16), and with ``latency`` how the stitches are timed."""
    data = cfg["dataloader"]
    parts = {"weights": "sha256:" + file_sha256(checkpoint)[:16], "test_set": split.root,
             "images": min(len(split), cfg["test"]["max_images"] or len(split)), "input_size": data["input_size"],
             "crop_ratio": data["eval_crop_ratio"], "amp": amp}
    if latency is not None:
        parts["latency"] = json.dumps(latency.info(), sort_keys=True)
    return "|".join(f"{k}={v}" for k, v in parts.items())


def build_teacher(cfg: Dict[str, Any], num_classes: int, device: torch.device) -> Optional[torch.nn.Module]:
    """DeiT's teacher (``train.distillation``): the timm model ``teacher_model`` with the weights of
    ``teacher_checkpoint`` (``weights_only``; a ``{'model': ...}`` wrapper as DeiT saves it is unwrapped)."""
    distill = cfg["train"]["distillation"]
    if distill["type"] == "none":
        return None
    teacher = timm.create_model(distill["teacher_model"], pretrained=False, num_classes=num_classes)
    path = distill["teacher_checkpoint"]
    check_checkpoint_path(path, "teacher checkpoint")
    check_checkpoint_claims(path, state_bytes(teacher), "teacher checkpoint")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise RuntimeError(f"could not read the teacher: {describe_load_error(path, exc)}") from exc
    teacher.load_state_dict(state.get("model", state) if isinstance(state, dict) else state)
    return teacher.to(device).eval()


# --------------------------------------------------------------------------------------------------
def save_config(cfg: Dict[str, Any], output_dir: str) -> None:
    """``<output_dir>/config.yaml``: the resolved recipe of the run (loadable with ``--config-file``)."""
    write_atomic(os.path.join(output_dir, CONFIG_NAME), lambda f: yaml.safe_dump(cfg, f, sort_keys=False))


def report_dir_of(args: argparse.Namespace, cfg: Dict[str, Any]) -> str:
    default = os.path.join(cfg["train"]["output_dir"], "stitch_report_" + cfg["dataloader"]["test_name"])
    return args.report_dir or default


def train(net, spec: ModelSpec, cfg: Dict[str, Any], recipe: TrainRecipe, split: ImageFolderSplit,
          ctx: DistContext, gflops: Dict[int, float], resume_path: Optional[str]) -> Dict[str, Any]:
    """LS init (a fresh run) and ``fit`` into ``train.output_dir``, a checkpoint after every epoch (rank 0)."""
    train_cfg, data = cfg["train"], cfg["dataloader"]
    output_dir = train_cfg["output_dir"]
    train_set = SeededSamples(split.samples, build_train_transform(data["input_size"], data["augmentation"]),
                              recipe.seed)
    state = new_train_state(net, recipe, gflops, ctx)
    checkpoint = resume_path
    if resume_path:
        state.load_state_dict(load_snnet(resume_path, net, map_location=ctx.device)["train_state"])
        logger.info("resumed from %s after epoch %d (iteration %d)", resume_path, state.epoch, state.iteration)
    elif ctx.is_main:  # DDP then broadcasts rank 0's weights
        logger.info(describe_ls_init(recipe.ls_init_images, "train.ls_init_images"))
        if recipe.ls_init_images > 0:
            ls_init(net, train_set, recipe, spec.num_classes, ctx, data["workers"])
    logger.info(describe_backbone_lora(net, spec.backbone_lora_rank, "model.backbone_lora_rank"))
    teacher = build_teacher(cfg, spec.num_classes, ctx.device)
    max_iter = recipe.epochs * (len(train_set) // recipe.batch_size)
    writers = training_writers(output_dir, max_iter, state.iteration) if ctx.is_main else []

    def save(state: TrainState, stats: Dict[str, Any]) -> None:
        nonlocal checkpoint
        checkpoint = os.path.join(output_dir, checkpoint_name(state.iteration - 1, state.epoch == recipe.epochs))
        if ctx.is_main:
            save_checkpoint(checkpoint, net, spec, recipe, state, split.classes, cfg)
            tag_last_checkpoint(output_dir, checkpoint)
            for path in prune_checkpoints(output_dir, train_cfg["max_to_keep"]):
                logger.info("deleted %s (train.max_to_keep=%d)", path, train_cfg["max_to_keep"])
        barrier(ctx)

    try:
        result = fit(net, train_set, recipe, gflops, spec.num_classes, ctx, state, workers=data["workers"],
                     teacher=teacher, writers=writers, log_period=train_cfg["log_period"], on_epoch_end=save)
    finally:
        for writer in writers:
            writer.close()
    return {"checkpoint": checkpoint, "iteration": result["iteration"]}


def run(cfg: Dict[str, Any], args: argparse.Namespace, ctx: DistContext,
        log_to_file: Callable[[str], None] = lambda output_dir: None) -> Dict[str, Any]:
    output_dir, test_cfg = cfg["train"]["output_dir"], cfg["test"]
    training = not args.eval_only
    amp = ctx.device.type == "cuda" and test_cfg["amp"]
    # everything that can be checked without compute is checked first: settings, output directory, checkpoint,
    # data folders and images, report directory
    check_settings(cfg, training, args.config_file)
    replaced, checkpoint = run_checkpoint(args, output_dir, cfg["train"]["init_checkpoint"])
    header = None if checkpoint is None else read_checkpoint_header(checkpoint)
    if not training and header is not None:
        for key in ("input_size", "eval_crop_ratio"):
            if header[key] is not None and not command_line_sets(args.opts, f"dataloader.{key}"):
                cfg["dataloader"][key] = header[key]  # evaluate as the run was set up
    latency = latency_options(args, ctx.device, None, [cfg["dataloader"]["input_size"]] * 2, test_cfg["amp"])
    if latency is not None and args.stitch == "none":
        raise ValueError("--measure-latency times the stitches of the per-stitch report: give --stitch "
                         "all|pareto|ID[,ID...], not none")
    recipe = recipe_from_config(cfg, ctx.world_size) if training else None
    spec = header["spec"] if header is not None and not training else model_spec(cfg)
    if training and checkpoint:
        check_resumable(header["spec"].to_dict(), spec.to_dict(), header["recipe"], recipe.to_dict())
    splits = read_data(cfg, training, args.stitch != "none", spec.num_classes, ctx)
    report_dir = report_dir_of(args, cfg)
    run_key = None
    if splits["val"] is not None and not training:
        run_key = broadcast_object(ctx, report_key(checkpoint, cfg, splits["val"], amp, latency)
                                   if ctx.is_main else None)
        conflict = report_conflict(report_dir, run_key) if ctx.is_main else None
        if conflict:
            raise RuntimeError(conflict)
    elif splits["val"] is not None and os.path.isfile(os.path.join(report_dir, RESULTS_FILE)) and not any(
            os.path.abspath(os.path.join(report_dir, RESULTS_FILE)).startswith(os.path.abspath(p)) for p in replaced):
        raise FileExistsError(f"{os.path.join(report_dir, RESULTS_FILE)} holds the per-stitch report of another model, "
                              "and this run trains a new one: give --report-dir a new directory, move that report "
                              "away, or pass --stitch none (then evaluate with --eval-only)")
    torch.manual_seed(cfg["train"]["seed"])
    fresh = training and checkpoint is None
    net = build_model(spec, cfg["model"]["pretrained"] if fresh else None).to(ctx.device)
    if fresh and not all(cfg["model"]["pretrained"]):
        logger.warning("model.pretrained holds no checkpoint for some anchor: it starts from random weights")
    if not training:  # a checkpoint of another anchor pair fails here, before any compute
        load_weights(checkpoint, net, header, ctx.device)
    if latency is not None:
        latency.check_size(net.patch_size)
    stitch_ids: List[int] = []
    if splits["val"] is not None:  # resolved up front: a bad selection fails before training
        stitch_ids = select_stitches(args.stitch, net.space, pareto_source=args.pareto_from or os.path.join(
                                         report_dir, RESULTS_FILE), task=TASK, metric=PRIMARY_METRIC,
                                     higher_is_better=True)
    export_ids = None
    if args.export_stitch is not None and not export_reads_report(args.export_stitch):
        export_ids = resolve_export_selection(args.export_stitch, net.space, task=TASK)
        check_export_targets(output_dir, export_ids, args.overwrite)
    barrier(ctx)  # every rank has looked at the directories before rank 0 writes into them
    os.makedirs(output_dir, exist_ok=True)
    if training and ctx.is_main:
        clear_run(list(replaced))
        remove_killed_writes(output_dir)
        save_config(cfg, output_dir)
    barrier(ctx)
    log_to_file(output_dir)
    size = (cfg["dataloader"]["input_size"],) * 2
    flops_cache = os.path.join(output_dir, "flops_cache")
    if ctx.is_main:  # rank 0 counts (and caches) the FLOPs table, the others read the cache
        flops = classifier_flops_table(net, size, flops_cache)
    barrier(ctx)
    if not ctx.is_main:
        flops = classifier_flops_table(net, size, flops_cache)
    logger.info("%d stitches, %.4g-%.4g GFLOPs at %dx%d", len(net.space), min(flops.gflops.values()),
                max(flops.gflops.values()), *size)
    known = splits["train"] or splits["val"]
    classes = header["classes"] if header is not None else (known.classes if known else [])
    if training:
        result = train(net, spec, cfg, recipe, splits["train"], ctx, flops.gflops, checkpoint)
        if stitch_ids:
            run_key = broadcast_object(ctx, report_key(result["checkpoint"], cfg, splits["val"], amp, latency)
                                       if ctx.is_main else None)
    else:
        result = {"checkpoint": checkpoint}
    if stitch_ids:
        group_size = test_cfg["stitch_group_size"] if test_cfg["share_prefixes"] else None
        result["report"] = evaluate_stitch_report(net, build_test_loader(splits["val"], cfg, ctx), stitch_ids, flops,
                                                  report_dir, run_key, ctx, amp, group_size, latency,
                                                  title="SN-Net " + " + ".join(spec.anchors))
        if latency is not None and ctx.is_main:
            write_latency_info(report_dir, latency.info())
            result["report"] = load_results(report_dir)
    if args.export_stitch is not None and ctx.is_main:
        result["export"] = export_stitches(args, export_ids, net.space, report_dir, output_dir, TASK, lambda path, i: (
            save_exported_classifier(path, net, spec, i, classes, cfg["dataloader"]["eval_crop_ratio"])))
    return result


def run_process(args: argparse.Namespace) -> Dict[str, Any]:
    """One process of the job: alone, one of torchrun's, or one that detectron2's ``launch`` started."""
    return run_training_process(args, load_config, run, run_logging)


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """The command line in this process (or under torchrun); returns the run's result (checkpoint, report, export)."""
    return run_process(parse_args(argv))


def cli(argv: Optional[Sequence[str]] = None) -> None:
    """The command line as detectron2 runs it: ``--num-gpus N`` processes per machine through ``launch``."""
    launch_job(parse_args(argv), load_config, run_process)


if __name__ == "__main__":
    run_command(cli)
