"""The per-stitch report driver every project's evaluation runs: which stitches are left, how they are dealt out
to the DDP ranks (stitch by stitch on sharded data, or in groups that share route prefixes, one group per rank
and round), the latency column, and the run key that keeps rows of other models and settings out of a report.

A task supplies only what it computes: ``evaluate_one(stitch_id)`` (the set stitch on this rank's shard, reduced
over ranks), ``evaluate_group(stitch_ids)`` (every stitch of a group in one pass over every test image, not
reduced) and, for ``--measure-latency``, ``time_fn(stitch_ids) -> {id: ms}`` (rank 0).
"""
from __future__ import annotations

import logging
import os
from typing import Callable, Dict, Mapping, Optional, Sequence

from snnet_core.distributed import DistContext, broadcast_object, gather_objects
from snnet_core.evaluation.latency import LATENCY_COLUMN, add_latency_column, takes_latency_column
from snnet_core.evaluation.latency_options import LatencyOptions
from snnet_core.evaluation.prefix_trie import stitch_groups
from snnet_core.evaluation.report import RESULTS_FILE, evaluate_stitch_groups, evaluate_stitches, load_results
from snnet_core.model.flops import FlopsTable
from snnet_core.model.snnet import StitchedViT

logger = logging.getLogger(__name__)

Metrics = Dict[str, float]


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


def run_stitch_report(
    snnet: StitchedViT,
    stitch_ids: Sequence[int],
    flops: FlopsTable,
    output_dir: str,
    run_key: str,
    ctx: DistContext,
    evaluate_one: Callable[[int], Metrics],
    evaluate_group: Callable[[Sequence[int]], Mapping[int, Metrics]],
    task: str,
    primary_metric: str,
    higher_is_better: bool,
    title: str,
    images: Optional[int] = None,
    group_size: Optional[int] = None,
    latency: Optional[LatencyOptions] = None,
    time_fn: Optional[Callable[[Sequence[int]], Dict[int, float]]] = None,
) -> Optional[dict]:
    """Evaluate stitches into the engine's resumable report (rank 0 writes; all ranks compute).

    Rank 0 resolves which stitches are still to do (after an interruption) and broadcasts them. Then

    - ``group_size=None``: the per-stitch loop. Every rank calls ``evaluate_one`` for every stitch (on its shard of
      the test images, metrics reduced over ranks); each stitch's row is written when it is done.
    - ``group_size=N``: the grouped evaluation. The stitches, in route order, are cut into groups of ``N``
      (``stitch_groups``); a group is evaluated by ``evaluate_group`` in one pass over every test image sharing
      route prefixes. With several ranks the groups are dealt out in rounds, one group per rank, and rank 0
      gathers and writes each round's rows: every stitch is computed by one process exactly as one process alone
      computes it, and an interruption loses at most one round (one group per rank).

    ``images``: test images x ranks a stitch is evaluated on (the progress bar's count; the task's batch loop
    moves it with ``snnet_core.progress.advance``). With ``latency``, rank 0 times every stitch with ``time_fn``
    once its metrics are in, into the ``latency_ms`` column; ``run_key`` should name the latency settings. A
    report of this evaluation without latency gets the column first: its stitches are timed, not evaluated again
    (``add_latency_column``). Returns the results record on rank 0, None on the other ranks.
    """
    if latency is not None and time_fn is None:
        raise ValueError("run_stitch_report: latency options given without a time_fn")
    report_args = dict(space=snnet.space, flops=flops, output_dir=output_dir, primary_metric=primary_metric,
                       higher_is_better=higher_is_better, run_key=run_key, task=task, title=title, resume=False,
                       images=images)
    error, todo = None, []
    if ctx.is_main:
        if latency is not None:  # --measure-latency over this evaluation's untimed report: time what it holds
            add_latency_column(output_dir, untimed_key(run_key), run_key, latency.info(), time_fn)
        error = report_conflict(output_dir, run_key)
        done = {} if error else load_results(output_dir).get("stitches", {})
        todo = [int(s) for s in stitch_ids if str(int(s)) not in done]
    error, todo = broadcast_object(ctx, (error, todo))
    if error:
        raise RuntimeError(error)

    def timed(metrics: Dict[int, Metrics]) -> Dict[int, Metrics]:
        """``metrics`` with each stitch's ``latency_ms`` (on rank 0, with ``latency``)."""
        if latency is None or not ctx.is_main:
            return metrics
        ms = time_fn(list(metrics))
        return {sid: {**values, LATENCY_COLUMN: ms[sid]} for sid, values in metrics.items()}

    if group_size is None:
        def evaluate_timed(stitch_id: int) -> Metrics:
            return timed({stitch_id: evaluate_one(stitch_id)})[stitch_id]

        if ctx.is_main:  # exactly the broadcast stitches, whatever another evaluator merges meanwhile
            return evaluate_stitches(evaluate_timed, todo, **report_args)
        for stitch_id in todo:
            evaluate_timed(stitch_id)
        return None

    groups = stitch_groups(snnet, todo, group_size)
    rounds = {}  # the stitches of a round (rank 0 writes them together) -> the group of each rank
    for start in range(0, len(groups), ctx.world_size):
        dealt = groups[start:start + ctx.world_size]
        rounds[tuple(sid for group in dealt for sid in group)] = dealt
    logger.info("%d stitches in %d groups of up to %d, one pass over the test set each, in %d rounds over %d "
                "process(es)", len(todo), len(groups), group_size, len(rounds), ctx.world_size)

    def evaluate_round(stitches: Sequence[int]) -> Dict[int, Metrics]:
        dealt = rounds[tuple(stitches)]
        mine = dict(evaluate_group(dealt[ctx.rank])) if ctx.rank < len(dealt) else {}
        return timed({sid: metrics for results in gather_objects(ctx, mine) for sid, metrics in results.items()})

    if ctx.is_main:
        return evaluate_stitch_groups(evaluate_round, [list(stitches) for stitches in rounds], **report_args)
    for stitches in rounds:
        evaluate_round(stitches)
    return None
