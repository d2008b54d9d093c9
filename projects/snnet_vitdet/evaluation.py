"""COCO per-stitch AP report: GFLOPs/params of every stitch with the Mask R-CNN head, and per-stitch
bbox/segm COCO metrics (pycocotools) written resumably as JSON/CSV/Markdown/PNG by ``snnet_core``.

The driver is detectron2's shared one (``snnet_core.d2.evaluation``); this module gives it the detection task:
stitches evaluated in groups sharing route prefixes (``evaluate_stitch_group``) run every shared backbone prefix
once per batch (``snnet_core.run_stitches``), then the pyramid and heads per stitch (``stitch_predictions``), into
one COCO evaluator per stitch. ``stitch_report(group_size=None)`` keeps the per-stitch loop (one pass per
stitch), which gives the same predictions and metrics.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from typing import Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from detectron2.evaluation import DatasetEvaluator, inference_context, print_csv_format
from detectron2.modeling import GeneralizedRCNN
from detectron2.structures import ImageList, Instances
from detectron2.utils import comm

from snnet_core import (
    ExportedStitch,
    FlopsTable,
    StitchSpace,
    build_flops_table,
    count_gflops,
    run_stitches,
    pareto_frontier,
)
from snnet_core.d2 import evaluation as d2_evaluation
from snnet_core.d2.evaluation import StitchTask
from snnet_core.evaluation.finite_inputs import NonFiniteImages
from snnet_core.evaluation.latency import time_stitches
from snnet_core.evaluation.latency_options import LatencyOptions
from snnet_core.evaluation.report import plot_metric_vs_gflops, remove_report_temporaries
from snnet_core.io.atomic_io import write_json_atomic

from .backbone import StitchedViTDetBackbone
from .console import PROJECT

logger = logging.getLogger(__name__)

COCO_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
TASKS = ("bbox", "segm")
RESULTS_TASK = "detection"  # tags results files: another task's report is refused as a pareto source
PRIMARY_METRIC = "bbox_AP"
# why pycocotools' summary comes out NaN (detectron2 also gives NaN for every metric of a model detecting nothing)
_COCO_NAN = "NaN in COCO when the test set has no annotated object{} or nothing is detected"
NON_FINITE_REASONS = {f"{task}_{metric}": _COCO_NAN.format(objects) for task in TASKS for metric, objects in
                      (("AP", ""), ("AP50", ""), ("AP75", ""), ("APs", " of area < 32x32 px"),
                       ("APm", " of area 32x32 to 96x96 px"), ("APl", " of area > 96x96 px"))}


class _FeatureSource(nn.Module):
    """Stands in for the ViT inside ``SimpleFeaturePyramid``: returns the feature it was handed."""

    def __init__(self, name: str, feature: torch.Tensor):
        super().__init__()
        self.name = name
        self.feature = feature

    def forward(self, images: torch.Tensor) -> Dict[str, torch.Tensor]:
        return {self.name: self.feature}


def head_inference(model: GeneralizedRCNN, images: ImageList, last_feat: torch.Tensor) -> List[Instances]:
    """What ``model.inference`` does after its ViT, on a given ViT output: the pyramid (on ``last_feat``
    ``(B, C, H/16, W/16)``), RPN and ROI heads -> one ``Instances`` per image, before rescaling to the input
    size (``GeneralizedRCNN._postprocess``). ``images``: the preprocessed batch the feature came from."""
    pyramid = model.backbone
    net = pyramid.net
    pyramid.net = _FeatureSource(pyramid.in_feature, last_feat)
    try:
        features = pyramid(images.tensor)
        proposals, _ = model.proposal_generator(images, features, None)
        instances, _ = model.roi_heads(images, features, proposals, None)
    finally:
        pyramid.net = net
    return instances


class _DetectorHead(nn.Module):
    """The Mask R-CNN after the ViT (pyramid convs, RPN, box and mask heads) at inference, for counting.

    ``forward(last_feat (1, C, H/16, W/16))`` -> ``(boxes (R, 4), scores (R,), masks (R, 1, M, M))``.
    """

    def __init__(self, model: GeneralizedRCNN, input_size: Tuple[int, int]):
        super().__init__()
        self.model = model
        self.input_size = input_size

    def forward(self, feature: torch.Tensor):
        images = ImageList(feature.new_zeros(1, 3, *self.input_size), [self.input_size])
        out = head_inference(self.model, images, feature)[0]
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
    with all_detections(model):
        generator = torch.Generator().manual_seed(0)
        feature = torch.randn(1, channels, input_size[0] // stride, input_size[1] // stride, generator=generator)
        device = next(model.parameters()).device
        probe = _DetectorHead(model, input_size).train(model.training)  # count_gflops restores this mode
        gflops = count_gflops(probe, (feature.to(device),))
    return gflops, head_params(model)


@contextlib.contextmanager
def all_detections(model: GeneralizedRCNN) -> Iterator[None]:
    """The box score threshold at 0 inside the block: the ROI heads keep the full detection budget
    (``test_topk_per_image``) for the mask head, the worst case of a real image."""
    predictor = model.roi_heads.box_predictor
    threshold, predictor.test_score_thresh = predictor.test_score_thresh, 0.0
    try:
        yield
    finally:
        predictor.test_score_thresh = threshold


def head_params(model: GeneralizedRCNN) -> int:
    """Parameters of everything after the ViT (pyramid, RPN, ROI heads)."""
    return sum(p.numel() for p in model.parameters()) - sum(p.numel() for p in model.backbone.net.parameters())


def head_signature(model: GeneralizedRCNN, input_size: Tuple[int, int]) -> str:
    """A digest of everything the head's cost depends on: ``input_size``, the type, ``extra_repr`` and plain
    settings (e.g. ``pre_nms_topk``, ``test_topk_per_image``) of every module after the ViT, and the names,
    shapes and dtypes of their parameters and buffers. Weight values do not enter (they do not change the
    count)."""
    net = model.backbone.net
    skip = {id(m) for m in net.modules()}
    lines = [f"input_size={tuple(int(s) for s in input_size)}"]
    for name, module in model.named_modules():
        if id(module) in skip:
            continue
        settings = {k: v for k, v in vars(module).items()
                    if not k.startswith("_") and k != "training" and isinstance(v, (bool, int, float, str, tuple,
                                                                                     list, dict))}
        lines.append(f"{name}: {type(module).__qualname__} {module.extra_repr()} {sorted(settings.items())!r}")
        for kind, tensors in (("param", module.named_parameters(recurse=False)),
                              ("buffer", module.named_buffers(recurse=False))):
            lines += [f"  {kind} {n} {tuple(t.shape)} {t.dtype}" for n, t in tensors]
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


def cached_head_cost(model: GeneralizedRCNN, input_size: Tuple[int, int], cache_dir: Optional[str] = None
                     ) -> Tuple[float, int]:
    """``detector_head_cost``, cached in ``cache_dir/head_cost_<head_signature>.json``: a later start with
    the same head and input size reads it instead of tracing the head again (tens of seconds at 1024).

    A cache file that is unreadable or disagrees with the model (another signature, input size or
    parameter count) is recounted and rewritten, with a warning naming it.
    """
    if cache_dir is None:
        return detector_head_cost(model, input_size)
    signature = head_signature(model, input_size)
    path = os.path.join(cache_dir, f"head_cost_{signature}.json")
    params = head_params(model)
    expected = {"signature": signature, "input_size": [int(s) for s in input_size], "params": params}
    if os.path.isfile(path):
        try:
            with open(path) as f:
                entry = json.load(f)
            stored = {k: entry.get(k) for k in expected}
            if stored == expected and isinstance(entry.get("gflops"), float):
                return entry["gflops"], params
            problem = f"it holds {stored}, this head is {expected}"
        except (OSError, ValueError, AttributeError) as exc:
            problem = f"it is unreadable ({exc})"
        logger.warning("head cost cache %s: %s; counting again and rewriting it", path, problem)
    gflops, params = detector_head_cost(model, input_size)
    write_json_atomic(path, dict(expected, gflops=float(gflops)))
    return gflops, params


def detector_flops_table(model: GeneralizedRCNN, input_size: Tuple[int, int], cache_dir: str | None = None
                         ) -> FlopsTable:
    """Per-stitch GFLOPs/params (M) of the whole detector at ``input_size``: stitched ViT + head.

    With ``cache_dir`` both the backbone table and the head's cost are cached, so a later start counts
    nothing (well under a second)."""
    backbone = stitched_detector_backbone(model)
    gflops, params = cached_head_cost(model, input_size, cache_dir)
    logger.info("Mask R-CNN head at %dx%d: %.1f GFLOPs, %.2fM params", *input_size, gflops, params / 1e6)
    head_key = f"vitdet-maskrcnn-p{params}-g{gflops:.6f}"
    return build_flops_table(backbone.snnet, input_size, "features", gflops, params, head_key, cache_dir)


def flatten_coco_results(results: Mapping[str, Mapping[str, float]]) -> Dict[str, float]:
    """``{"bbox": {"AP": ..}, "segm": {..}}`` -> ``{"bbox_AP": .., ..., "segm_APl": ..}`` (COCO summary only)."""
    missing = [t for t in TASKS if t not in results]
    if missing:
        raise KeyError(f"COCO evaluation returned no {missing} results (is the evaluator's `tasks` set?)")
    return {f"{task}_{m}": float(results[task][m]) for task in TASKS for m in COCO_METRICS}


def summarize(results: Mapping[str, Mapping[str, float]]) -> Dict[str, float]:
    """An evaluator's results printed (detectron2's CSV tables) and flattened (``flatten_coco_results``);
    ``{}`` off the main process."""
    if not comm.is_main_process():
        return {}
    print_csv_format(results)
    return flatten_coco_results(results)


LEFT_OUT = "COCO still counts their annotations: every stitch's AP is that of finding nothing in them"


def evaluate_model(model: nn.Module, data_loader, evaluator: DatasetEvaluator,
                   non_finite: Optional[NonFiniteImages] = None) -> Dict[str, float]:
    """COCO bbox/segm summary metrics of ``model`` on ``data_loader`` (all ranks; ``{}`` off the main one); images
    holding NaN/inf are not run and named in one warning (``snnet_core.d2.evaluation.evaluate_model``)."""
    return d2_evaluation.evaluate_model(model, data_loader, evaluator, summarize, LEFT_OUT, non_finite)


def stitched_detector_backbone(model: GeneralizedRCNN) -> StitchedViTDetBackbone:
    """The stitched ViT inside ``model`` (``TypeError`` for another backbone)."""
    backbone = getattr(model.backbone, "net", None)
    if not isinstance(backbone, StitchedViTDetBackbone):
        raise TypeError(f"the model's backbone is a {type(backbone).__name__}, not a StitchedViTDetBackbone")
    return backbone


def stitch_predictions(model: GeneralizedRCNN, inputs: List[dict], stitch_ids: Sequence[int]
                       ) -> Iterator[Tuple[int, List[dict]]]:
    """Yield ``(stitch_id, outputs)`` for every stitch of ``stitch_ids``, ``outputs`` being what
    ``model(inputs)`` returns at inference with that stitch selected (one ``{"instances": Instances}`` per
    image, at its input size).

    The batch is preprocessed once and the stitched ViT runs through ``snnet_core.run_stitches`` (every
    shared route prefix once; stitches come in trie order), then the pyramid and heads per stitch. Call in
    eval mode under ``torch.no_grad()``.
    """
    backbone = stitched_detector_backbone(model)
    images = model.preprocess_image(inputs)
    for stitch_id, route in run_stitches(backbone.snnet, images.tensor, stitch_ids):
        instances = head_inference(model, images, route.feature_maps()[0])
        yield stitch_id, GeneralizedRCNN._postprocess(instances, inputs, images.image_sizes)


def deployed_detector(model: GeneralizedRCNN, stitch: ExportedStitch) -> Callable[[List[dict]], List[dict]]:
    """Stitch ``stitch`` (``snnet_core.export_stitch`` of ``model``'s SN-Net) deployed as a detector: what the
    exported detector of ``export.export_detector`` computes (its ``StitchViTDetBackbone`` runs the exported
    stitch), built in memory around ``model``'s pyramid and heads. Call it in eval mode under ``no_grad``."""
    def detect(inputs: List[dict]) -> List[dict]:
        images = model.preprocess_image(inputs)
        instances = head_inference(model, images, stitch(images.tensor).feature_maps()[0])
        return GeneralizedRCNN._postprocess(instances, inputs, images.image_sizes)

    return detect


def time_detector_stitches(model: GeneralizedRCNN, stitch_ids: Sequence[int], options: LatencyOptions
                           ) -> Dict[int, float]:
    """Median milliseconds of ``model(inputs)`` for each stitch deployed alone (``deployed_detector``) on a batch
    of ``options.batch`` random images of ``options.size``, on ``options.device``.

    Timed at the full detection budget (``all_detections``), as the GFLOPs are counted: random images would
    otherwise give the mask head few boxes and understate a real image's latency.
    """
    height, width = options.size
    generator = torch.Generator().manual_seed(0)
    inputs = [{"image": torch.randint(0, 256, (3, height, width), generator=generator, dtype=torch.uint8)
               .to(options.device), "height": height, "width": width} for _ in range(options.batch)]
    with inference_context(model), all_detections(model):
        timed = time_stitches(stitched_detector_backbone(model).snnet, stitch_ids, [inputs],
                              lambda stitch: deployed_detector(model, stitch), options.warmup, options.runs,
                              options.amp, options.device)
    return timed.ms


def evaluate_stitch_group(model: GeneralizedRCNN, data_loader, evaluator: DatasetEvaluator,
                          stitch_ids: Sequence[int], non_finite: Optional[NonFiniteImages] = None
                          ) -> Dict[int, Dict[str, float]]:
    """COCO metrics of every stitch of ``stitch_ids`` from one pass over ``data_loader``: each batch through
    ``stitch_predictions`` into a copy of ``evaluator`` per stitch (``snnet_core.d2.evaluation.evaluate_stitch_group``).

    Memory: the held predictions of ``len(stitch_ids)`` stitches (see docs/detection.md, "Evaluating many stitches").
    """
    def predict(model: GeneralizedRCNN, inputs: List[dict], ids: Sequence[int]):
        return ((stitch_id, inputs, outputs) for stitch_id, outputs in stitch_predictions(model, inputs, ids))

    return d2_evaluation.evaluate_stitch_group(model, data_loader, evaluator, stitch_ids, predict, summarize,
                                               LEFT_OUT, non_finite)


def detection_task() -> StitchTask:
    """The detection task of the shared per-stitch driver (this module's functions, looked up when called)."""
    return StitchTask(
        name=RESULTS_TASK, primary_metric=PRIMARY_METRIC, project=PROJECT,
        snnet=lambda model: stitched_detector_backbone(model).snnet,
        evaluate_model=evaluate_model, evaluate_group=evaluate_stitch_group, time_stitches=time_detector_stitches,
        non_finite_reasons=NON_FINITE_REASONS, finish=write_frontier_summary)


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
    group_size: Optional[int] = None,
    latency: Optional[LatencyOptions] = None,
) -> Dict[str, dict]:
    """Evaluate every stitch of ``stitch_ids`` (resumably) and write the per-stitch AP report
    (``snnet_core.d2.evaluation.stitch_report`` with ``detection_task``): ``stitch_report.{csv,md,png,json}`` and
    ``stitch_report_segm.png``; detectron2's and pycocotools' output of each evaluation goes to the log file only.

    ``group_size``: ``None``, the per-stitch loop (``set_stitch``, then ``model`` over the test set); ``N``,
    ``model`` is a ``GeneralizedRCNN`` with a ``StitchedViTDetBackbone`` evaluated ``N`` stitches per pass sharing
    route prefixes. ``latency``: each stitch timed as deployed (``time_detector_stitches``). Returns the results
    record on the main process, ``{}`` elsewhere.
    """
    return d2_evaluation.stitch_report(model, set_stitch, data_loader, evaluator, stitch_ids, space, flops,
                                       output_dir, run_key, detection_task(), title, group_size, latency)


def write_frontier_summary(record: Mapping, output_dir: str, title: str) -> Dict[str, List[int]]:
    """``stitch_report.json`` (rows with bbox/segm on-frontier flags) and the segm AP plot (``detection_task``'s
    ``finish``); call it under ``file_lock`` of the results file (it removes the temporaries killed writes of both
    files left)."""
    remove_report_temporaries(output_dir, ("stitch_report.json", "stitch_report_segm.png"))
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
