"""COCO per-stitch AP report: GFLOPs/params of every stitch with the Mask R-CNN head, and per-stitch
bbox/segm COCO metrics (pycocotools) written resumably as JSON/CSV/Markdown/PNG by ``snnet_core``."""
from __future__ import annotations

import logging
import os
from typing import Callable, Dict, List, Mapping, Sequence, Tuple

import torch
import torch.nn as nn
from detectron2.evaluation import DatasetEvaluator, inference_on_dataset, print_csv_format
from detectron2.modeling import GeneralizedRCNN
from detectron2.structures import ImageList
from detectron2.utils import comm

from snnet_core import (
    FlopsTable,
    StitchSpace,
    build_flops_table,
    count_gflops,
    evaluate_stitches,
    load_results,
    pareto_frontier,
)
from snnet_core.atomic_io import write_json_atomic
from snnet_core.report import RESULTS_FILE, plot_metric_vs_gflops

from .backbone import StitchedViTDetBackbone
from .comm_utils import run_on_main

logger = logging.getLogger(__name__)

COCO_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
TASKS = ("bbox", "segm")
RESULTS_TASK = "detection"  # tags results files: another task's report is refused as a pareto source
PRIMARY_METRIC = "bbox_AP"


class _FeatureSource(nn.Module):
    """Stands in for the ViT inside ``SimpleFeaturePyramid``: returns the feature it was handed."""

    def __init__(self, name: str):
        super().__init__()
        self.name = name
        self.feature: torch.Tensor | None = None

    def forward(self, images: torch.Tensor) -> Dict[str, torch.Tensor]:
        return {self.name: self.feature}


class _DetectorHead(nn.Module):
    """The Mask R-CNN after the ViT (pyramid convs, RPN, box and mask heads) at inference, for counting.

    ``forward(last_feat (1, C, H/16, W/16))`` -> ``(boxes (R, 4), scores (R,), masks (R, 1, M, M))``.
    """

    def __init__(self, model: GeneralizedRCNN, input_size: Tuple[int, int]):
        super().__init__()
        self.model = model
        self.input_size = input_size

    def forward(self, feature: torch.Tensor):
        pyramid = self.model.backbone
        net, source = pyramid.net, _FeatureSource(pyramid.in_feature)
        source.feature = feature
        pyramid.net = source
        try:
            images = ImageList(feature.new_zeros(1, 3, *self.input_size), [self.input_size])
            features = pyramid(images.tensor)
            proposals, _ = self.model.proposal_generator(images, features)
            instances, _ = self.model.roi_heads(images, features, proposals)
        finally:
            pyramid.net = net
        out = instances[0]
        return out.pred_boxes.tensor, out.scores, out.pred_masks


