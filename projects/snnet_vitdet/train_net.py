#!/usr/bin/env python
"""SN-Netv2 ViTDet (Mask R-CNN) training and COCO per-stitch evaluation, detectron2 LazyConfig style.

Training (LS init of the stitching layers before the first iteration, a ROS-sampled stitch per iteration) into
``train.output_dir`` (the layout of ``snnet_core.io.run_dir``; a run already there is continued with ``--resume`` or
replaced with ``--overwrite``)::

    python projects/snnet_vitdet/train_net.py --num-gpus 8 \\
        --config-file projects/snnet_vitdet/configs/COCO/mask_rcnn_snnetv2_deit3_s_l_100ep.py \\
        [--resume | --overwrite] train.output_dir=output/snnetv2_s_l [key=value ...]

Per-stitch COCO AP report of a trained model (``--stitch all``, ``pareto`` or ids ``0,1,5``) into
``OUTPUT_DIR/stitch_report_<test set>/``; the weights are ``train.init_checkpoint``, by default the checkpoint
``OUTPUT_DIR/last_checkpoint`` names, evaluated at the input size recorded in it at training (a
``snnet.flops_input_size=[H,W]`` override wins, with a warning)::

    python projects/snnet_vitdet/train_net.py --num-gpus 8 --eval-only --stitch all \\
        --config-file ... train.output_dir=output/snnetv2_s_l

The console shows one line per stitch, a progress bar and the Pareto frontier; ``OUTPUT_DIR/log.txt`` also gets
detectron2's COCO tables of every stitch, its environment report and the model's module tree (``console.py``).

``--measure-latency`` (with ``--latency-batch N``, ``--latency-size H W``, ``--latency-amp``) adds each stitch's
latency as deployed, on this device, to that report (``python -m snnet_core.select REPORT --max-latency-ms MS``).

The anchor baselines (``mask_rcnn_vitdet_deit3_{s,l}_100ep.py``) train and evaluate the same way.
"""
from __future__ import annotations

import os
import sys
import warnings

# run as a script, the repository's packages (snnet_core, projects, datasets) are imported from the
# checkout: only snnet_core is installed, so that `projects`/`datasets` shadow nothing elsewhere
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated", category=FutureWarning)  # fvcore
# detectron2's builtin datasets (coco_2017_*) live under $DETECTRON2_DATASETS; its default, ./datasets, is this
# repository's generator package, so real data goes to ./data (as for NYUv2) unless the variable is set
os.environ.setdefault("DETECTRON2_DATASETS", "data")

import contextlib
import copy
import logging
from typing import Callable, ContextManager, Dict, List, Optional, Tuple

import detectron2.data.transforms as T
import torch
from detectron2.config import LazyCall as L
from detectron2.config import instantiate
from detectron2.data import build_detection_test_loader, get_detection_dataset_dicts
from detectron2.engine import (
    AMPTrainer,
    SimpleTrainer,
    default_argument_parser,
    default_setup,
    hooks,
)
from detectron2.engine.defaults import create_ddp_model
from detectron2.utils import comm
from detectron2.utils.registry import locate
from omegaconf import DictConfig, OmegaConf

from projects.snnet_vitdet.console import LOG_FILE_ONLY, explain_missing_compiled_ops, setup_run_logging
from projects.snnet_vitdet.data import (
    NamedImageErrors,
    check_dataset_files,
    check_num_classes,
    check_trainable,
    dataset_names,
    register_coco_json_datasets,
)
from projects.snnet_vitdet.evaluation import RESULTS_TASK, detector_flops_table, evaluate_model, stitch_report
from projects.snnet_vitdet.export import export_detector
from projects.snnet_vitdet.training import (
    IterationSeedHook,
    PeriodicCheckpointer,
    StitchSamplingHook,
    StrictDetectionCheckpointer,
    ls_init_detector,
    stitched_backbone,
    unwrap,
)
from snnet_core import FlopsTable, ResourceConstrainedSampler, load_results, select_stitches
from snnet_core.io.atomic_io import file_sha256
from snnet_core.cli import launch_command, run_command, use_launch_defaults
from snnet_core.io.config_io import (
    Check, apply_overrides, check_config_kind, check_values, input_size_problem, integer, load_config_file,
    local_checkpoint, number, one_of, pair,
)
from snnet_core.distributed import destroy_process_groups, run_on_main
from snnet_core.io.file_claims import check_checkpoint_path
from snnet_core.evaluation.latency import write_latency_info
from snnet_core.evaluation.latency_options import add_latency_arguments, latency_options
from snnet_core.io.run_dir import (
    check_export_targets, check_output_dir, clear_run, command_line_sets, eval_size_for_checkpoint, last_checkpoint,
    lock_run_dir, remove_killed_writes,
)
from snnet_core.select import export_reads_report, plot_exported_stitch, resolve_export_selection
from snnet_core.training.data_order import build_resumable_train_loader
from snnet_core.training.train_log import training_writers

