"""Readable names and directions of the per-stitch metrics of the projects.

``metric_label("a1")`` is ``"δ<1.25 accuracy (higher is better)"`` (plot axes); ``known_direction`` is whether a
higher value is better for the depth metrics (NYUv2), top-1/top-5 accuracy, mIoU/mAcc/aAcc and COCO AP columns
(``bbox_AP``, ``segm_AP50``, ``APs``, ...), ``None`` for any other metric (the caller then needs the direction from
the report or the user).
"""
from __future__ import annotations

import re
from typing import Dict, Optional, Tuple

# depth metric -> (name, higher is better); definitions in projects/snnet_dpt/metrics.py
DEPTH_METRICS: Dict[str, Tuple[str, bool]] = {
    "a1": ("δ<1.25 accuracy", True),
    "a2": ("δ<1.25² accuracy", True),
    "a3": ("δ<1.25³ accuracy", True),
    "abs_rel": ("absolute relative error", False),
    "sq_rel": ("squared relative error", False),
    "rmse": ("RMSE (m)", False),
    "rmse_log": ("RMSE of log depth", False),
    "log10": ("mean log10 error", False),
    "silog": ("scale-invariant log error", False),
}
# classification metric (upstream SN-Netv2's names) -> (name, higher is better); projects/snnet_cls/evaluation.py
CLASSIFICATION_METRICS: Dict[str, Tuple[str, bool]] = {
    "acc1": ("top-1 accuracy (%)", True),
    "acc5": ("top-5 accuracy (%)", True),
}
# segmentation metric -> (name, higher is better); projects/snnet_setr/metrics.py
SEGMENTATION_METRICS: Dict[str, Tuple[str, bool]] = {
    "mIoU": ("mean IoU (%)", True),
    "mAcc": ("mean class accuracy (%)", True),
    "aAcc": ("pixel accuracy (%)", True),
}
_NAMED = {**DEPTH_METRICS, **CLASSIFICATION_METRICS, **SEGMENTATION_METRICS}
_COCO_AP = re.compile(r"(?:(bbox|segm)_)?AP(50|75|s|m|l)?")  # COCO summary columns: higher is better
_COCO_TASKS = {"bbox": "box AP", "segm": "mask AP", None: "AP"}
_COCO_VARIANTS = {None: "", "50": " at IoU 0.5", "75": " at IoU 0.75", "s": ", small objects",
                  "m": ", medium objects", "l": ", large objects"}


def known_direction(metric: str) -> Optional[bool]:
    """Whether a higher ``metric`` is better, for the known depth, classification, segmentation and COCO AP metrics;
    ``None`` for others."""
    if metric in _NAMED:
        return _NAMED[metric][1]
    return True if _COCO_AP.fullmatch(metric) else None


def metric_label(metric: str, higher_is_better: Optional[bool] = None) -> str:
    """``metric`` spelled out with its direction, e.g. ``"box AP (higher is better)"``.

    An unknown metric keeps its key; its direction is ``higher_is_better`` (e.g. the report's record of it),
    left out where neither is known.
    """
    coco = _COCO_AP.fullmatch(metric)
    if metric in _NAMED:
        name = _NAMED[metric][0]
    elif coco:
        name = _COCO_TASKS[coco.group(1)] + _COCO_VARIANTS[coco.group(2)]
    else:
        name = metric
    higher = known_direction(metric) if higher_is_better is None else higher_is_better
    return name if higher is None else f"{name} ({'higher' if higher else 'lower'} is better)"
