"""Evaluation of the stitched DPT: depth metrics of one stitch, of a group of stitches in one pass sharing route
prefixes, latency of stitches as deployed, and the resumable per-stitch report (DDP-aware)."""
from __future__ import annotations

import logging
from typing import Callable, Dict, Iterable, Iterator, Optional, Sequence, Tuple

import torch
from torch.utils.data import Subset

from snnet_core import FlopsTable
from snnet_core.distributed import DistContext, gather_objects
from snnet_core.evaluation.finite_inputs import NonFiniteImages
from snnet_core.evaluation.latency import time_stitches
from snnet_core.evaluation.latency_options import LatencyOptions
from snnet_core.evaluation.stitch_report import report_conflict, run_stitch_report  # noqa: F401 (train.py's)
from snnet_core.progress import advance, loader_images

from .metrics import HIGHER_IS_BETTER, DepthMetricAccumulator
from .model import DPTDepthModel

logger = logging.getLogger(__name__)
TASK = "depth"  # the task tag of the per-stitch results files (another task's results are refused)
LEFT_OUT = "Every stitch's metrics are over the other test images"  # NonFiniteImages.warn's consequence


def image_namer(loader: Iterable) -> Callable[[int], str]:
    """``position -> name`` of the images a sequential test loader yields: the frame's key (``frame_keys``: the
    file and frame of the labeled ``.mat``, or the RGB file of the sync layout) through a ``Subset`` shard,
    else the position."""
    dataset, indices = getattr(loader, "dataset", None), None
    if isinstance(dataset, Subset):
        dataset, indices = dataset.dataset, list(dataset.indices)
    frames = getattr(dataset, "frames", None)
    keys = frames.frame_keys() if hasattr(frames, "frame_keys") else None

    def name(position: int) -> str:
        index = indices[position] if indices is not None and position < len(indices) else position
        return keys[index] if keys is not None and index < len(keys) else f"test image {position} of the loader"

    return name


def finite_batches(loader: Iterable, non_finite: NonFiniteImages) -> Iterator[Tuple[torch.Tensor, torch.Tensor, int]]:
    """``(images, depths, batch size)`` of ``loader`` without the images holding NaN/inf (recorded in
    ``non_finite``); a batch left empty is yielded empty, so the progress bar still counts it."""
    name, start = image_namer(loader), 0
    for images, depths in loader:
        kept = non_finite.keep(images, lambda i: name(start + i))
        size, start = len(images), start + len(images)
        if len(kept) < size:
            images, depths = images[kept], depths[kept]
        yield images, depths, size


def flip_average(pred: torch.Tensor, pred_of_mirrored: torch.Tensor) -> torch.Tensor:
    """Flip TTA: the mean of ``pred`` and the mirrored prediction of the mirrored image, ``(B, 1, H, W)``."""
    return (pred + pred_of_mirrored.flip(-1)) / 2


@torch.no_grad()
def evaluate(model: DPTDepthModel, loader: Iterable, ctx: DistContext, flip: bool = True,
             amp: bool = False, non_finite: Optional[NonFiniteImages] = None) -> Dict[str, float]:
    """Depth metrics of ``model`` (its selected stitch) over ``loader`` (this rank's shard), reduced over ranks.

    ``flip``: average the prediction with that of the mirrored image. Each batch moves the per-stitch evaluation's
    progress bar (``snnet_core.progress``; rank 0 counts every rank's shard as its own). Images holding NaN/inf
    are left out and named in one warning (``non_finite``: the evaluation's record, one warning for all its passes).
    """
    model.eval()
    head = model.head
    acc = DepthMetricAccumulator(head.min_depth, head.max_depth)
    non_finite = NonFiniteImages() if non_finite is None else non_finite
    for images, depths, size in finite_batches(loader, non_finite):
        if not len(images):
            advance(size * ctx.world_size)
            continue
        images = images.to(ctx.device, non_blocking=True)
        with torch.autocast(ctx.device.type, dtype=torch.float16, enabled=amp):
            pred = model(images).float()
            if flip:
                pred = flip_average(pred, model(images.flip(-1)).float())
        acc.update(pred, depths.to(ctx.device))
        advance(size * ctx.world_size)
    non_finite.warn(logger, LEFT_OUT)
    acc.all_reduce(ctx.device)
    return acc.compute()