logger = logging.getLogger("projects.snnet_vitdet.train_net")

EVAL_SIZE = "eval_size"  # checkpoint entry: snnet.flops_input_size (H, W) of the training run (as depth's)


def build_device(cfg) -> torch.device:
    device = torch.device(cfg.train.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device is 'cuda' but no GPU is visible: pass train.device=cpu to run on CPU")
    return device


def model_summary(model: torch.nn.Module) -> str:
    """One line: the detector's class, its backbone (with the number of stitches of an SN-Net) and parameters."""
    backbone = stitched_backbone(model)
    net = backbone if backbone is not None else getattr(unwrap(model).backbone, "net", unwrap(model).backbone)
    stitches = f" ({len(backbone.space)} stitches)" if backbone is not None else ""
    params = sum(p.numel() for p in model.parameters())
    return f"{type(unwrap(model)).__name__} with a {type(net).__name__}{stitches}, {params / 1e6:.2f}M parameters"


def build_model(cfg) -> torch.nn.Module:
    """``cfg.model`` on ``train.device``; its module tree goes to log.txt, a one-line summary to the console."""
    model = instantiate(cfg.model)
    logger.info("Model:\n%s", model, extra=LOG_FILE_ONLY)
    logger.info("model: %s (module tree in log.txt)", model_summary(model))
    return model.to(build_device(cfg))


def shared_flops_table(cfg, model: torch.nn.Module) -> FlopsTable:
    """Per-stitch GFLOPs at ``snnet.flops_input_size``, counted on the main process and shared with all
    ranks (so every rank bins the stitches identically for ROS)."""
    return run_on_main(lambda: detector_flops_table(unwrap(model), tuple(cfg.snnet.flops_input_size),
                                                    cache_dir=os.path.join(cfg.train.output_dir, "flops_cache")))


def build_calibration_loader(cfg):
    """Training images through the deterministic test-time mapper (LS init calibration); an unreadable image is an
    ``OSError`` naming it and its annotation file."""
    names = dataset_names(cfg.dataloader.train)
    mapper = instantiate(OmegaConf.to_container(cfg.dataloader.test.mapper, resolve=True))
    return instantiate(L(build_detection_test_loader)(
        dataset=L(get_detection_dataset_dicts)(names=names, filter_empty=True),
        mapper=NamedImageErrors(mapper, names),
        num_workers=cfg.dataloader.test.num_workers,
    ))


def build_test_loader(cfg):
    """``dataloader.test``, after checking its categories against the model's classes."""
    loader = instantiate(cfg.dataloader.test)
    check_num_classes(dataset_names(cfg.dataloader.test), cfg.model.roi_heads.num_classes)
    return loader


def build_train_loader(cfg, seed: int, start_iter: int):
    """``dataloader.train`` from iteration ``start_iter`` on. With ``build_resumable_train_loader`` (the
    recipes' loader) batch ``i`` is a pure function of ``(seed, i)``, so ``--resume`` is exact. An unreadable
    image is an ``OSError`` naming it and its annotation file (``NamedImageErrors`` around the mapper)."""
    loader_cfg = cfg.dataloader.train
    target = loader_cfg._target_
    if (locate(target) if isinstance(target, str) else target) is build_resumable_train_loader:
        loader_cfg.update(seed=seed, start_iter=start_iter)
    else:
        logger.warning("dataloader.train is not build_resumable_train_loader: a resumed run will not see the "
                       "data of an uninterrupted one")
    named = copy.deepcopy(loader_cfg)  # the config keeps its own mapper (config.yaml, a later loader)
    if "mapper" in named:
        named.mapper = L(NamedImageErrors)(mapper=named.mapper, names=dataset_names(loader_cfg))
    loader = instantiate(named)
    check_num_classes(dataset_names(loader_cfg), cfg.model.roi_heads.num_classes)
    return loader


def training_seed(cfg) -> int:
    """``train.seed``, or (``train.seed < 0``) a random seed shared by all ranks."""
    return cfg.train.seed if cfg.train.get("seed", -1) >= 0 else comm.shared_random_seed()


def do_test(cfg, model: torch.nn.Module, stitch_ids: Optional[List[int]] = None) -> Dict:
    """COCO metrics on ``dataloader.test``: of the model (baselines) or of each of ``stitch_ids``
    (default ``snnet.eval_stitches``) as ``{"stitch<id>": {...}}``."""
    loader = build_test_loader(cfg)
    evaluator = instantiate(cfg.dataloader.evaluator)
    backbone = stitched_backbone(model)
    if backbone is None:
        return evaluate_model(model, loader, evaluator)
    if stitch_ids is None:
        stitch_ids = backbone.space.parse_selection(cfg.snnet.eval_stitches)
    selected, results = backbone.stitch_id, {}
    for stitch_id in stitch_ids:
        backbone.set_stitch(stitch_id)
        results[f"stitch{stitch_id}"] = evaluate_model(model, loader, evaluator)
    backbone.set_stitch(selected)
    return results


def do_train(args, cfg) -> None:
    """detectron2's LazyConfig training loop plus LS init and per-iteration ROS stitch sampling.

    Resumable exactly: RNGs seeded per iteration (``IterationSeedHook``), data a function of the iteration
    (``build_train_loader``), checkpoints written atomically with the trainer state.
    """
    model = build_model(cfg)
    on_gpu = next(model.parameters()).device.type == "cuda"
    cfg.optimizer.params.model = model
    optim = instantiate(cfg.optimizer)

    ddp = dict(cfg.train.ddp)
    if not on_gpu:  # gloo on CPU: no device ids, no fp16 gradient compression
        ddp.update(device_ids=None, fp16_compression=False)
    model = create_ddp_model(model, **ddp)
    amp = cfg.train.amp.enabled and on_gpu
    if cfg.train.amp.enabled and not on_gpu:
        logger.info("AMP is for GPU training: training in fp32 on %s", cfg.train.device)
    trainer = (AMPTrainer if amp else SimpleTrainer)(model, None, optim)  # data loader: once start_iter is known
    extras = {} if cfg.get("snnet") is None else {EVAL_SIZE: [int(s) for s in cfg.snnet.flops_input_size]}
    checkpointer = StrictDetectionCheckpointer(model, cfg.train.output_dir, trainer=trainer, extras=extras)
    seeding = IterationSeedHook(training_seed(cfg))

    backbone = stitched_backbone(model)
    sampling = None
    if backbone is not None:
        table = shared_flops_table(cfg, model)
        sampler = ResourceConstrainedSampler(table.gflops, cfg.snnet.ros_step_gflops, cfg.snnet.sampler_seed)
        logger.info("ROS over %d stitches in %d FLOPs bins of %g GFLOPs (%.1f-%.1f GFLOPs at %s)",
                    len(table.gflops), len(sampler.bins), sampler.step, min(table.gflops.values()),
                    max(table.gflops.values()), table.input_size)
        sampling = StitchSamplingHook(backbone, sampler, cfg.train.output_dir)
    trainer.register_hooks([
        hooks.IterationTimer(),
        seeding,
        sampling,
        hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
        PeriodicCheckpointer(checkpointer, **cfg.train.checkpointer) if comm.is_main_process() else None,
        hooks.EvalHook(cfg.train.eval_period, lambda: do_test(cfg, model)) if cfg.train.eval_period > 0 else None,
    ])  # the writers come last, once the start iteration is known

    if comm.is_main_process():
        remove_killed_writes(cfg.train.output_dir)
    resumed = args.resume and checkpointer.has_checkpoint()
    checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=args.resume)  # trainer state and seed too
    start_iter = trainer.iter + 1 if resumed else 0
    if resumed and start_iter >= cfg.train.max_iter:
        if not os.path.isfile(os.path.join(cfg.train.output_dir, "model_final.pth")) and comm.is_main_process():
            logger.info("training had ended at iteration %d but model_final.pth is missing: writing it", trainer.iter)
            checkpointer.save("model_final", iteration=trainer.iter)
        return
    if comm.is_main_process():  # a resumed run cuts metrics.json back and purges TensorBoard's later events
        writers = training_writers(cfg.train.output_dir, cfg.train.max_iter, start_iter)
        trainer.register_hooks([hooks.PeriodicWriter(writers, period=cfg.train.log_period)])
    trainer.data_loader = build_train_loader(cfg, seeding.seed, start_iter)
    if backbone is not None and not resumed and cfg.snnet.ls_init_images > 0:
        ls_init_detector(model, build_calibration_loader(cfg), cfg.snnet.ls_init_images)
    trainer.train(start_iter, cfg.train.max_iter)


