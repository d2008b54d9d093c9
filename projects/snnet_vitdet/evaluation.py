"""COCO per-stitch AP report: GFLOPs/params of every stitch with the Mask R-CNN head, and per-stitch
bbox/segm COCO metrics (pycocotools) written resumably as JSON/CSV/Markdown/PNG by ``snnet_core``.

Stitches are evaluated in groups sharing route prefixes (``evaluate_stitch_group``): one pass over the test
set per group runs every shared backbone prefix once per batch (``snnet_core.run_stitches``), then the
pyramid and heads per stitch, into one COCO evaluator per stitch. ``stitch_report(group_size=None)`` keeps
the per-stitch loop (one pass per stitch), which gives the same predictions and metrics.
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import os
import time
from contextlib import ExitStack
from typing import Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from detectron2.evaluation import DatasetEvaluator, inference_context, inference_on_dataset, print_csv_format
from detectron2.modeling import GeneralizedRCNN
from detectron2.structures import ImageList, Instances
from detectron2.utils import comm
from detectron2.utils.logger import log_every_n_seconds

from snnet_core import (
    ExportedStitch,
    FlopsTable,
    StitchSpace,
    build_flops_table,
    count_gflops,
    evaluate_stitches,
    run_stitches,
    load_results,
    pareto_frontier,
)
from snnet_core.io.atomic_io import file_lock, write_json_atomic
from snnet_core.distributed import run_on_main
from snnet_core.evaluation.finite_inputs import NonFiniteImages
from snnet_core.evaluation.latency import LATENCY_COLUMN, add_latency_column, time_stitches
from snnet_core.evaluation.latency_options import LatencyOptions
from snnet_core.evaluation.prefix_trie import stitch_groups
from snnet_core.progress import AdvancingLoader, advance, loader_images
from snnet_core.evaluation.report import RESULTS_FILE, evaluate_stitch_groups, plot_metric_vs_gflops, remove_report_temporaries

from .backbone import StitchedViTDetBackbone
from .console import stitch_evaluation_output

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


def finite_inputs(inputs: List[dict], non_finite: NonFiniteImages) -> List[dict]:
    """The dicts of a batch whose ``image`` holds no NaN/inf (the others are recorded in ``non_finite``)."""
    kept = non_finite.keep([d["image"] for d in inputs],
                           lambda i: str(inputs[i].get("file_name", f"image id {inputs[i].get('image_id')}")))
    return inputs if len(kept) == len(inputs) else [inputs[i] for i in kept]


class FiniteLoader:
    """``loader``'s batches without the images holding NaN/inf (``finite_inputs``), batches left empty skipped;
    its ``len`` is ``loader``'s. The recorded images are named once the pass is over."""

    def __init__(self, loader, non_finite: NonFiniteImages):
        self.loader, self.non_finite = loader, non_finite

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[List[dict]]:
        for inputs in self.loader:
            kept = finite_inputs(inputs, self.non_finite)
            if kept:
                yield kept
        self.non_finite.warn(logger, LEFT_OUT)