@torch.no_grad()
def evaluate_group(model: DPTDepthModel, loader: Iterable, stitch_ids: Sequence[int], ctx: DistContext,
                   flip: bool = True, amp: bool = False, non_finite: Optional[NonFiniteImages] = None
                   ) -> Dict[int, Dict[str, float]]:
    """``{stitch id: depth metrics}`` of every stitch of ``stitch_ids`` in one pass over ``loader``.

    Each batch ``(B, 3, H, W)`` runs once through the trie of the stitches' routes (``predict_stitches``), and
    with ``flip`` once more mirrored; each stitch's predictions and metrics are those ``evaluate`` computes for
    it alone (same operations, same order). Between the two passes one prediction ``(B, 1, H, W)`` per stitch
    is held. Not reduced over ranks: ``loader`` holds every test image. Each batch moves the per-stitch
    evaluation's progress bar by ``batch x stitches`` (times the ranks, each evaluating a group as large).
    Images holding NaN/inf are left out and named in one warning, as in ``evaluate``.
    """
    model.eval()
    head = model.head
    accumulators = {sid: DepthMetricAccumulator(head.min_depth, head.max_depth) for sid in stitch_ids}
    non_finite = NonFiniteImages() if non_finite is None else non_finite
    for images, depths, size in finite_batches(loader, non_finite):
        if not len(images):
            advance(size * len(stitch_ids) * ctx.world_size)
            continue
        images = images.to(ctx.device, non_blocking=True)
        with torch.autocast(ctx.device.type, dtype=torch.float16, enabled=amp):
            preds = {sid: pred.float() for sid, pred in model.predict_stitches(images, stitch_ids)}
            if flip:
                for sid, pred in model.predict_stitches(images.flip(-1), stitch_ids):
                    preds[sid] = flip_average(preds[sid], pred.float())
        depths = depths.to(ctx.device)
        for sid, acc in accumulators.items():
            acc.update(preds[sid], depths)
        advance(size * len(stitch_ids) * ctx.world_size)
    non_finite.warn(logger, LEFT_OUT)
    return {sid: acc.compute() for sid, acc in accumulators.items()}


def time_depth_stitches(model: DPTDepthModel, stitch_ids: Sequence[int], options: LatencyOptions) -> Dict[int, float]:
    """Median milliseconds of one forward of each stitch deployed alone (the exported stitch under ``model``'s DPT
    head, as ``export.export_depth_model`` builds it; one forward, no flip averaging) on ``options.batch`` random
    images of ``options.size``, on ``options.device``."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(options.batch, 3, *options.size, generator=generator).to(options.device)
    model.eval()
    timed = time_stitches(model.backbone, stitch_ids, images,
                          lambda route: DPTDepthModel(route, model.head, model.patch_size), options.warmup,
                          options.runs, options.amp, options.device)
    return timed.ms


def evaluate_stitch_report(
    model: DPTDepthModel,
    loader: Iterable,
    stitch_ids: Sequence[int],
    flops: FlopsTable,
    output_dir: str,
    run_key: str,
    ctx: DistContext,
    primary_metric: str = "a1",
    flip: bool = True,
    amp: bool = False,
    group_size: Optional[int] = None,
    latency: Optional[LatencyOptions] = None,
) -> Optional[dict]:
    """Evaluate stitches into the engine's resumable report (``snnet_core.evaluation.stitch_report.run_stitch_report``:
    rank 0 writes, all ranks compute): stitch by stitch on this rank's shard of ``loader`` (``group_size=None``,
    ``evaluate``), or in groups of ``group_size`` evaluated in one pass over every test image with their route
    prefixes shared (``evaluate_group``), dealt out to the ranks. Test images holding NaN/inf are left out of every
    stitch's metrics and named in one warning per process (``snnet_core.evaluation.finite_inputs``). With
    ``latency``, rank 0 times every stitch as deployed (``time_depth_stitches``) into the ``latency_ms`` column.

    Returns the results record on rank 0.
    """
    images = loader_images(loader)  # the progress bar's: all of them for the grouped evaluation, else this shard
    if group_size is None and images is not None:
        images = sum(gather_objects(ctx, images))
    non_finite = NonFiniteImages()  # one warning for the whole report

    def evaluate_one(stitch_id: int) -> Dict[str, float]:
        model.backbone.set_stitch(stitch_id)
        return evaluate(model, loader, ctx, flip, amp, non_finite)

    return run_stitch_report(
        model.backbone, stitch_ids, flops, output_dir, run_key, ctx, evaluate_one,
        lambda ids: evaluate_group(model, loader, ids, ctx, flip, amp, non_finite), task=TASK,
        primary_metric=primary_metric, higher_is_better=primary_metric in HIGHER_IS_BETTER,
        title=f"SN-Netv2 DPT on NYUv2 at {flops.input_size[0]}x{flops.input_size[1]}", images=images,
        group_size=group_size, latency=latency, time_fn=lambda ids: time_depth_stitches(model, ids, latency))