def report_dir_of(args, cfg) -> str:
    """The per-stitch report directory: ``--report-dir`` or ``OUTPUT_DIR/stitch_report_<test datasets>``."""
    return args.report_dir or os.path.join(cfg.train.output_dir,
                                           "stitch_report_" + "+".join(dataset_names(cfg.dataloader.test)))


def export_selection(args, cfg, model: torch.nn.Module) -> List[int]:
    """The stitches ``--export-stitch`` names (``pareto`` / ``best:G``: read from the per-stitch report), refused
    where exported before unless ``--overwrite`` (``check_export_targets``)."""
    backbone = stitched_backbone(model)
    if backbone is None:
        raise ValueError("--export-stitch needs an SN-Net detector (a StitchedViTDetBackbone); this config has one ViT")
    ids = run_on_main(lambda: resolve_export_selection(args.export_stitch, backbone.space, report_dir_of(args, cfg),
                                                       task=RESULTS_TASK))
    run_on_main(lambda: check_export_targets(cfg.train.output_dir, ids, args.overwrite))
    return ids


def do_export(args, cfg, model: torch.nn.Module, ids: Optional[List[int]] = None) -> List[Dict[str, str]]:
    """``--export-stitch ID[,ID]|pareto|best:G``: standalone detectors under ``OUTPUT_DIR/stitch_<ID>/`` (``ids``:
    ``export_selection``'s, where it was called before)."""
    ids = export_selection(args, cfg, model) if ids is None else ids
    backbone = stitched_backbone(model)
    written = []
    if comm.is_main_process():
        for sid in ids:
            paths = export_detector(cfg, model, sid, cfg.train.output_dir, source=cfg.train.init_checkpoint)
            logger.info("exported stitch %d (%s): %s", sid, backbone.space[sid].route, paths)
            plot_exported_stitch(report_dir_of(args, cfg), sid, os.path.dirname(paths["weights"]), RESULTS_TASK)
            written.append(paths)
    return written


