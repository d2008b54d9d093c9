"""Choose the stitch for a budget from a per-stitch report, from the command line or from Python.

::

    python -m snnet_core.select REPORT [--max-gflops G | --max-latency-ms MS] [--metric NAME] [--json] [--plot PNG]

``REPORT`` is a per-stitch report directory of either project (e.g.
``output/dpt_demo/stitch_report_nyuv2_synthetic_test``) or the ``stitch_results.json`` in it (written by
``snnet_core.evaluation.report.evaluate_stitches``). The command prints the stitch with the best metric whose cost fits the
budget (id, route, metric, GFLOPs, latency, params) and the Pareto frontier of metric vs cost around it, the choice
marked ``*``; ``--json`` prints one JSON object instead (``Choice.to_json``). Without a budget it picks the best
stitch overall. ``--plot PNG`` also draws the metric vs cost plot of the report with the choice marked.

- The metric is the record's primary metric unless ``--metric`` names another of its columns. Its direction is
  the record's ``higher_is_better`` for the primary metric and otherwise known for the depth metrics (``a1``,
  ``a2``, ``a3`` higher; ``abs_rel``, ``sq_rel``, ``rmse``, ``rmse_log``, ``log10``, ``silog`` lower) and COCO
  AP (``bbox_AP``, ``segm_AP50``, ...: higher); for any other metric pass ``--higher-is-better`` or
  ``--lower-is-better``.
- ``--max-latency-ms`` budgets the ``latency_ms`` column that ``snnet_core.evaluation.latency`` defines (median
  milliseconds per batch, measured as the record's top-level ``"latency"`` entry says); the frontier is then
  metric vs latency. Stitches without a finite metric or cost are never chosen.
- Errors (exit code 2, the message names the file and the fix): a path that is not a results file or a
  directory holding one, a record without stitches, an unknown metric or direction, ``--max-latency-ms`` on a
  report without latency, both budgets, and a budget below every stitch (the cheapest one is named).

``choose_stitch(record, source, ...)`` is the same choice on a results record, built on
``snnet_core.evaluation.selection.best_under_budget`` and ``pareto_frontier``.
"""
from __future__ import annotations

import argparse
import glob
import json
import logging
import math
import os
import sys
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from .cli import add_debug_argument, debug_requested, run_command
from .console import run_logging
from snnet_core.evaluation.metric_labels import known_direction
from snnet_core.evaluation.report import (
    LATENCY_COLUMN, LATENCY_KEY, RESULTS_FILE, check_task, metric_names, plot_report, read_results, select_stitches,
)
from snnet_core.evaluation.selection import best_under_budget, has_finite_value, pareto_frontier
from snnet_core.model.stitch_space import StitchSpace

logger = logging.getLogger(__name__)

PROG = "python -m snnet_core.select"
# cost column -> (unit, its budget flag, its name in the frontier title)
COSTS = {"gflops": ("GFLOPs", "--max-gflops", "GFLOPs"), LATENCY_COLUMN: ("ms", "--max-latency-ms", "latency")}
_MEASURE_LATENCY = (
    "measure it with --measure-latency of the per-stitch evaluation (projects/snnet_dpt/train.py --eval-only, "
    "projects/snnet_vitdet/train_net.py --eval-only) or snnet_core.evaluation.latency.time_stitches, or budget GFLOPs "
    "with --max-gflops"
)


EXPORT_PLOT = "stitch_report.png"  # plot_exported_stitch's file in an exported stitch's folder


class SelectionError(ValueError):
    """A report or request ``select`` cannot answer; the message names the file and the fix."""


