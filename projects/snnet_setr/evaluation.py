"""Per-stitch mIoU / mAcc / aAcc report of the stitched SETR: detectron2's ``SemSegEvaluator`` per stitch, written
resumably as JSON/CSV/Markdown/PNG by the shared driver (``snnet_core.d2.evaluation.stitch_report`` with
``segmentation_task``).

Stitches are evaluated in groups sharing route prefixes (``evaluate_stitch_group``): one pass over the test set per
group; every image's sliding windows go through the shared route prefixes once, as one batch
(``StitchedSETR.stitch_predictions``, ``snnet_core.run_stitches``), then the decode head per stitch, into one
evaluator per stitch. ``group_size=None`` keeps the per-stitch loop (one pass per stitch, ``evaluate_model``), which
gives the same predictions and metrics.
"""
from __future__ import annotations

import logging
from typing import Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from detectron2.evaluation import DatasetEvaluator, inference_context, print_csv_format

from snnet_core import ExportedStitch
from snnet_core.d2 import evaluation as d2_evaluation
from snnet_core.d2.evaluation import StitchTask
from snnet_core.d2.hooks import unwrap
from snnet_core.evaluation.finite_inputs import NonFiniteImages
from snnet_core.evaluation.latency import time_stitches
from snnet_core.evaluation.latency_options import LatencyOptions

from .export import StitchBackbone
from .metrics import REPORT_METRICS
from .model import SETR, StitchedSETR
from .training import snnet_of

logger = logging.getLogger(__name__)

PROJECT = "projects.snnet_setr"  # the project's package logger
RESULTS_TASK = "segmentation"  # tags results files: another task's report is refused as a pareto source
PRIMARY_METRIC = "mIoU"
_NO_PIXELS = "NaN when the test set has no labelled pixel (every label is the ignore value)"
NON_FINITE_REASONS = {"mIoU": _NO_PIXELS, "mAcc": _NO_PIXELS, "aAcc": _NO_PIXELS}
LEFT_OUT = "their pixels are not counted in any stitch's metrics"


def summarize(results: Mapping[str, Mapping[str, float]]) -> Dict[str, float]:
    """An evaluator's results (``metrics.SemSegMetrics``: ``{"sem_seg": {...}}``) printed (detectron2's CSV line,
    per-class IoU included: log.txt) and cut to the report's metrics, mIoU / mAcc / aAcc in percent."""
    print_csv_format(results)
    return {name: float(results["sem_seg"][name]) for name in REPORT_METRICS}


def evaluate_model(model: nn.Module, data_loader, evaluator: DatasetEvaluator,
                   non_finite: Optional[NonFiniteImages] = None) -> Dict[str, float]:
    """mIoU / mAcc / aAcc of ``model`` on ``data_loader`` (all ranks; ``{}`` off the main one); images holding
    NaN/inf are not run and named in one warning (``snnet_core.d2.evaluation.evaluate_model``)."""
    return d2_evaluation.evaluate_model(model, data_loader, evaluator, summarize, LEFT_OUT, non_finite)


def stitch_predictions(model: StitchedSETR, inputs: List[dict], stitch_ids: Sequence[int]
                       ) -> Iterator[Tuple[int, List[dict], List[dict]]]:
    """``(stitch_id, inputs of one window shape, their {"sem_seg": logits})`` for every stitch of ``stitch_ids``
    (``StitchedSETR.stitch_predictions``: every shared route prefix once over all windows of those images)."""
    return unwrap(model).stitch_predictions(inputs, stitch_ids)


def evaluate_stitch_group(model: StitchedSETR, data_loader, evaluator: DatasetEvaluator, stitch_ids: Sequence[int],
                          non_finite: Optional[NonFiniteImages] = None) -> Dict[int, Dict[str, float]]:
    """mIoU / mAcc / aAcc of every stitch of ``stitch_ids`` from one pass over ``data_loader``: each batch through
    ``stitch_predictions`` into a copy of ``evaluator`` per stitch (each holds its own confusion matrix)."""
    return d2_evaluation.evaluate_stitch_group(model, data_loader, evaluator, stitch_ids, stitch_predictions,
                                               summarize, LEFT_OUT, non_finite)


def deployed_segmentor(model: StitchedSETR, stitch: ExportedStitch) -> SETR:
    """Stitch ``stitch`` (``snnet_core.export_stitch`` of ``model``'s SN-Net) as a plain ``SETR`` with ``model``'s
    decode head and inference settings: what ``export.export_segmentor`` writes, built in memory (no auxiliary
    heads). Call it in eval mode under ``no_grad``."""
    return SETR(backbone=StitchBackbone(stitch), decode_head=model.decode_head,
                **inference_settings(model)).to(model.device).eval()


def inference_settings(model: SETR) -> Dict[str, object]:
    """The ``SETR`` arguments of ``model`` that inference reads (normalisation, input format, windows)."""
    return dict(pixel_mean=model.pixel_mean.flatten().tolist(), pixel_std=model.pixel_std.flatten().tolist(),
                input_format=model.input_format, ignore_value=model.ignore_value, crop_size=model.crop_size,
                test_stride=model.test_stride, test_mode=model.test_mode, align_corners=model.align_corners)


def time_segmentor_stitches(model: StitchedSETR, stitch_ids: Sequence[int], options: LatencyOptions
                            ) -> Dict[int, float]:
    """Median milliseconds of ``model(inputs)`` for each stitch deployed alone (``deployed_segmentor``, sliding
    windows included) on a batch of ``options.batch`` random images of ``options.size``, on ``options.device``."""
    height, width = options.size
    generator = torch.Generator().manual_seed(0)
    inputs = [{"image": torch.randint(0, 256, (3, height, width), generator=generator, dtype=torch.uint8)
               .to(options.device), "height": height, "width": width} for _ in range(options.batch)]
    model = unwrap(model)
    with inference_context(model):
        timed = time_stitches(model.backbone, stitch_ids, [inputs], lambda stitch: deployed_segmentor(model, stitch),
                              options.warmup, options.runs, options.amp, options.device)
    return timed.ms


def segmentation_task() -> StitchTask:
    """The segmentation task of the shared per-stitch driver (this module's functions, looked up when called)."""
    return StitchTask(name=RESULTS_TASK, primary_metric=PRIMARY_METRIC, project=PROJECT, snnet=snnet_of,
                      evaluate_model=evaluate_model, evaluate_group=evaluate_stitch_group,
                      time_stitches=time_segmentor_stitches, non_finite_reasons=NON_FINITE_REASONS)

