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

import copy
import logging
from typing import Dict, List, Optional, Tuple

import detectron2.data.transforms as T
import torch
from detectron2.config import LazyCall as L
from detectron2.config import instantiate
from detectron2.data import build_detection_test_loader, get_detection_dataset_dicts
from detectron2.utils.registry import locate
from omegaconf import DictConfig, OmegaConf

from projects.snnet_vitdet.console import PROJECT
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
from projects.snnet_vitdet.training import ls_init_detector, stitched_backbone
from snnet_core import FlopsTable, StitchedViT
from snnet_core.cli import run_command
from snnet_core.d2.app import D2App, evaluation_checks, training_checks
from snnet_core.d2.hooks import unwrap
from snnet_core.evaluation.latency_options import LatencyOptions
from snnet_core.io.config_io import Check, check_values, integer, number, pair
from snnet_core.model.stitch_space import route_types_check
from snnet_core.training.data_order import build_resumable_train_loader

logger = logging.getLogger("projects.snnet_vitdet.train_net")

ANCHORS = ("model.backbone.net.vit", "model.backbone.net.fast", "model.backbone.net.slow")  # build_anchor LazyCalls


def model_summary(model: torch.nn.Module) -> str:
    """One line: the detector's class, its backbone (with the number of stitches of an SN-Net) and parameters."""
    backbone = stitched_backbone(model)
    net = backbone if backbone is not None else getattr(unwrap(model).backbone, "net", unwrap(model).backbone)
    stitches = f" ({len(backbone.space)} stitches)" if backbone is not None else ""
    params = sum(p.numel() for p in model.parameters())
    return f"{type(unwrap(model)).__name__} with a {type(net).__name__}{stitches}, {params / 1e6:.2f}M parameters"


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


class DetectionApp(D2App):
    """``train_net.py`` of the detection project: the shared flow (``snnet_core.d2.app``) with Mask R-CNN's
    datasets, checks, FLOPs table, loaders, COCO evaluation and export."""

    kind, project, results_task = "detection", PROJECT, RESULTS_TASK
    export_help = "a standalone detector of that stitch"
    backbone_lora_key = "model.backbone.net.backbone_lora_rank"
    route_types_key = "model.backbone.net.route_types"

    def check_config(self, cfg: DictConfig, training: bool, source: str) -> None:
        """Every value the run reads, against its valid range, before any work (one ``ConfigError`` lists all
        problems): counts, sizes (``snnet.flops_input_size`` a multiple of the patch size), rates, steps,
        thresholds, and remote checkpoints. Keys a config does not hold (a baseline has no ``snnet``, an exported
        stitch's config no ``optimizer``) are skipped."""
        checks = dict(evaluation_checks(), **{"model.roi_heads.num_classes": integer(1),
                                              self.backbone_lora_key: integer(0, note="0: off"),
                                              self.route_types_key: route_types_check()})
        if training:
            updates = cfg.get("lr_multiplier", {}).get("scheduler", {}).get("num_updates")
            checks.update(training_checks())
            checks.update({
                "optimizer.betas": pair(number(0, 1, high_open=True)),
                "lr_multiplier.warmup_length": number(0, 1, note="fraction of the schedule"),
                "lr_multiplier.warmup_factor": number(0, 1, low_open=True),
                "lr_multiplier.scheduler.num_updates": integer(1),
                "lr_multiplier.scheduler.milestones": Check(
                    lambda v: all(integer(1).valid(m) for m in v) and list(v) == sorted(set(v)) and
                    (updates is None or not v or v[-1] < updates),
                    "increasing iterations >= 1, each < lr_multiplier.scheduler.num_updates"),
            })
        check_values(cfg, checks, source, optional=checks, more=self.config_problems(cfg, ANCHORS))

    def prepare_data(self, cfg: DictConfig, training: bool) -> None:
        register_coco_json_datasets(cfg.get("datasets", {}).get("coco_json", {}))
        check_dataset_files(dataset_names(cfg.dataloader.test) + (dataset_names(cfg.dataloader.train) if training
                                                                   else []))
        if training:  # detectron2 would fail with "AssertionError: No valid data found" after model building
            check_trainable(dataset_names(cfg.dataloader.train))

    def test_names(self, cfg: DictConfig) -> List[str]:
        return dataset_names(cfg.dataloader.test)

    def stitched(self, model: torch.nn.Module):
        return stitched_backbone(model)

    def snnet(self, model: torch.nn.Module) -> StitchedViT:
        return stitched_backbone(model).snnet

    def model_summary(self, model: torch.nn.Module) -> str:
        return model_summary(model)

    def flops_table(self, cfg: DictConfig, model: torch.nn.Module) -> FlopsTable:
        return detector_flops_table(model, tuple(cfg.snnet.flops_input_size),
                                    cache_dir=os.path.join(cfg.train.output_dir, "flops_cache"))

    def build_train_loader(self, cfg: DictConfig, seed: int, start_iter: int):
        return build_train_loader(cfg, seed, start_iter)

    def ls_init(self, cfg: DictConfig, model: torch.nn.Module) -> None:
        ls_init_detector(model, build_calibration_loader(cfg), cfg.snnet.ls_init_images)

    def do_test(self, cfg: DictConfig, model: torch.nn.Module) -> Dict:
        return do_test(cfg, model)

    def stitch_report(self, cfg: DictConfig, model: torch.nn.Module, stitch_ids: List[int], table: FlopsTable,
                      report_dir: str, run_key: str, group_size: Optional[int],
                      latency: Optional[LatencyOptions]) -> Dict:
        backbone = stitched_backbone(model)
        return stitch_report(model, backbone.set_stitch, build_test_loader(cfg), instantiate(cfg.dataloader.evaluator),
                             stitch_ids, backbone.space, table, report_dir, run_key, group_size=group_size,
                             latency=latency, title=f"SN-Netv2 Mask R-CNN (ViTDet), GFLOPs at "
                                                    f"{table.input_size[0]}x{table.input_size[1]}")

    def export(self, cfg: DictConfig, model: torch.nn.Module, stitch_id: int) -> Dict[str, str]:
        return export_detector(cfg, model, stitch_id, cfg.train.output_dir, source=cfg.train.init_checkpoint)

    def set_eval_input_size(self, cfg: DictConfig, model: torch.nn.Module, size: Tuple[int, int]) -> None:
        set_eval_input_size(cfg, model, size)


APP = DetectionApp(epilog=__doc__)
main, build_argument_parser, cli = APP.main, APP.build_argument_parser, APP.cli  # the script's entry points
load_config = APP.load_config  # the config file with the command line's overrides, checked


if __name__ == "__main__":
    run_command(cli)
