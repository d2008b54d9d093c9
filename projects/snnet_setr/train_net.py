#!/usr/bin/env python
"""SN-Netv2 SETR-Naive training and per-stitch mIoU evaluation (ADE20K, COCO-Stuff-10K), detectron2 LazyConfig style.

Training (LS init of the stitching layers before the first iteration, a ROS-sampled stitch per iteration) into
``train.output_dir`` (the layout of ``snnet_core.io.run_dir``; a run already there is continued with ``--resume`` or
replaced with ``--overwrite``)::

    python projects/snnet_setr/train_net.py --num-gpus 8 \\
        --config-file projects/snnet_setr/configs/ADE20K/setr_naive_snnetv2_deit3_s_l_160k.py \\
        [--resume | --overwrite] train.output_dir=output/setr_snnetv2_s_l [key=value ...]

Per-stitch mIoU / mAcc / aAcc report of a trained model (``--stitch all``, ``pareto`` or ids ``0,1,5``) into
``OUTPUT_DIR/stitch_report_<test set>/``; the weights are ``train.init_checkpoint``, by default the checkpoint
``OUTPUT_DIR/last_checkpoint`` names (GFLOPs at the ``snnet.flops_input_size`` recorded in it at training)::

    python projects/snnet_setr/train_net.py --num-gpus 8 --eval-only --stitch all \\
        --config-file ... train.output_dir=output/setr_snnetv2_s_l

The console shows one line per stitch, a progress bar and the Pareto frontier; ``OUTPUT_DIR/log.txt`` also gets
detectron2's per-class IoU tables of every stitch, its environment report and the model's module tree.

``--export-stitch ID`` writes ``OUTPUT_DIR/stitch_<ID>/{model_final.pth,config.yaml}``, a standalone segmentor
of that stitch; ``--measure-latency`` adds each stitch's latency as deployed, on this device, to the report.

The anchor baselines (``setr_naive_deit3_{s,b,l}_*.py``) train and evaluate the same way.
"""
from __future__ import annotations

import os
import sys
import warnings

# run as a script, the repository's packages (snnet_core, projects, datasets) are imported from the
# checkout: only snnet_core is installed, so that `projects`/`datasets` shadow nothing elsewhere
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated", category=FutureWarning)  # fvcore
# detectron2's builtin datasets (ade20k_sem_seg_*) live under $DETECTRON2_DATASETS; its default, ./datasets, is
# this repository's generator package, so real data goes to ./data unless the variable is set
os.environ.setdefault("DETECTRON2_DATASETS", "data")

import copy
import logging
from typing import Dict, List, Optional, Tuple

import torch
from detectron2.config import instantiate
from detectron2.utils.registry import locate
from omegaconf import DictConfig

from projects.snnet_setr.data import check_sem_seg_datasets, dataset_names, register_sem_seg_datasets
from projects.snnet_setr.evaluation import PROJECT, RESULTS_TASK, evaluate_model, segmentation_task
from projects.snnet_setr.export import export_segmentor
from projects.snnet_setr.model import setr_flops_table
from projects.snnet_setr.training import ls_init_setr, snnet_of, stitched_setr
from snnet_core import FlopsTable, StitchedViT
from snnet_core.cli import run_command
from snnet_core.d2.app import D2App, evaluation_checks, training_checks
from snnet_core.d2.console import stitch_evaluation_output
from snnet_core.d2.evaluation import stitch_report
from snnet_core.d2.hooks import unwrap
from snnet_core.evaluation.latency_options import LatencyOptions
from snnet_core.io.config_io import Check, check_values, integer, number, pair
from snnet_core.model.stitch_space import route_types_check
from snnet_core.training.data_order import build_resumable_train_loader

logger = logging.getLogger("projects.snnet_setr.train_net")

NUM_CLASSES = "model.decode_head.num_classes"
# build_anchor LazyCalls: a baseline's ViT, an SN-Net's anchors
ANCHORS = ("model.backbone.vit", "model.backbone.fast", "model.backbone.slow")
CALIBRATION_SEED = 1  # the LS-init images: the training stream of another seed than training's (see ls_init)


def _resumable(loader_cfg) -> bool:
    target = loader_cfg._target_
    return (locate(target) if isinstance(target, str) else target) is build_resumable_train_loader


def build_train_loader(cfg, seed: int, start_iter: int):
    """``dataloader.train`` from iteration ``start_iter`` on. With ``build_resumable_train_loader`` (the recipes'
    loader) batch ``i`` is a pure function of ``(seed, i)``, so ``--resume`` is exact."""
    loader_cfg = cfg.dataloader.train
    if _resumable(loader_cfg):
        loader_cfg.update(seed=seed, start_iter=start_iter)
    else:
        logger.warning("dataloader.train is not build_resumable_train_loader: a resumed run will not see the "
                       "data of an uninterrupted one")
    return instantiate(loader_cfg)