def do_stitch_report(args, cfg, model: torch.nn.Module, iteration: Optional[int]) -> Dict:
    """``--eval-only`` on the stitched model: the resumable COCO per-stitch AP report."""
    backbone = stitched_backbone(model)
    test_names = dataset_names(cfg.dataloader.test)
    report_dir = report_dir_of(args, cfg)
    pareto_from = args.pareto_from or os.path.join(report_dir, "stitch_results.json")
    stitch_ids = run_on_main(lambda: select_stitches(args.stitch, backbone.space, pareto_from, task=RESULTS_TASK))
    table = shared_flops_table(cfg, model)
    weights = cfg.train.init_checkpoint
    content = run_on_main(lambda: f"sha256:{file_sha256(weights)[:16]}" if os.path.isfile(weights) else weights)
    run_key = f"{content}@iter{iteration}|{'+'.join(test_names)}|{table.input_size[0]}x{table.input_size[1]}"
    latency = latency_options(args, next(model.parameters()).device, backbone.snnet.patch_size, table.input_size,
                              cfg.train.amp.enabled)
    if latency is not None:
        run_key += latency.run_key()
    group_size = cfg.snnet.eval_group_size if cfg.snnet.eval_share_prefixes else None
    record = stitch_report(model, backbone.set_stitch, build_test_loader(cfg),
                           instantiate(cfg.dataloader.evaluator), stitch_ids, backbone.space, table, report_dir,
                           run_key, group_size=group_size, latency=latency,
                           title=f"SN-Netv2 Mask R-CNN (ViTDet), GFLOPs at {table.input_size[0]}x{table.input_size[1]}")
    if latency is not None and comm.is_main_process():
        write_latency_info(report_dir, latency.info())
        record = load_results(report_dir)
    return record