def evaluate_model(model: nn.Module, data_loader, evaluator: DatasetEvaluator,
                   non_finite: Optional[NonFiniteImages] = None) -> Dict[str, float]:
    """COCO bbox/segm summary metrics of ``model`` on ``data_loader`` (all ranks; ``{}`` off the main one); each
    batch moves the per-stitch evaluation's progress bar (``snnet_core.progress``). Images holding NaN/inf are not
    run and named in one warning (``non_finite``: the evaluation's record, one warning for all its passes)."""
    loader = FiniteLoader(AdvancingLoader(data_loader, comm.get_world_size()), non_finite or NonFiniteImages())
    return summarize(inference_on_dataset(model, loader, evaluator))


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
    """COCO metrics of every stitch of ``stitch_ids`` from one pass over ``data_loader``.

    Each batch goes through ``stitch_predictions`` into a copy of ``evaluator`` per stitch (a shallow copy
    after ``reset()``: the copies share the ground truth, each holds its own predictions; this is how
    detectron2's ``COCOEvaluator`` resets). Runs on every rank under ``launch``: each rank predicts its
    shard of the images and every evaluator gathers them to the main process, stitch by stitch in the
    order of ``stitch_ids``. Returns ``{stitch_id: metrics}`` on the main process, ``{}`` elsewhere.

    Memory: the held predictions of ``len(stitch_ids)`` stitches (see docs/detection.md, "Evaluating many stitches").
    Images holding NaN/inf are not run and named in one warning, as in ``evaluate_model``.
    """
    non_finite = NonFiniteImages() if non_finite is None else non_finite
    evaluators = {}
    for stitch_id in stitch_ids:
        evaluators[stitch_id] = copy.copy(evaluator)
        evaluators[stitch_id].reset()
    total, start = len(data_loader), time.perf_counter()
    with ExitStack() as stack:
        stack.enter_context(inference_context(model))
        stack.enter_context(torch.no_grad())
        for index, batch in enumerate(data_loader):
            inputs = finite_inputs(batch, non_finite)
            for stitch_id, outputs in stitch_predictions(model, inputs, stitch_ids) if inputs else ():
                evaluators[stitch_id].process(inputs, outputs)
            advance(len(batch) * len(stitch_ids) * comm.get_world_size())  # the report's bar counts every rank
            log_every_n_seconds(logging.INFO, f"stitches {list(stitch_ids)}: batch {index + 1}/{total}, "
                                f"{(time.perf_counter() - start) / (index + 1):.2f} s/batch", n=10, name=__name__)
    non_finite.warn(logger, LEFT_OUT)
    metrics = {stitch_id: summarize(evaluators[stitch_id].evaluate()) for stitch_id in stitch_ids}
    return metrics if comm.is_main_process() else {}


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
    """Evaluate every stitch of ``stitch_ids`` (resumably) and write the per-stitch AP report.

    Runs on every rank: the images are split across ranks and gathered by the evaluators; the main
    process merges each stitch's row into ``stitch_results.json`` as soon as it has it, then writes
    ``stitch_report.{csv,md,png,json}`` and ``stitch_report_segm.png``. Stitches already in ``output_dir``
    (same ``run_key``) are skipped. The console shows one line per stitch, a progress bar over test images x
    stitches that moves per batch, one line naming the metrics that came out NaN (``NON_FINITE_REASONS``) and the
    Pareto frontier; detectron2's and pycocotools' output of each evaluation goes to the log file only
    (``console.stitch_evaluation_output``).

    Args:
        group_size: ``None``: the per-stitch loop (``set_stitch``, then ``model`` over the test set, once per
            stitch). ``N``: ``model`` is a ``GeneralizedRCNN`` with a ``StitchedViTDetBackbone``, evaluated
            ``N`` stitches per pass sharing route prefixes (``stitch_groups``, ``evaluate_stitch_group``;
            ``set_stitch`` is not used): the same metrics, each group's rows written when it is done.
        latency: time each stitch as deployed (``time_detector_stitches``, on the main process only, after its
            group's evaluation) into the ``latency_ms`` column. ``model`` must then be a ``GeneralizedRCNN``
            with a ``StitchedViTDetBackbone``, and ``run_key`` should end with ``latency.run_key()``. A report of
            this evaluation without latency (``run_key`` without that ending) gets the column first: its stitches
            are timed, not evaluated again (``snnet_core.evaluation.latency.add_latency_column``).

    Returns the results record on the main process, ``{}`` elsewhere.
    """
    def pending() -> List[int]:
        if latency is not None and run_key.endswith(latency.run_key()):  # over this evaluation's untimed report
            add_latency_column(output_dir, run_key[:-len(latency.run_key())], run_key, latency.info(),
                               lambda ids: time_detector_stitches(model, ids, latency))
        record = load_results(output_dir)
        if record and record.get("run_key") != run_key:
            raise RuntimeError(
                f"{os.path.join(output_dir, RESULTS_FILE)} holds results of another run "
                f"({record.get('run_key')!r}, this one is {run_key!r}); choose a new output directory"
            )
        done = set(record.get("stitches", {})) if record else set()
        return [int(s) for s in stitch_ids if str(int(s)) not in done]

    def timed(metrics: Dict[int, Dict[str, float]]) -> Dict[int, Dict[str, float]]:
        """``metrics`` with each stitch's ``latency_ms`` (on the main process, with ``latency``)."""
        if latency is None or not comm.is_main_process():
            return metrics
        ms = time_detector_stitches(model, list(metrics), latency)
        return {stitch_id: {**values, LATENCY_COLUMN: ms[stitch_id]} for stitch_id, values in metrics.items()}

    todo = run_on_main(pending)
    logger.info("per-stitch evaluation: %d of %d stitches to evaluate", len(todo), len(stitch_ids))
    non_finite = NonFiniteImages()  # one warning for the whole report

    if group_size is None:
        def evaluate(stitch_id: int) -> Dict[str, float]:
            with stitch_evaluation_output():
                stitch = set_stitch(stitch_id)
                logger.info("evaluating stitch %d (%s)", stitch_id, getattr(stitch, "route", stitch))
                return timed({stitch_id: evaluate_model(model, data_loader, evaluator, non_finite)})[stitch_id]

        if not comm.is_main_process():
            for stitch_id in todo:
                evaluate(stitch_id)
            return {}
        record = evaluate_stitches(evaluate, todo, space, flops, output_dir, PRIMARY_METRIC, True, run_key, title,
                                   task=RESULTS_TASK, resume=False,  # todo: the same list on every rank
                                   images=loader_images(data_loader), non_finite_reasons=NON_FINITE_REASONS)
    else:
        groups = stitch_groups(stitched_detector_backbone(model).snnet, todo, group_size)
        logger.info("%d stitches in %d groups of up to %d sharing route prefixes", len(todo), len(groups),
                    group_size)

        def evaluate_group(stitch_ids: List[int]) -> Dict[int, Dict[str, float]]:
            with stitch_evaluation_output():
                logger.info("evaluating stitches %s in one pass: %s", stitch_ids,
                            ", ".join(space[s].route for s in stitch_ids))
                return timed(evaluate_stitch_group(model, data_loader, evaluator, stitch_ids, non_finite))

        if not comm.is_main_process():
            for group in groups:
                evaluate_group(group)
            return {}
        record = evaluate_stitch_groups(evaluate_group, groups, space, flops, output_dir, PRIMARY_METRIC, True,
                                        run_key, title, task=RESULTS_TASK, resume=False,
                                        images=loader_images(data_loader), non_finite_reasons=NON_FINITE_REASONS)
    with file_lock(os.path.join(output_dir, RESULTS_FILE)):  # as write_report: orders concurrent reports
        write_frontier_summary(record, output_dir, title)
    return record


def write_frontier_summary(record: Mapping, output_dir: str, title: str) -> Dict[str, List[int]]:
    """``stitch_report.json`` (rows with bbox/segm on-frontier flags) and the segm AP plot; call it under
    ``file_lock`` of the results file (it removes the temporaries killed writes of both files left)."""
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