def read_report(path: str) -> Tuple[str, Dict[str, Any]]:
    """``(results file, checked record)`` of a report directory or of its ``stitch_results.json``."""
    fix = f"give a per-stitch report directory or the {RESULTS_FILE} in it (written by --eval-only --stitch ...)"
    if os.path.isdir(path):
        source = os.path.join(path, RESULTS_FILE)
        if not os.path.isfile(source):
            found = sorted(glob.glob(os.path.join(glob.escape(path), "*", RESULTS_FILE))
                           + glob.glob(os.path.join(glob.escape(path), "*", "*", RESULTS_FILE)))
            hint = f"; reports below it: {', '.join(found[:5])}" if found else ""
            raise SelectionError(f"{path} holds no {RESULTS_FILE}: {fix}{hint}")
    elif os.path.isfile(path):
        source = path
    else:
        raise SelectionError(f"{path} does not exist: {fix}")
    try:
        record = read_results(source)
    except (RuntimeError, UnicodeDecodeError) as exc:  # not JSON, or not text at all (e.g. a checkpoint)
        beside = os.path.join(os.path.dirname(source), RESULTS_FILE)
        hint = (f"; the results file beside it is {beside}"
                if os.path.basename(source) != RESULTS_FILE and os.path.isfile(beside) else "")
        raise SelectionError(f"{source} is not a per-stitch results file (it is not JSON): {fix}{hint}") from exc
    except ValueError as exc:  # check_results: JSON, but not a results record
        raise SelectionError(str(exc)) from exc
    if not record["stitches"]:
        raise SelectionError(f"{source} holds no evaluated stitch yet: run the per-stitch evaluation "
                             "(--eval-only --stitch all) first")
    return source, record


def metric_direction(metric: str, record: Mapping[str, Any], source: str,
                     higher_is_better: Optional[bool] = None) -> bool:
    """Whether a higher ``metric`` is better: ``higher_is_better`` if given, the record's for its primary metric,
    else the known depth/COCO metrics; ``SelectionError`` for any other."""
    if higher_is_better is not None:
        return higher_is_better
    if metric == record["primary_metric"]:
        return bool(record["higher_is_better"])
    known = known_direction(metric)
    if known is not None:
        return known
    raise SelectionError(
        f"whether a higher or lower {metric!r} is better is not known ({source} records it only for its primary "
        f"metric {record['primary_metric']!r}): pass --higher-is-better or --lower-is-better"
    )


@dataclass(frozen=True)
class Choice:
    """The best stitch within a budget and the Pareto frontier (rows of the results file, by increasing cost)."""

    source: str
    task: Optional[str]
    num_stitches: int
    metric: str
    higher_is_better: bool
    cost: str  # "gflops" or "latency_ms"
    budget: Optional[float]
    chosen: Dict[str, Any]
    frontier: List[Dict[str, Any]]
    latency: Optional[Dict[str, Any]]  # the record's "latency" entry: how latency_ms was measured

    def to_json(self) -> Dict[str, Any]:
        return {"report": self.source, "task": self.task, "metric": self.metric,
                "higher_is_better": self.higher_is_better, "cost": self.cost, "budget": self.budget,
                "chosen": self.chosen, "frontier": self.frontier, "latency": self.latency}


def choose_stitch(
    record: Mapping[str, Any],
    source: str,
    metric: Optional[str] = None,
    max_gflops: Optional[float] = None,
    max_latency_ms: Optional[float] = None,
    higher_is_better: Optional[bool] = None,
) -> Choice:
    """The stitch of a results ``record`` (read from ``source``) with the best ``metric`` within one budget.

    Args:
        metric: a metric column (default: the record's primary metric); ``higher_is_better`` its direction
            (default: see ``metric_direction``).
        max_gflops, max_latency_ms: at most one; none picks the best stitch at any cost (on the GFLOPs frontier).
    """
    if max_gflops is not None and max_latency_ms is not None:
        raise SelectionError("give one budget, --max-gflops or --max-latency-ms, not both")
    metric = metric or record["primary_metric"]
    columns = metric_names(record)
    metrics = [m for m in columns if m != LATENCY_COLUMN]
    if metric == LATENCY_COLUMN:
        raise SelectionError(f"{LATENCY_COLUMN} is a cost column of {source}, not a metric: budget it with "
                             f"--max-latency-ms and rank by one of {', '.join(metrics)}")
    if metric not in metrics:
        raise SelectionError(f"{source} has no metric {metric!r}: give --metric one of {', '.join(metrics)}")
    higher = metric_direction(metric, record, source, higher_is_better)
    cost_column, budget = (LATENCY_COLUMN, max_latency_ms) if max_latency_ms is not None else ("gflops", max_gflops)
    if max_latency_ms is not None and LATENCY_COLUMN not in columns:
        raise SelectionError(f"{source} has no {LATENCY_COLUMN} column (its stitches were not timed): "
                             f"{_MEASURE_LATENCY}")
    rows = {int(k): row for k, row in record["stitches"].items()}
    cost = {k: row[cost_column] for k, row in rows.items() if has_finite_value(row[cost_column])}
    values = {k: row[metric] for k, row in rows.items()}
    try:
        best = best_under_budget(cost, values, math.inf if budget is None else budget, higher)
    except ValueError as exc:
        raise SelectionError(_nothing_fits(source, rows, cost, values, metric, cost_column, budget)) from exc
    return Choice(source, record.get("task"), len(rows), metric, higher, cost_column, budget, rows[best],
                  [rows[k] for k in pareto_frontier(cost, values, higher)], record.get(LATENCY_KEY))


