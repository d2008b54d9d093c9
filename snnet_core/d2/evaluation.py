"""The per-stitch evaluation of a detectron2 project: a ``DatasetEvaluator`` per stitch, written resumably into the
engine's report (``snnet_core.evaluation.report``: JSON/CSV/Markdown/PNG, Pareto frontier, run key).

Stitches are evaluated in groups sharing route prefixes (``evaluate_stitch_group``): one pass over the test set per
group, each batch through the task's ``predict`` (every shared backbone prefix once per batch, then the task's head
per stitch: ``snnet_core.run_stitches``) into one evaluator per stitch. ``stitch_report(group_size=None)`` keeps
the per-stitch loop (one pass per stitch), which gives the same predictions and metrics.

A project plugs its task in with a ``StitchTask`` (its metric names, how it summarises an evaluator's results, how
it predicts many stitches at once, how it times a deployed stitch).
"""
from __future__ import annotations

import copy
import dataclasses
import logging
import os
import time
from contextlib import ExitStack
from typing import Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from detectron2.evaluation import DatasetEvaluator, inference_context, inference_on_dataset
from detectron2.utils import comm
from detectron2.utils.logger import log_every_n_seconds

from snnet_core.d2.console import stitch_evaluation_output
from snnet_core.distributed import run_on_main
from snnet_core.evaluation.finite_inputs import NonFiniteImages
from snnet_core.evaluation.latency import LATENCY_COLUMN, add_latency_column
from snnet_core.evaluation.latency_options import LatencyOptions
from snnet_core.evaluation.prefix_trie import stitch_groups
from snnet_core.evaluation.report import RESULTS_FILE, evaluate_stitch_groups, evaluate_stitches, load_results
from snnet_core.io.atomic_io import file_lock
from snnet_core.model.flops import FlopsTable
from snnet_core.model.snnet import StitchedViT
from snnet_core.model.stitch_space import StitchSpace
from snnet_core.progress import AdvancingLoader, advance, loader_images

logger = logging.getLogger(__name__)

Metrics = Dict[str, float]
Predict = Callable[[nn.Module, List[dict], Sequence[int]], Iterator[Tuple[int, List[dict], List[dict]]]]


@dataclasses.dataclass(frozen=True)
class StitchTask:
    """What a project's per-stitch evaluation plugs into ``stitch_report``.

    Attributes:
        name: tags the results files (another task's report is refused as a ``--stitch pareto`` source).
        primary_metric: the report's metric (higher is better) for the frontier and ``select``.
        project: the project's package logger (``snnet_core.d2.console.stitch_evaluation_output``).
        snnet: the ``StitchedViT`` inside the task's model.
        evaluate_model: ``(model, loader, evaluator, non_finite) -> metrics`` of the selected stitch (all ranks,
            ``{}`` off the main one).
        evaluate_group: ``(model, loader, evaluator, stitch_ids, non_finite) -> {stitch_id: metrics}`` from one pass
            (``evaluate_stitch_group`` with the task's ``predict``).
        time_stitches: ``(model, stitch_ids, latency) -> {stitch_id: ms}`` of each stitch as deployed.
        non_finite_reasons: why a metric can come out NaN/inf, by metric (the report's one warning).
        finish: extra report files written under the results lock after every evaluation
            (``(record, output_dir, title)``), e.g. a second metric's frontier and plot.
    """

    name: str
    primary_metric: str
    project: str
    snnet: Callable[[nn.Module], StitchedViT]
    evaluate_model: Callable[[nn.Module, object, DatasetEvaluator, NonFiniteImages], Metrics]
    evaluate_group: Callable[[nn.Module, object, DatasetEvaluator, Sequence[int], NonFiniteImages],
                             Dict[int, Metrics]]
    time_stitches: Callable[[nn.Module, Sequence[int], LatencyOptions], Dict[int, float]]
    non_finite_reasons: Mapping[str, str] = dataclasses.field(default_factory=dict)
    finish: Optional[Callable[[Mapping, str, str], object]] = None


def finite_inputs(inputs: List[dict], non_finite: NonFiniteImages) -> List[dict]:
    """The dicts of a batch whose ``image`` holds no NaN/inf (the others are recorded in ``non_finite``)."""
    kept = non_finite.keep([d["image"] for d in inputs],
                           lambda i: str(inputs[i].get("file_name", f"image id {inputs[i].get('image_id')}")))
    return inputs if len(kept) == len(inputs) else [inputs[i] for i in kept]