def resume_checkpoint(output_dir: str) -> str:
    """The checkpoint ``--resume`` continues from (the one ``last_checkpoint`` names); a directory without one (e.g.
    a run killed while writing its first checkpoint) is refused before any compute, rather than trained from
    iteration 0 with a second history appended to its metrics.json."""
    try:
        return last_checkpoint(output_dir)
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"--resume: {exc}. To go on: start afresh without --resume (with --overwrite if the "
                                "directory holds a run)") from exc


def eval_checkpoint(cfg) -> str:
    """The weights ``--eval-only`` evaluates: ``train.init_checkpoint``, else the checkpoint ``last_checkpoint`` of
    ``train.output_dir`` names (then also set as ``train.init_checkpoint``)."""
    if cfg.train.init_checkpoint:
        return cfg.train.init_checkpoint
    try:
        path = last_checkpoint(cfg.train.output_dir)
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"--eval-only needs the weights to evaluate: pass train.init_checkpoint=PATH, or the "
                                f"train.output_dir of a training run ({exc})") from exc
    logger.info("evaluating %s, the checkpoint %s names", path, os.path.join(cfg.train.output_dir, "last_checkpoint"))
    cfg.train.init_checkpoint = path
    return path


def load_weights(model: torch.nn.Module, path: str) -> Dict:
    """Load a trained detector strictly; returns the checkpoint's other entries (``iteration``,
    ``EVAL_SIZE``, ... where recorded)."""
    if "://" not in path:
        check_checkpoint_path(path, "checkpoint", " (train.init_checkpoint)")
    return StrictDetectionCheckpointer(model).load(path)


def set_eval_input_size(cfg, model: torch.nn.Module, size: Tuple[int, int]) -> None:
    """Evaluate at ``size`` ``(H, W)``: ``snnet.flops_input_size`` (GFLOPs column), the test mapper's
    ``ResizeShortestEdge`` (short edge ``min(size)``, long edge at most ``max(size)``) and, where the backbone pads
    images to a square (ViTDet's ``square_pad``), the square's side ``max(size)``, in the config and in ``model``.

    A square kept at the training size would crop a larger image (detectron2's ``ImageList`` pads by a negative
    amount) and run the backbone at the training size on a smaller one, while the GFLOPs column counts ``size``.
    """
    cfg.snnet.flops_input_size = [int(size[0]), int(size[1])]
    for augmentation in cfg.dataloader.test.mapper.augmentations:
        target = augmentation.get("_target_")
        target = locate(target) if isinstance(target, str) else target
        if isinstance(target, type) and issubclass(target, T.ResizeShortestEdge):
            augmentation.short_edge_length, augmentation.max_size = min(size), max(size)
    backbone = unwrap(model).backbone
    if getattr(backbone, "_square_pad", 0) > 0:  # SimpleFeaturePyramid's padding_constraints read this attribute
        backbone._square_pad = cfg.model.backbone.square_pad = int(max(size))


def _anchor_patch_size(anchor_cfg) -> Optional[int]:
    """The patch size of an anchor's ``build_anchor`` LazyCall (built on the meta device: no memory, no
    weights); ``None`` if it does not build (instantiating the model then names the problem)."""
    try:
        with torch.device("meta"):
            return int(instantiate(OmegaConf.merge(anchor_cfg, {"pretrained": None})).patch_embed.patch_size[0])
    except Exception:
        return None


def _checkpoint_problems(cfg) -> List[str]:
    """Remote checkpoints (``train.init_checkpoint``, the anchors' ``pretrained``) that are not in detectron2's
    download cache; a cached one is replaced by its local file."""
    net = cfg.model.backbone.get("net", {})
    keys = ["train.init_checkpoint"] + [f"model.backbone.net.{a}.pretrained" for a in ("vit", "fast", "slow")
                                        if isinstance(net.get(a), DictConfig) and net[a].get("pretrained")]
    problems = []
    for key in keys:
        value = OmegaConf.select(cfg, key)
        if value:
            try:
                OmegaConf.update(cfg, key, local_checkpoint(value, key))
            except FileNotFoundError as exc:
                problems.append(str(exc))
    return problems