def export_reads_report(selection: str) -> bool:
    """Whether ``--export-stitch selection`` chooses from the per-stitch report (``pareto``, ``best:G``); ids can be
    resolved and checked before any evaluation."""
    selection = selection.strip()
    return selection == "pareto" or selection.startswith("best:")


def resolve_export_selection(selection: str, space: StitchSpace, report: Optional[str] = None,
                             task: Optional[str] = None) -> List[int]:
    """Stitch ids of a project's ``--export-stitch``: ``ID[,ID...]``, ``pareto`` (the Pareto frontier of the
    per-stitch report ``report``, a directory or its results file) or ``best:G`` (the best stitch of ``report``
    within G GFLOPs, as ``python -m snnet_core.select REPORT --max-gflops G`` chooses it). A report of another
    ``task`` is refused."""
    selection = selection.strip()
    results = os.path.join(report, RESULTS_FILE) if report and os.path.isdir(report) else report
    if selection.startswith("best:"):
        try:
            budget = float(selection[len("best:"):])
        except ValueError:
            raise ValueError(f"--export-stitch {selection!r}: give best:G with G a number of GFLOPs, e.g. "
                             "best:500") from None
        if report is None:
            raise ValueError(f"--export-stitch {selection}: needs the per-stitch report to choose from "
                             "(--eval-only --stitch all writes it)")
        chosen = best_stitch_in_report(report, budget, task)
        space[chosen]  # a report of another SN-Net may name a stitch this one lacks: KeyError naming the ids
        return [chosen]
    return select_stitches(selection, space, pareto_source=results, task=task)


def best_stitch_in_report(report: str, max_gflops: float, task: Optional[str] = None) -> int:
    """The id of the stitch with the best primary metric within ``max_gflops`` GFLOPs in the per-stitch report
    ``report`` (a directory or its results file), as ``python -m snnet_core.select REPORT --max-gflops G`` chooses
    it. A report of another ``task`` is a ``SelectionError``."""
    source, record = read_report(report)
    try:
        check_task(record, source, task, "give the report of this model's per-stitch evaluation")
    except ValueError as exc:
        raise SelectionError(str(exc)) from None
    return int(choose_stitch(record, source, max_gflops=max_gflops).chosen["id"])


def demo_stitch(max_gflops: Optional[float], report: Optional[str], task: Optional[str] = None) -> Optional[int]:
    """The stitch a demo's ``--max-gflops G --report REPORT`` asks for: the best of the per-stitch report within
    ``G`` GFLOPs (``best_stitch_in_report``); ``None`` without a budget. ``--report`` without a budget, or a budget
    without ``--report``, is a ``ValueError`` saying what to give."""
    if max_gflops is None:
        if report is not None:
            raise ValueError("--report is read by --max-gflops: give a budget, or leave --report out")
        return None
    if report is None:
        raise ValueError("--max-gflops G needs --report REPORT, the per-stitch report (train.py --eval-only --stitch "
                         "all) whose GFLOPs and metric it ranks the stitches by")
    return best_stitch_in_report(report, max_gflops, task=task)


