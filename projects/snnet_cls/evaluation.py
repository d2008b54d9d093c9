"""Evaluation of the stitched classifier: top-1 / top-5 accuracy (%) and cross-entropy of one stitch, of a group
of stitches in one pass sharing route prefixes (``snnet_core.classify_stitches``), and the resumable per-stitch
report with each stitch's id in upstream SN-Netv2's numbering too (``upstream_id``, upstream's ``cfg_id``).

Script use: ``evaluate_stitches_in_memory(net, loader)`` -> ``{stitch id: {"acc1", "acc5", "loss"}}``.
"""
from __future__ import annotations

import logging
from typing import Dict, Iterable, Optional, Sequence

import torch
import torch.nn.functional as F

from snnet_core import FlopsTable, StitchedViT, classify_stitches, time_stitches, upstream_stitch_id
from snnet_core.distributed import DistContext, gather_objects
from snnet_core.evaluation.latency_options import LatencyOptions
from snnet_core.evaluation.stitch_report import run_stitch_report
from snnet_core.progress import advance, loader_images

logger = logging.getLogger(__name__)
TASK = "classification"  # the task tag of the per-stitch results files (another task's results are refused)
METRICS = ("acc1", "acc5", "loss")  # upstream's names: top-1 and top-5 accuracy in %, mean cross-entropy
PRIMARY_METRIC = "acc1"
UPSTREAM_ID = "upstream_id"  # report column: the stitch's cfg_id in upstream's classification code


class AccuracyCounts:
    """Correct top-1 / top-5 counts, summed cross-entropy and the number of images of one stitch."""

    def __init__(self, device: torch.device | str = "cpu"):
        self.sums = torch.zeros(4, dtype=torch.float64, device=device)  # correct1, correct5, loss sum, images

    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """``logits (B, num_classes)``, ``labels (B,)`` class indices."""
        logits = logits.float()
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        hit = top == labels[:, None]
        loss = F.cross_entropy(logits, labels, reduction="sum")
        self.sums += torch.stack([hit[:, 0].sum().double(), hit.any(dim=1).sum().double(), loss.double(),
                                  torch.tensor(float(len(labels)), dtype=torch.float64, device=logits.device)])

    def all_reduce(self) -> None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(self.sums)

    def compute(self) -> Dict[str, float]:
        correct1, correct5, loss, images = self.sums.tolist()
        if images == 0:
            raise ValueError("no test image was evaluated")
        return {"acc1": 100.0 * correct1 / images, "acc5": 100.0 * correct5 / images, "loss": loss / images}


@torch.no_grad()
def evaluate(net: StitchedViT, loader: Iterable, ctx: DistContext = DistContext(), amp: bool = False
             ) -> Dict[str, float]:
    """Metrics of ``net``'s selected stitch over ``loader`` (this rank's shard of ``(images, labels)``), reduced over
    ranks. Each batch moves the per-stitch evaluation's progress bar."""
    net.eval()
    counts = AccuracyCounts(ctx.device)
    for images, labels in loader:
        with torch.autocast(ctx.device.type, dtype=torch.float16, enabled=amp):
            logits = net.classify(images.to(ctx.device, non_blocking=True))
        counts.update(logits, labels.to(ctx.device))
        advance(len(images) * ctx.world_size)
    counts.all_reduce()
    return counts.compute()


@torch.no_grad()
def evaluate_group(net: StitchedViT, loader: Iterable, stitch_ids: Sequence[int], ctx: DistContext = DistContext(),
                   amp: bool = False) -> Dict[int, Dict[str, float]]:
    """``{stitch id: metrics}`` of every stitch of ``stitch_ids`` in one pass over ``loader`` (every test image, not
    reduced over ranks): each batch runs once through the trie of the stitches' routes (``classify_stitches``);
    each stitch's logits are those ``net.classify`` gives it alone."""
    net.eval()
    counts = {sid: AccuracyCounts(ctx.device) for sid in stitch_ids}
    for images, labels in loader:
        labels = labels.to(ctx.device)
        with torch.autocast(ctx.device.type, dtype=torch.float16, enabled=amp):
            for sid, logits in classify_stitches(net, images.to(ctx.device, non_blocking=True), list(stitch_ids)):
                counts[sid].update(logits, labels)
        advance(len(images) * len(stitch_ids) * ctx.world_size)
    return {sid: c.compute() for sid, c in counts.items()}


