"""Evaluation of the stitched DPT: depth metrics of one stitch, of a group of stitches in one pass sharing route
prefixes, latency of stitches as deployed, and the resumable per-stitch report (DDP-aware)."""
from __future__ import annotations

import logging
import os
from typing import Callable, Dict, Iterable, Iterator, Optional, Sequence, Tuple

import torch
from torch.utils.data import Subset

from snnet_core import FlopsTable, evaluate_stitches
from snnet_core.distributed import DistContext, broadcast_object, gather_objects
from snnet_core.evaluation.finite_inputs import NonFiniteImages
from snnet_core.evaluation.latency import LATENCY_COLUMN, add_latency_column, takes_latency_column, time_stitches
from snnet_core.evaluation.latency_options import LatencyOptions
from snnet_core.evaluation.prefix_trie import stitch_groups
from snnet_core.progress import advance, loader_images
from snnet_core.evaluation.report import RESULTS_FILE, evaluate_stitch_groups, load_results

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


def _key_parts(run_key: str) -> Dict[str, str]:
    return dict(part.split("=", 1) for part in run_key.split("|") if "=" in part)


def untimed_key(run_key: str) -> str:
    """``run_key`` without its ``latency=`` part: the key of the same evaluation without ``--measure-latency``."""
    return "|".join(part for part in run_key.split("|") if not part.startswith("latency="))


def report_conflict(output_dir: str, run_key: str) -> Optional[str]:
    """Why the per-stitch results in ``output_dir`` cannot take rows of the evaluation ``run_key`` (they are of
    another model or setting: the parts of the two keys that differ), or None if they can (also where a timed
    evaluation adds the latency column to its untimed report: ``snnet_core.evaluation.latency.add_latency_column``)."""
    record = load_results(output_dir)
    if not record or record.get("run_key") == run_key:
        return None
    if untimed_key(run_key) != run_key and takes_latency_column(record, untimed_key(run_key)):
        return None
    there, now = _key_parts(record.get("run_key") or ""), _key_parts(run_key)
    differing = [f"{k} {there.get(k)} there vs {v} now" for k, v in now.items() if there.get(k) != v]
    return (f"{os.path.join(output_dir, RESULTS_FILE)} holds the per-stitch report of another model or setting "
            f"({'; '.join(differing)}): give --report-dir a new directory, or move that report away")


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
    """Evaluate stitches into the engine's resumable report (rank 0 writes; all ranks compute).

    Rank 0 resolves which stitches are still to do (after an interruption) and broadcasts them. Then

    - ``group_size=None``: the per-stitch loop. Every rank evaluates every stitch on its shard of the test
      images (``loader``), metrics summed over ranks; each stitch's row is written when it is done.
    - ``group_size=N``: the grouped evaluation. The stitches, in route order, are cut into groups of ``N``
      (``stitch_groups``); a group is evaluated in one pass over every test image (``loader``, not sharded)
      sharing route prefixes (``evaluate_group``). With several ranks the groups are dealt out in rounds, one
      group per rank, and rank 0 gathers and writes each round's rows: every stitch is computed by one process
      exactly as one process alone computes it, and an interruption loses at most one round (one group per rank).

    Rank 0's progress bar counts test images x stitches and moves per batch. Test images holding NaN/inf are left
    out of every stitch's metrics and named in one warning per process (``snnet_core.evaluation.finite_inputs``).

    With ``latency``, rank 0 times every stitch as deployed (``time_depth_stitches``) once its metrics are in, into
    the ``latency_ms`` column; ``run_key`` should name the latency settings. A report of this evaluation without
    latency gets the column first: its stitches are timed, not evaluated again (``add_latency_column``).

    Returns the results record on rank 0.
    """
    snnet = model.backbone
    images = loader_images(loader)  # the progress bar's: all of them for the grouped evaluation, else this shard
    if group_size is None and images is not None:
        images = sum(gather_objects(ctx, images))
    report_args = dict(space=snnet.space, flops=flops, output_dir=output_dir, primary_metric=primary_metric,
                       higher_is_better=primary_metric in HIGHER_IS_BETTER, run_key=run_key, task=TASK,
                       title=f"SN-Netv2 DPT on NYUv2 at {flops.input_size[0]}x{flops.input_size[1]}", resume=False,
                       images=images)
    error, todo = None, []
    if ctx.is_main:
        if latency is not None:  # --measure-latency over this evaluation's untimed report: time what it holds
            add_latency_column(output_dir, untimed_key(run_key), run_key, latency.info(),
                               lambda ids: time_depth_stitches(model, ids, latency))
        error = report_conflict(output_dir, run_key)
        done = {} if error else load_results(output_dir).get("stitches", {})
        todo = [int(s) for s in stitch_ids if str(int(s)) not in done]
    error, todo = broadcast_object(ctx, (error, todo))
    if error:
        raise RuntimeError(error)

    def timed(metrics: Dict[int, Dict[str, float]]) -> Dict[int, Dict[str, float]]:
        """``metrics`` with each stitch's ``latency_ms`` (on rank 0, with ``latency``)."""
        if latency is None or not ctx.is_main:
            return metrics
        ms = time_depth_stitches(model, list(metrics), latency)
        return {sid: {**values, LATENCY_COLUMN: ms[sid]} for sid, values in metrics.items()}

    non_finite = NonFiniteImages()  # one warning for the whole report
    if group_size is None:
        def evaluate_one(stitch_id: int) -> Dict[str, float]:
            snnet.set_stitch(stitch_id)
            return timed({stitch_id: evaluate(model, loader, ctx, flip, amp, non_finite)})[stitch_id]

        if ctx.is_main:  # exactly the broadcast stitches, whatever another evaluator merges meanwhile
            return evaluate_stitches(evaluate_one, todo, **report_args)
        for stitch_id in todo:
            evaluate_one(stitch_id)
        return None

    groups = stitch_groups(snnet, todo, group_size)
    rounds = {}  # the stitches of a round (rank 0 writes them together) -> the group of each rank
    for start in range(0, len(groups), ctx.world_size):
        dealt = groups[start:start + ctx.world_size]
        rounds[tuple(sid for group in dealt for sid in group)] = dealt
    logger.info("%d stitches in %d groups of up to %d, one pass over the test set each, in %d rounds over %d "
                "process(es)", len(todo), len(groups), group_size, len(rounds), ctx.world_size)

    def evaluate_round(stitches: Sequence[int]) -> Dict[int, Dict[str, float]]:
        dealt = rounds[tuple(stitches)]
        mine = (evaluate_group(model, loader, dealt[ctx.rank], ctx, flip, amp, non_finite) if ctx.rank < len(dealt)
                else {})
        return timed({sid: metrics for results in gather_objects(ctx, mine) for sid, metrics in results.items()})

    if ctx.is_main:
        return evaluate_stitch_groups(evaluate_round, [list(stitches) for stitches in rounds], **report_args)
    for stitches in rounds:
        evaluate_round(stitches)
    return None