def plot_exported_stitch(report: Optional[str], stitch_id: int, export_dir: str, task: Optional[str] = None
                         ) -> Optional[str]:
    """Write ``export_dir/stitch_report.png``: the per-stitch report ``report`` (a directory or its results file)
    plotted with stitch ``stitch_id`` marked as the selected one. Nothing is written (``None`` returned) where
    there is no report or it holds no row of the stitch, and where it cannot be read or is not a ``task`` report
    (``check_task``) a warning says why: the export itself stands. Else returns the PNG's path."""
    results = os.path.join(report, RESULTS_FILE) if report and os.path.isdir(report) else report
    if not results or not os.path.isfile(results):
        return None
    try:
        record = read_results(results)
        check_task(record, results, task, "it is not plotted beside the export")
    except (RuntimeError, ValueError) as exc:
        logger.warning("exported stitch %d is not plotted in %s: %s", stitch_id, export_dir, exc)
        return None
    if str(stitch_id) not in record["stitches"]:
        return None
    path = os.path.join(export_dir, EXPORT_PLOT)
    plot_report(record, path, f"exported stitch {stitch_id} among the {len(record['stitches'])} of {results}",
                selected=stitch_id)
    return path


def _nothing_fits(source: str, rows: Mapping[int, Mapping], cost: Mapping[int, float],
                  values: Mapping[int, Optional[float]], metric: str, cost_column: str, budget: float) -> str:
    unit, flag, _ = COSTS[cost_column]
    ranked = [k for k in cost if has_finite_value(values[k])]
    if not ranked:
        return (f"{source} has no stitch with both a finite {metric!r} and a finite {cost_column}: nothing to "
                f"choose; evaluate again (--eval-only --stitch all) or rank by another --metric")
    cheapest = min(ranked, key=lambda k: (cost[k], k))
    return (f"no stitch of {source} fits {flag} {budget:g} (with a finite {metric!r}): the cheapest is stitch "
            f"{cheapest} ({rows[cheapest]['route']}) at {cost[cheapest]:.4g} {unit}; give {flag} "
            f"{cost[cheapest]:.4g} or more")


def _format_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *rows])


def format_choice(choice: Choice, context: int = 3) -> str:
    """The choice and up to ``context`` frontier points on each side of it, as text."""
    _, _, axis = COSTS[choice.cost]
    timed = LATENCY_COLUMN in choice.chosen
    direction = "higher" if choice.higher_is_better else "lower"
    within = _within(choice)
    c = choice.chosen
    costs = [f"{c['gflops']:.4g} GFLOPs"] + ([f"{_number(c[LATENCY_COLUMN])} ms"] if timed else [])
    details = {"route": f"{c['route']}  ({c['type']})", choice.metric: _number(c[choice.metric]),
               "cost": f"{', '.join(costs)}, {c['params_m']:.1f} M params"}
    if timed:
        details["latency"] = _describe_latency(choice.latency)
    width = max(map(len, details))
    lines = [f"{choice.source}: {choice.num_stitches} stitches" + (f" ({choice.task})" if choice.task else ""),
             f"best {choice.metric} ({direction} is better) {within}: stitch {c['id']}"]
    lines += [f"  {name.ljust(width)}  {text}" for name, text in details.items()]
    ids = [r["id"] for r in choice.frontier]
    at = ids.index(c["id"])
    lo, hi = max(0, at - context), min(len(ids), at + context + 1)
    shown = "all its" if (lo, hi) == (0, len(ids)) else f"{hi - lo} of its"
    lines += ["", f"Pareto frontier of {choice.metric} vs {axis} ({shown} {len(ids)} points; * the choice):"]
    header = ["", "id", "type", "route", "GFLOPs"] + ([LATENCY_COLUMN] if timed else []) + [choice.metric]
    table = [["*" if r["id"] == c["id"] else "", str(r["id"]), r["type"], r["route"], f"{r['gflops']:.4g}"]
             + ([_number(r[LATENCY_COLUMN])] if timed else []) + [_number(r[choice.metric])]
             for r in choice.frontier[lo:hi]]
    lines.append(_format_table(header, table))
    if (lo, hi) != (0, len(ids)):
        lines.append(f"({lo} cheaper and {len(ids) - hi} costlier frontier points not shown; --context N shows more)")
    return "\n".join(lines)