def evaluate_stitches_in_memory(net: StitchedViT, loader: Iterable, stitch_ids: Optional[Sequence[int]] = None,
                                ctx: DistContext = DistContext(), amp: bool = False) -> Dict[int, Dict[str, float]]:
    """Every stitch of ``stitch_ids`` (default: the whole space) in one pass over ``loader``, nothing written:
    ``{stitch id: {"acc1", "acc5", "loss"}}``."""
    return evaluate_group(net, loader, net.space.ids if stitch_ids is None else stitch_ids, ctx, amp)


def upstream_ids(net: StitchedViT) -> Dict[int, Optional[int]]:
    """``{our id: upstream cfg_id}`` of the net's stitches, empty where upstream's enumeration does not cover the
    anchors' depths (upstream pairs blocks like this engine only for equal depths or a 1:2 ratio)."""
    try:
        return {sid: upstream_stitch_id(net.space, sid) for sid in net.space.ids}
    except ValueError:
        return {}


def time_classifier_stitches(net: StitchedViT, stitch_ids: Sequence[int], options: LatencyOptions
                             ) -> Dict[int, float]:
    """Median milliseconds of one forward of each stitch deployed alone (exported, LoRA merged, with the final norm
    and classifier) on ``options.batch`` random images of ``options.size``, on ``options.device``."""
    images = torch.randn(options.batch, 3, *options.size, generator=torch.Generator().manual_seed(0))
    net.eval()
    timed = time_stitches(net, stitch_ids, images.to(options.device), lambda route: route.classify, options.warmup,
                          options.runs, options.amp, options.device)
    return timed.ms


def evaluate_stitch_report(
    net: StitchedViT,
    loader: Iterable,
    stitch_ids: Sequence[int],
    flops: FlopsTable,
    output_dir: str,
    run_key: str,
    ctx: DistContext = DistContext(),
    amp: bool = False,
    group_size: Optional[int] = None,
    latency: Optional[LatencyOptions] = None,
    title: str = "SN-Netv2 classifier",
) -> Optional[dict]:
    """Evaluate stitches into the engine's resumable report (``run_stitch_report``: rank 0 writes, all ranks
    compute): stitch by stitch on this rank's shard of ``loader`` (``group_size=None``, ``evaluate``), or in groups
    of ``group_size`` in one pass over every test image with their route prefixes shared (``evaluate_group``).
    Rows hold ``acc1``, ``acc5``, ``loss`` and ``upstream_id``; with ``latency`` also ``latency_ms``. Returns the
    results record on rank 0."""
    images = loader_images(loader)
    if group_size is None and images is not None:
        images = sum(gather_objects(ctx, images))
    to_upstream = upstream_ids(net)

    def with_upstream_id(sid: int, metrics: Dict[str, float]) -> Dict[str, float]:
        return {**metrics, UPSTREAM_ID: to_upstream[sid]} if to_upstream else metrics

    def evaluate_one(stitch_id: int) -> Dict[str, float]:
        net.set_stitch(stitch_id)
        return with_upstream_id(stitch_id, evaluate(net, loader, ctx, amp))

    def evaluate_some(ids: Sequence[int]) -> Dict[int, Dict[str, float]]:
        return {sid: with_upstream_id(sid, m) for sid, m in evaluate_group(net, loader, ids, ctx, amp).items()}

    return run_stitch_report(net, stitch_ids, flops, output_dir, run_key, ctx, evaluate_one, evaluate_some, task=TASK,
                             primary_metric=PRIMARY_METRIC, higher_is_better=True,
                             title=f"{title} at {flops.input_size[0]}x{flops.input_size[1]}", images=images,
                             group_size=group_size, latency=latency,
                             time_fn=lambda ids: time_classifier_stitches(net, ids, latency))