def check_config(cfg, training: bool, source: str) -> None:
    """Every value the run reads, against its valid range, before any work (one ``ConfigError`` lists all
    problems): counts, sizes (``snnet.flops_input_size`` a multiple of the patch size), rates, steps, thresholds,
    and remote checkpoints. Keys a config does not hold (a baseline has no ``snnet``, an exported stitch's config
    no ``optimizer``) are skipped."""
    checks = {"model.roi_heads.num_classes": integer(1), "dataloader.test.num_workers": integer(0),
              "snnet.eval_group_size": integer(1, note="stitches per data pass"),
              "snnet.eval_share_prefixes": one_of(True, False)}
    if training:
        updates = cfg.get("lr_multiplier", {}).get("scheduler", {}).get("num_updates")
        checks.update({
            "train.max_iter": integer(1), "train.log_period": integer(1), "train.eval_period": integer(0, note="0: off"),
            "train.checkpointer.period": integer(1), "train.checkpointer.max_to_keep": integer(1),
            "train.seed": integer(note="< 0: a random seed"), "optimizer.lr": number(0, low_open=True),
            "optimizer.weight_decay": number(0), "optimizer.betas": pair(number(0, 1, high_open=True)),
            "dataloader.train.total_batch_size": integer(1), "dataloader.train.num_workers": integer(0),
            "lr_multiplier.warmup_length": number(0, 1, note="fraction of the schedule"),
            "lr_multiplier.warmup_factor": number(0, 1, low_open=True),
            "lr_multiplier.scheduler.num_updates": integer(1),
            "lr_multiplier.scheduler.milestones": Check(
                lambda v: all(integer(1).valid(m) for m in v) and list(v) == sorted(set(v)) and
                (updates is None or not v or v[-1] < updates),
                "increasing iterations >= 1, each < lr_multiplier.scheduler.num_updates"),
            "snnet.ros_step_gflops": number(0, low_open=True, note="GFLOPs"), "snnet.sampler_seed": integer(0),
            "snnet.ls_init_images": integer(0, note="0: no LS init"),
        })
    net = cfg.model.backbone.get("net", {})
    anchors = [net[a] for a in ("vit", "slow") if isinstance(net.get(a), DictConfig)]
    patch = _anchor_patch_size(anchors[0]) if anchors else None
    size = OmegaConf.select(cfg, "snnet.flops_input_size")
    more = [input_size_problem("snnet.flops_input_size", size, patch)] if patch and size is not None else []
    check_values(cfg, checks, source, optional=checks, more=more + _checkpoint_problems(cfg))


def load_config(args):
    """The config file (``snnet_core.io.config_io.load_config_file``: a YAML file is read as data) with the command
    line's ``key=value`` overrides (a key the config does not hold is refused, the closest keys named), checked
    (``check_config``); a depth config is named as such."""
    cfg = load_config_file(args.config_file)
    sections = ("model", "dataloader", "train") + (() if args.eval_only else ("optimizer", "lr_multiplier"))
    check_config_kind(cfg, args.config_file, "detection", sections)
    cfg = apply_overrides(cfg, args.opts, args.config_file)
    check_config(cfg, not args.eval_only, args.config_file)
    return cfg


def setup(cfg, args) -> None:
    """detectron2's ``default_setup`` (config.yaml, log.txt, seeds) with the console / log.txt split of
    ``console.py``."""
    setup_run_logging(cfg.train.output_dir)
    default_setup(cfg, args)
    explain_missing_compiled_ops()


def main(args) -> Optional[Dict]:
    """Train (or ``--eval-only``: evaluate and export) as ``args`` say, holding ``train.output_dir`` (rank 0,
    ``snnet_core.io.run_dir.lock_run_dir``) from the moment the config is read to the end."""
    with contextlib.ExitStack() as held:
        return run(args, held.enter_context)