class FiniteLoader:
    """``loader``'s batches without the images holding NaN/inf (``finite_inputs``), batches left empty skipped;
    its ``len`` is ``loader``'s. The recorded images are named once the pass is over, with ``left_out`` (what the
    task's metrics make of them)."""

    def __init__(self, loader, non_finite: NonFiniteImages, left_out: str):
        self.loader, self.non_finite, self.left_out = loader, non_finite, left_out

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[List[dict]]:
        for inputs in self.loader:
            kept = finite_inputs(inputs, self.non_finite)
            if kept:
                yield kept
        self.non_finite.warn(logger, self.left_out)


def evaluate_model(model: nn.Module, data_loader, evaluator: DatasetEvaluator,
                   summarize: Callable[[Mapping], Metrics], left_out: str,
                   non_finite: Optional[NonFiniteImages] = None) -> Metrics:
    """``summarize`` of ``evaluator``'s results for ``model`` on ``data_loader`` (detectron2's
    ``inference_on_dataset``; all ranks, ``summarize`` is called on the main one only, ``{}`` elsewhere). Each batch
    moves the per-stitch evaluation's progress bar (``snnet_core.progress``). Images holding NaN/inf are not run and
    named in one warning ending with ``left_out`` (``non_finite``: the evaluation's record, one warning for all its
    passes)."""
    loader = FiniteLoader(AdvancingLoader(data_loader, comm.get_world_size()), non_finite or NonFiniteImages(),
                          left_out)
    results = inference_on_dataset(model, loader, evaluator)
    return summarize(results) if comm.is_main_process() else {}