def detector_head_cost(model: GeneralizedRCNN, input_size: Tuple[int, int]) -> Tuple[float, int]:
    """GFLOPs and parameters of everything after the ViT at ``input_size`` (H, W).

    Counted with fvcore on one random ``last_feat`` with the box score threshold at 0, so the ROI heads
    run on the full proposal budget and the mask head on the full detection budget
    (``test_topk_per_image``), the worst case of a real image.
    """
    net = model.backbone.net
    stride = net.output_shape()[model.backbone.in_feature].stride
    channels = net.output_shape()[model.backbone.in_feature].channels
    predictor = model.roi_heads.box_predictor
    threshold, predictor.test_score_thresh = predictor.test_score_thresh, 0.0
    try:
        generator = torch.Generator().manual_seed(0)
        feature = torch.randn(1, channels, input_size[0] // stride, input_size[1] // stride, generator=generator)
        device = next(model.parameters()).device
        probe = _DetectorHead(model, input_size).train(model.training)  # count_gflops restores this mode
        gflops = count_gflops(probe, (feature.to(device),))
    finally:
        predictor.test_score_thresh = threshold
    params = sum(p.numel() for p in model.parameters()) - sum(p.numel() for p in net.parameters())
    return gflops, params


def detector_flops_table(model: GeneralizedRCNN, input_size: Tuple[int, int], cache_dir: str | None = None
                         ) -> FlopsTable:
    """Per-stitch GFLOPs/params (M) of the whole detector at ``input_size``: stitched ViT + head."""
    backbone = model.backbone.net
    if not isinstance(backbone, StitchedViTDetBackbone):
        raise TypeError(f"the model's backbone is a {type(backbone).__name__}, not a StitchedViTDetBackbone")
    head_gflops, head_params = detector_head_cost(model, input_size)
    logger.info("Mask R-CNN head at %dx%d: %.1f GFLOPs, %.2fM params", *input_size, head_gflops, head_params / 1e6)
    head_key = f"vitdet-maskrcnn-p{head_params}-g{head_gflops:.6f}"
    return build_flops_table(backbone.snnet, input_size, "features", head_gflops, head_params, head_key, cache_dir)


def flatten_coco_results(results: Mapping[str, Mapping[str, float]]) -> Dict[str, float]:
    """``{"bbox": {"AP": ..}, "segm": {..}}`` -> ``{"bbox_AP": .., ..., "segm_APl": ..}`` (COCO summary only)."""
    missing = [t for t in TASKS if t not in results]
    if missing:
        raise KeyError(f"COCO evaluation returned no {missing} results (is the evaluator's `tasks` set?)")
    return {f"{task}_{m}": float(results[task][m]) for task in TASKS for m in COCO_METRICS}


def evaluate_model(model: nn.Module, data_loader, evaluator: DatasetEvaluator) -> Dict[str, float]:
    """COCO bbox/segm summary metrics of ``model`` on ``data_loader`` (all ranks; ``{}`` off the main one)."""
    results = inference_on_dataset(model, data_loader, evaluator)
    if not comm.is_main_process():
        return {}
    print_csv_format(results)
    return flatten_coco_results(results)


def stitch_report(
    model: nn.Module,
    set_stitch: Callable[[int], object],
    data_loader,
    evaluator: DatasetEvaluator,
    stitch_ids: Sequence[int],
    space: StitchSpace,
    flops: FlopsTable,
    output_dir: str,
    run_key: str,
    title: str = "SN-Netv2 Mask R-CNN (ViTDet)",
) -> Dict[str, dict]:
    """Evaluate every stitch of ``stitch_ids`` (resumably) and write the per-stitch AP report.

    Runs on every rank: ``model`` is evaluated data-parallel, the main process writes
    ``stitch_results.json`` after each stitch, then ``stitch_report.{csv,md,png,json}`` and
    ``stitch_report_segm.png``. Stitches already in ``output_dir`` (same ``run_key``) are skipped.

    Returns the results record on the main process, ``{}`` elsewhere.
    """
    def pending() -> List[int]:
        record = load_results(output_dir)
        if record and record.get("run_key") != run_key:
            raise RuntimeError(
                f"{os.path.join(output_dir, RESULTS_FILE)} holds results of another run "
                f"({record.get('run_key')!r}, this one is {run_key!r}); choose a new output directory"
            )
        done = set(record.get("stitches", {})) if record else set()
        return [int(s) for s in stitch_ids if str(int(s)) not in done]

    todo = run_on_main(pending)
    logger.info("per-stitch evaluation: %d of %d stitches to evaluate", len(todo), len(stitch_ids))

    def evaluate(stitch_id: int) -> Dict[str, float]:
        stitch = set_stitch(stitch_id)
        logger.info("evaluating stitch %d (%s)", stitch_id, getattr(stitch, "route", stitch))
        return evaluate_model(model, data_loader, evaluator)

    if not comm.is_main_process():
        for stitch_id in todo:
            evaluate(stitch_id)
        return {}
    record = evaluate_stitches(evaluate, todo, space, flops, output_dir, PRIMARY_METRIC, True, run_key, title,
                               task=RESULTS_TASK, resume=False)  # todo: worked out above, the same list on every rank
    write_frontier_summary(record, output_dir, title)
    return record


def write_frontier_summary(record: Mapping, output_dir: str, title: str) -> Dict[str, List[int]]:
    """``stitch_report.json`` (rows with bbox/segm on-frontier flags) and the segm AP plot."""
    rows = {int(k): v for k, v in record["stitches"].items()}
    cost = {k: r["gflops"] for k, r in rows.items()}
    frontiers = {task: pareto_frontier(cost, {k: r[f"{task}_AP"] for k, r in rows.items()}) for task in TASKS}
    table = [dict(r, **{f"on_frontier_{t}": r["id"] in frontiers[t] for t in TASKS})
             for r in sorted(rows.values(), key=lambda r: (r["gflops"], r["id"]))]
    write_json_atomic(os.path.join(output_dir, "stitch_report.json"),
                      {"title": title, "run_key": record["run_key"], "frontier": frontiers, "stitches": table})
    if rows:
        plot_metric_vs_gflops(rows, frontiers["segm"], "segm_AP", os.path.join(output_dir, "stitch_report_segm.png"),
                              title)
    return frontiers