def run(args, hold: Callable[[ContextManager], object]) -> Optional[Dict]:
    if not args.eval_only and (args.stitch is not None or args.export_stitch is not None or args.measure_latency):
        raise ValueError("--stitch, --export-stitch and --measure-latency act on a trained model: add --eval-only "
                         "(evaluates train.init_checkpoint, default: the last checkpoint of train.output_dir)")
    if args.eval_only and args.overwrite and args.export_stitch is None:
        raise ValueError("--overwrite replaces the training run in train.output_dir (with --eval-only: exported "
                         "stitches, with --export-stitch): it does not go with --eval-only alone")
    cfg = load_config(args)
    hold(lock_run_dir(cfg.train.output_dir, args.eval_only, comm.is_main_process()))
    replaced = [] if args.eval_only else check_output_dir(cfg.train.output_dir, args.resume, args.overwrite)
    if args.resume and not args.eval_only:
        resume_checkpoint(cfg.train.output_dir)
    register_coco_json_datasets(cfg.get("datasets", {}).get("coco_json", {}))
    check_dataset_files(dataset_names(cfg.dataloader.test) + ([] if args.eval_only else
                                                               dataset_names(cfg.dataloader.train)))
    if not args.eval_only:  # detectron2 would fail with "AssertionError: No valid data found" after model building
        check_trainable(dataset_names(cfg.dataloader.train))
    if replaced and comm.is_main_process():
        clear_run(replaced)  # every check has passed; before log.txt is opened again
    comm.synchronize()
    setup(cfg, args)
    if replaced:
        logger.warning("--overwrite: deleted the previous run's %s",
                       ", ".join(os.path.relpath(p, cfg.train.output_dir) for p in replaced))
    if args.eval_only:
        model = build_model(cfg)
        checkpoint = eval_checkpoint(cfg)
        extras = load_weights(model, checkpoint)
        report = None
        if args.measure_latency and (stitched_backbone(model) is None or args.stitch is None):
            raise ValueError("--measure-latency times the stitches of the per-stitch report: it needs an SN-Net "
                             "detector (a StitchedViTDetBackbone) and --stitch all|pareto|ID[,ID]")
        if stitched_backbone(model) is not None:
            key = "snnet.flops_input_size"
            size, source = eval_size_for_checkpoint(cfg.snnet.flops_input_size, extras.get(EVAL_SIZE),
                                                    command_line_sets(args.opts, key), checkpoint, key)
            if source != "config":
                set_eval_input_size(cfg, model, size)
        export_ids = None
        if args.export_stitch is not None and not export_reads_report(args.export_stitch):
            export_ids = export_selection(args, cfg, model)  # ids: refused before the evaluation, not after
        if stitched_backbone(model) is not None and args.stitch is not None:
            report = do_stitch_report(args, cfg, model, extras.get("iteration"))
        if args.export_stitch is not None:
            do_export(args, cfg, model, export_ids)  # after the report, so pareto / best:G can read it
        if stitched_backbone(model) is None:
            return do_test(cfg, model)
        return report
    do_train(args, cfg)
    return None


def launched_main(args) -> Optional[Dict]:
    """``main`` in a process started by ``launch``: destroys the process groups before the process exits
    (an exit right after the last collective can otherwise abort it, see ``destroy_process_groups``)."""
    try:
        return main(args)
    finally:
        destroy_process_groups()


def build_argument_parser():
    parser = default_argument_parser(epilog=__doc__)
    use_launch_defaults(parser)
    parser.add_argument("--overwrite", action="store_true",
                        help="train afresh into a train.output_dir that holds a run: deletes its checkpoints, logs, "
                             "reports and exported stitches (keeps flops_cache/)")
    parser.add_argument("--stitch", default=None,
                        help="with --eval-only: stitches to evaluate, 'all' (default), 'pareto' or ids '0,1,5'")
    parser.add_argument("--pareto-from", default=None,
                        help="stitch_results.json whose Pareto frontier '--stitch pareto' evaluates "
                             "(default: the report directory's)")
    parser.add_argument("--report-dir", default=None,
                        help="per-stitch report directory (default: OUTPUT_DIR/stitch_report_<test dataset>)")
    parser.add_argument("--export-stitch", default=None, metavar="ID[,ID]|pareto|best:G",
                        help="with --eval-only: write OUTPUT_DIR/stitch_<ID>/{model_final.pth,config.yaml}, a "
                             "standalone detector of that stitch (pareto / best:G read the per-stitch report)")
    add_latency_arguments(parser)
    return parser


def cli(argv: Optional[List[str]] = None) -> None:
    """The command line: ``--num-gpus N`` processes per machine through detectron2's ``launch``, started once the
    config loads and the machine has the processes' devices (``snnet_core.cli.launch_command``)."""
    args = build_argument_parser().parse_args(argv)
    if args.eval_only and args.stitch is None and args.export_stitch is None:
        args.stitch = "all"
    device = load_config(args).train.get("device", "cuda")
    launch_command(launched_main, args, device, "train.device")


if __name__ == "__main__":
    run_command(cli)