def evaluate_stitch_group(model: nn.Module, data_loader, evaluator: DatasetEvaluator, stitch_ids: Sequence[int],
                          predict: Predict, summarize: Callable[[Mapping], Metrics], left_out: str,
                          non_finite: Optional[NonFiniteImages] = None) -> Dict[int, Metrics]:
    """Metrics of every stitch of ``stitch_ids`` from one pass over ``data_loader``.

    Each batch goes through ``predict(model, inputs, stitch_ids)`` (``(stitch_id, inputs, outputs)``: ``outputs``
    what ``model(inputs)`` returns with that stitch selected, for ``inputs``, the batch or a part of it) into a copy
    of ``evaluator`` per stitch (a shallow copy after ``reset()``: the copies share the ground truth, each holds its
    own predictions; this is how detectron2's evaluators reset). Runs on every rank under ``launch``: each rank
    predicts its shard of the images and every evaluator gathers them to the main process, stitch by stitch in the
    order of ``stitch_ids``.
    Returns ``{stitch_id: summarize(results)}`` on the main process, ``{}`` elsewhere.

    Memory: the held predictions (or statistics) of ``len(stitch_ids)`` evaluators. Images holding NaN/inf are not
    run and named in one warning, as in ``evaluate_model``.
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
            for stitch_id, part, outputs in predict(model, inputs, stitch_ids) if inputs else ():
                evaluators[stitch_id].process(part, outputs)
            advance(len(batch) * len(stitch_ids) * comm.get_world_size())  # the report's bar counts every rank
            log_every_n_seconds(logging.INFO, f"stitches {list(stitch_ids)}: batch {index + 1}/{total}, "
                                f"{(time.perf_counter() - start) / (index + 1):.2f} s/batch", n=10, name=__name__)
    non_finite.warn(logger, left_out)
    results = {stitch_id: evaluators[stitch_id].evaluate() for stitch_id in stitch_ids}
    return {s: summarize(r) for s, r in results.items()} if comm.is_main_process() else {}


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
    task: StitchTask,
    title: str,
    group_size: Optional[int] = None,
    latency: Optional[LatencyOptions] = None,
) -> Dict[str, dict]:
    """Evaluate every stitch of ``stitch_ids`` (resumably) and write the per-stitch report.

    Runs on every rank: the images are split across ranks and gathered by the evaluators; the main process merges
    each stitch's row into ``stitch_results.json`` as soon as it has it, then writes ``stitch_report.{csv,md,png}``
    (and ``task.finish``'s files). Stitches already in ``output_dir`` (same ``run_key``) are skipped. The console
    shows one line per stitch, a progress bar over test images x stitches that moves per batch, one line naming
    the metrics that came out NaN (``task.non_finite_reasons``) and the Pareto frontier; detectron2's and the
    task's output of each evaluation goes to the log file only (``snnet_core.d2.console.stitch_evaluation_output``).

    Args:
        group_size: ``None``: the per-stitch loop (``set_stitch``, then ``task.evaluate_model`` over the test set,
            once per stitch). ``N``: ``N`` stitches per pass sharing route prefixes (``stitch_groups``,
            ``task.evaluate_group``; ``set_stitch`` is not used): the same metrics, each group's rows written when
            it is done.
        latency: time each stitch as deployed (``task.time_stitches``, on the main process only, after its group's
            evaluation) into the ``latency_ms`` column; ``run_key`` should end with ``latency.run_key()``. A report
            of this evaluation without latency (``run_key`` without that ending) gets the column first: its stitches
            are timed, not evaluated again (``snnet_core.evaluation.latency.add_latency_column``).

    Returns the results record on the main process, ``{}`` elsewhere.
    """
    def pending() -> List[int]:
        if latency is not None and run_key.endswith(latency.run_key()):  # over this evaluation's untimed report
            add_latency_column(output_dir, run_key[:-len(latency.run_key())], run_key, latency.info(),
                               lambda ids: task.time_stitches(model, ids, latency))
        record = load_results(output_dir)
        if record and record.get("run_key") != run_key:
            raise RuntimeError(
                f"{os.path.join(output_dir, RESULTS_FILE)} holds results of another run "
                f"({record.get('run_key')!r}, this one is {run_key!r}); choose a new output directory"
            )
        done = set(record.get("stitches", {})) if record else set()
        return [int(s) for s in stitch_ids if str(int(s)) not in done]

    def timed(metrics: Dict[int, Metrics]) -> Dict[int, Metrics]:
        """``metrics`` with each stitch's ``latency_ms`` (on the main process, with ``latency``)."""
        if latency is None or not comm.is_main_process():
            return metrics
        ms = task.time_stitches(model, list(metrics), latency)
        return {stitch_id: {**values, LATENCY_COLUMN: ms[stitch_id]} for stitch_id, values in metrics.items()}

    todo = run_on_main(pending)
    logger.info("per-stitch evaluation: %d of %d stitches to evaluate", len(todo), len(stitch_ids))
    non_finite = NonFiniteImages()  # one warning for the whole report
    common = dict(task=task.name, resume=False,  # todo: the same list on every rank
                  images=loader_images(data_loader), non_finite_reasons=dict(task.non_finite_reasons))

    if group_size is None:
        def evaluate(stitch_id: int) -> Metrics:
            with stitch_evaluation_output(task.project):
                stitch = set_stitch(stitch_id)
                logger.info("evaluating stitch %d (%s)", stitch_id, getattr(stitch, "route", stitch))
                return timed({stitch_id: task.evaluate_model(model, data_loader, evaluator, non_finite)})[stitch_id]

        if not comm.is_main_process():
            for stitch_id in todo:
                evaluate(stitch_id)
            return {}
        record = evaluate_stitches(evaluate, todo, space, flops, output_dir, task.primary_metric, True, run_key,
                                   title, **common)
    else:
        groups = stitch_groups(task.snnet(model), todo, group_size)
        logger.info("%d stitches in %d groups of up to %d sharing route prefixes", len(todo), len(groups),
                    group_size)

        def evaluate_group(ids: List[int]) -> Dict[int, Metrics]:
            with stitch_evaluation_output(task.project):
                logger.info("evaluating stitches %s in one pass: %s", ids, ", ".join(space[s].route for s in ids))
                return timed(task.evaluate_group(model, data_loader, evaluator, ids, non_finite))

        if not comm.is_main_process():
            for group in groups:
                evaluate_group(group)
            return {}
        record = evaluate_stitch_groups(evaluate_group, groups, space, flops, output_dir, task.primary_metric, True,
                                        run_key, title, **common)
    if task.finish is not None:
        with file_lock(os.path.join(output_dir, RESULTS_FILE)):  # as write_report: orders concurrent reports
            task.finish(record, output_dir, title)
    return record