def _within(choice: Choice) -> str:
    return "at any cost" if choice.budget is None else f"within {COSTS[choice.cost][1]} {choice.budget:g}"


def _number(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def _describe_latency(info: Optional[Mapping[str, Any]]) -> str:
    if not info:
        return f"measured how and where is not recorded (no {LATENCY_KEY!r} entry in the results file)"
    height, width = info["input_size"]
    return (f"median of {info['runs']} runs after {info['warmup']} warm-up, batch {info['batch']} at "
            f"{height}x{width}, {'AMP' if info['amp'] else 'fp32'}, on {info['device']}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Choose the stitch with the best metric within a GFLOPs or latency budget from a per-stitch "
                    "report, and show the Pareto frontier around it.",
    )
    parser.add_argument("report", metavar="REPORT", help=f"per-stitch report directory or its {RESULTS_FILE}")
    parser.add_argument("--max-gflops", type=float, metavar="G", help="GFLOPs budget")
    parser.add_argument("--max-latency-ms", type=float, metavar="MS",
                        help=f"latency budget (the report's {LATENCY_COLUMN} column)")
    parser.add_argument("--metric", metavar="NAME", help="metric to maximise/minimise (default: the primary one)")
    direction = parser.add_mutually_exclusive_group()
    direction.add_argument("--higher-is-better", dest="higher_is_better", action="store_true", default=None,
                           help="the metric is better when higher (needed for metrics select does not know)")
    direction.add_argument("--lower-is-better", dest="higher_is_better", action="store_false",
                           help="the metric is better when lower")
    parser.add_argument("--context", type=int, default=3, metavar="N",
                        help="frontier points shown on each side of the choice (default 3)")
    parser.add_argument("--json", action="store_true", help="print one JSON object (the full frontier)")
    parser.add_argument("--plot", metavar="PNG", help="also write the metric vs cost plot with the choice marked")
    add_debug_argument(parser)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)  # before the logging set-up, which imports detectron2 (--help stays fast)
    if args.context < 0:
        parser.error(f"--context {args.context}: give a number >= 0")
    with run_logging(("snnet_core",), to_stderr=True):  # detectron2's log format; stdout holds the choice (--json)
        return choose_and_print(parser, args, argv)


def choose_and_print(parser: argparse.ArgumentParser, args: argparse.Namespace,
                     argv: Optional[Sequence[str]]) -> int:
    """``main`` after its arguments are parsed: print the choice (exit status 0) or the refusal (2)."""
    try:
        source, record = read_report(args.report)
        choice = choose_stitch(record, source, args.metric, args.max_gflops, args.max_latency_ms,
                               args.higher_is_better)
        if args.plot:
            plot_choice(choice, record, args.plot)
    except (SelectionError, OSError) as exc:  # OSError: --plot's file could not be written (the message names it)
        if debug_requested(argv):
            raise
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(choice.to_json(), indent=1) if args.json else format_choice(choice, args.context))
    return 0


def plot_choice(choice: Choice, record: Mapping[str, Any], path: str) -> None:
    """The PNG ``path``: ``choice.metric`` vs ``choice.cost`` of the results ``record``, the chosen stitch marked."""
    title = f"stitch {choice.chosen['id']}: best {choice.metric} {_within(choice)}\n{choice.source}"
    plot_report(record, path, title, choice.metric, choice.higher_is_better, choice.cost, choice.chosen["id"])


if __name__ == "__main__":
    run_command(main, PROG)