def do_test(cfg, model: torch.nn.Module, stitch_ids: Optional[List[int]] = None) -> Dict:
    """mIoU / mAcc / aAcc on ``dataloader.test``: of the model (baselines) or of each of ``stitch_ids`` (default
    ``snnet.eval_stitches``) as ``{"stitch<id>": {...}}``."""
    loader, evaluator = instantiate(cfg.dataloader.test), instantiate(cfg.dataloader.evaluator)
    setr = stitched_setr(model)
    if setr is None:
        with stitch_evaluation_output(PROJECT):  # detectron2's per-class tables: log.txt only
            metrics = evaluate_model(model, loader, evaluator)
        logger.info("%s", ", ".join(f"{k} {v:.2f}" for k, v in metrics.items()))
        return metrics
    if stitch_ids is None:
        stitch_ids = setr.space.parse_selection(cfg.snnet.eval_stitches)
    selected, results = setr.stitch_id, {}
    for stitch_id in stitch_ids:
        setr.set_stitch(stitch_id)
        results[f"stitch{stitch_id}"] = evaluate_model(model, loader, evaluator)
    setr.set_stitch(selected)
    return results


class SegmentationApp(D2App):
    """``train_net.py`` of the segmentation project: the shared flow (``snnet_core.d2.app``) with SETR's datasets,
    checks, FLOPs table, loaders, mIoU evaluation and export."""

    kind, project, results_task = "segmentation", PROJECT, RESULTS_TASK
    export_help = "a standalone segmentor of that stitch"
    backbone_lora_key = "model.backbone.backbone_lora_rank"
    route_types_key = "model.backbone.route_types"

    def check_config(self, cfg: DictConfig, training: bool, source: str) -> None:
        """Every value the run reads, against its valid range, before any work (one ``ConfigError`` lists all
        problems). Keys a config does not hold (a baseline has no ``snnet``, an exported stitch's config no
        ``optimizer``) are skipped."""
        checks = dict(evaluation_checks(), **{
            NUM_CLASSES: integer(1), "model.crop_size": pair(integer(1)), "model.test_stride": pair(integer(1)),
            self.backbone_lora_key: integer(0, note="0: off"), self.route_types_key: route_types_check(),
        })
        if training:
            checks.update(training_checks())
            checks.update({
                "optimizer.momentum": number(0, 1, high_open=True),
                "lr_multiplier.max_iter": integer(1), "lr_multiplier.power": number(0, low_open=True),
                "lr_multiplier.eta_min": number(0),
                "model.aux_loss_weight": number(0),
                "train.ddp.find_unused_parameters": Check(lambda v: v is True or v is False, "true or false"),
            })
        check_values(cfg, checks, source, optional=checks, more=self.config_problems(cfg, ANCHORS))

    def prepare_data(self, cfg: DictConfig, training: bool) -> None:
        register_sem_seg_datasets(cfg.get("datasets", {}).get("sem_seg", {}))
        names = self.test_names(cfg) + (dataset_names(cfg.dataloader.train) if training else [])
        check_sem_seg_datasets(list(dict.fromkeys(names)), int(cfg.model.decode_head.num_classes), NUM_CLASSES)

    def test_names(self, cfg: DictConfig) -> List[str]:
        return dataset_names(cfg.dataloader.test)

    def stitched(self, model: torch.nn.Module):
        return stitched_setr(model)

    def snnet(self, model: torch.nn.Module) -> StitchedViT:
        return snnet_of(model)

    def flops_table(self, cfg: DictConfig, model: torch.nn.Module) -> FlopsTable:
        return setr_flops_table(unwrap(model), tuple(cfg.snnet.flops_input_size),
                                cache_dir=os.path.join(cfg.train.output_dir, "flops_cache"))

    def build_train_loader(self, cfg: DictConfig, seed: int, start_iter: int):
        return build_train_loader(cfg, seed, start_iter)

    def ls_init(self, cfg: DictConfig, model: torch.nn.Module) -> None:
        """Upstream initialises the stitching layers from training batches (augmented crops, as trained on): here
        from the training stream of ``CALIBRATION_SEED`` (the training data itself is untouched)."""
        loader_cfg = copy.deepcopy(cfg.dataloader.train)
        if _resumable(loader_cfg):
            loader_cfg.update(seed=CALIBRATION_SEED, start_iter=0)
        ls_init_setr(model, instantiate(loader_cfg), cfg.snnet.ls_init_images)

    def do_test(self, cfg: DictConfig, model: torch.nn.Module) -> Dict:
        return do_test(cfg, model)

    def stitch_report(self, cfg: DictConfig, model: torch.nn.Module, stitch_ids: List[int], table: FlopsTable,
                      report_dir: str, run_key: str, group_size: Optional[int],
                      latency: Optional[LatencyOptions]) -> Dict:
        setr = stitched_setr(model)
        return stitch_report(model, setr.set_stitch, instantiate(cfg.dataloader.test),
                             instantiate(cfg.dataloader.evaluator), stitch_ids, setr.space, table, report_dir,
                             run_key, segmentation_task(),
                             f"SN-Netv2 SETR-Naive, GFLOPs at {table.input_size[0]}x{table.input_size[1]}",
                             group_size, latency)

    def export(self, cfg: DictConfig, model: torch.nn.Module, stitch_id: int) -> Dict[str, str]:
        return export_segmentor(cfg, model, stitch_id, cfg.train.output_dir, source=cfg.train.init_checkpoint)

    def set_eval_input_size(self, cfg: DictConfig, model: torch.nn.Module, size: Tuple[int, int]) -> None:
        """The GFLOPs column at ``size`` ``(H, W)``, the input size of training (its crop, one sliding window)."""
        cfg.snnet.flops_input_size = [int(size[0]), int(size[1])]


APP = SegmentationApp(epilog=__doc__)
main, build_argument_parser, cli = APP.main, APP.build_argument_parser, APP.cli  # the script's entry points


if __name__ == "__main__":
    run_command(cli)
