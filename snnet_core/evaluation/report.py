"""Per-stitch evaluation loop and report (JSON, CSV, Markdown, PNG plot with the Pareto frontier).

``evaluate_stitches`` calls a task's ``evaluate(stitch_id) -> {metric: value}`` for every chosen stitch (or
``evaluate_stitch_groups`` a task's ``evaluate_group([id, ...]) -> {id: {metric: value}}`` for each group of
stitches evaluated together) and merges each result into ``stitch_results.json`` as soon as it is done: under a
lock on the file it re-reads it, adds the row(s) and rewrites it atomically. So an interrupted run resumes
without redoing finished stitches, and evaluators sharing an output directory (e.g. disjoint ``--stitch``
lists) keep each other's rows. The table and plot are written from the merged results.

The results file is strict JSON::

    {"run_key": str, "task": str | null, "primary_metric": str, "higher_is_better": bool,
     "stitches": {"<id>": {"id", "type", "route", "gflops", "params_m", <metric>: float | null, ...}}}

A metric that came out NaN or inf is stored as ``null`` (with a warning) and the stitch is left off the
frontier. ``task`` (e.g. ``"depth"``, ``"detection"``) lets ``select_stitches`` refuse another task's results.
"""
from __future__ import annotations

import csv
import json
import logging
import math
import os
import sys
from typing import TYPE_CHECKING, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from tqdm.contrib.logging import logging_redirect_tqdm

from snnet_core.io.atomic_io import file_lock, remove_stale_temporaries, write_atomic, write_json_atomic
from snnet_core.evaluation.metric_labels import known_direction, metric_label
from snnet_core.progress import evaluation_progress
from snnet_core.evaluation.selection import has_finite_value, pareto_frontier
from snnet_core.model.stitch_space import StitchSpace

if TYPE_CHECKING:  # annotations only: reading or writing a report needs neither torch nor fvcore
    from snnet_core.model.flops import FlopsTable

logger = logging.getLogger(__name__)

RESULTS_FILE = "stitch_results.json"
LATENCY_COLUMN = "latency_ms"  # a row's latency, measured by snnet_core.evaluation.latency
LATENCY_KEY = "latency"  # the record's entry saying how the latency was measured
FIXED_COLUMNS = ("id", "type", "route", "gflops", "params_m")
LATENCY_PLOT = "stitch_report_latency.png"  # written when the rows have latency_ms (snnet_core.evaluation.latency)
MAX_RESULTS_BYTES = 64 << 20  # read_results refuses a larger file unread
REPORT_FILES = ("stitch_report.csv", "stitch_report.md", "stitch_report.png", LATENCY_PLOT)  # write_report's
_RECORD_FIELDS = ("run_key", "primary_metric", "higher_is_better", "stitches")
COST_COLUMNS = ("gflops", "params_m", "latency_ms")  # latency_ms: snnet_core.evaluation.latency.LATENCY_COLUMN


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def metric_names(record: Mapping) -> List[str]:
    """The metric columns of a results record, in the order the rows first name them."""
    names: Dict[str, None] = {}
    for row in record["stitches"].values():
        names.update((k, None) for k in row if k not in FIXED_COLUMNS)
    return list(names)


def check_results(record, source: str) -> None:
    """Raise ``ValueError`` naming ``source`` (a file) if ``record`` is not a well-formed results record.

    Every row needs the fixed columns, a number or ``null`` for every metric any row has (the primary metric
    included), and the id it is filed under. ``higher_is_better`` must be true or false, and the direction
    ``snnet_core.evaluation.metric_labels`` knows for the primary metric (depth metrics, COCO AP): a flipped one would make
    the worst stitches the frontier and the best choice.
    """
    what = f"{source} is not a per-stitch results file ({RESULTS_FILE} written by snnet_core.evaluate_stitches)"
    if not isinstance(record, dict):
        raise ValueError(f"{what}: it holds a JSON {type(record).__name__}")
    missing = [k for k in _RECORD_FIELDS if k not in record]
    if missing or not isinstance(record["stitches"], dict):
        hint = ("; it looks like a stitch_report.json, give the stitch_results.json beside it"
                if isinstance(record.get("stitches"), list) else "")
        raise ValueError(f"{what}: it lacks {missing or ['a stitches mapping']}{hint}")
    primary, higher = record["primary_metric"], record["higher_is_better"]
    for key, value, wanted in (("primary_metric", primary, str), ("higher_is_better", higher, bool)):
        if not isinstance(value, wanted):
            what = "a metric name" if wanted is str else "true or false"
            raise ValueError(f"{source}: {key} is {json.dumps(value, default=repr)}, not {what} (the file was edited "
                             "or is damaged); evaluate again into a new output directory")
    wrong = wrong_direction(primary, higher)
    if wrong:
        raise ValueError(f"{source}: {wrong} (the file was edited or is damaged): set \"higher_is_better\": "
                         f"{json.dumps(not higher)} in it, or evaluate again into a new output directory")
    fix = "delete that stitch's row to evaluate it again, or start a new output directory"
    for key, row in record["stitches"].items():
        if not isinstance(row, dict) or any(c not in row for c in FIXED_COLUMNS):
            raise ValueError(f"{source}: the row of stitch {key} lacks some of the columns {list(FIXED_COLUMNS)} "
                             f"(the file was edited or is damaged); {fix}")
        if not (_is_number(row["id"]) and str(row["id"]) == key):
            raise ValueError(f"{source}: the row filed under stitch {key!r} has id {row['id']!r}; {fix}")
    if not record["stitches"]:
        return
    primary = record["primary_metric"]
    for name in dict.fromkeys([primary, *metric_names(record)]):
        for key, row in record["stitches"].items():
            if name not in row:
                which = "the primary metric" if name == primary else "a metric other stitches have"
                raise ValueError(f"{source}: stitch {key} has no {name!r} ({which}): the file was edited or mixes "
                                 f"evaluations of different metrics; {fix}")
            if not (row[name] is None or _is_number(row[name])):
                raise ValueError(f"{source}: stitch {key} has {name}={row[name]!r}, not a number or null; {fix}")
    for key, row in record["stitches"].items():
        if not all(_is_number(row[c]) for c in ("gflops", "params_m")):
            raise ValueError(f"{source}: stitch {key} has gflops={row['gflops']!r}, params_m={row['params_m']!r}, "
                             f"not numbers; {fix}")
        for cost in COST_COLUMNS:  # a cost drives the choice of a stitch: never negative, NaN or inf
            value = row.get(cost)
            if value is not None and not (_is_number(value) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{source}: stitch {key} has {cost}={value!r}, not a finite cost >= 0 (the file was "
                                 f"edited or is damaged); {fix}")


def wrong_direction(metric: str, higher_is_better: bool) -> Optional[str]:
    """Why ``higher_is_better`` is the wrong direction of ``metric`` (one whose direction
    ``snnet_core.evaluation.metric_labels.known_direction`` knows), or ``None``."""
    known = known_direction(metric)
    if known is None or higher_is_better == known:
        return None
    right = "higher" if known else "lower"
    return (f"higher_is_better is {json.dumps(higher_is_better)} for {metric!r}, but a {right} {metric} is better "
            "(its Pareto frontier and best stitch would be the worst ones)")


def check_task(record: Mapping, source: str, task: Optional[str], fix: str) -> None:
    """``ValueError`` naming ``source`` unless the results ``record`` is tagged with ``task`` (a file without the
    tag, e.g. edited, is refused as well: its metrics could be another task's); ``task=None`` checks nothing."""
    if task is None or record.get("task") == task:
        return
    what = ("has no task tag (the file was edited, or written before reports were tagged): it may be another task's "
            "report" if record.get("task") is None else f"is a {record['task']} report")
    raise ValueError(f"{source} {what} (metrics {', '.join(metric_names(record))}), not a {task} one: {fix}")


def read_results(path: str) -> Dict[str, dict]:
    """A results file, checked (``check_results``); ``RuntimeError`` if it is not valid JSON (or not text, or
    nested too deeply to read), ``ValueError`` if it is larger than a results file can be (``MAX_RESULTS_BYTES``:
    a crafted file is refused before it is read into memory)."""
    size = os.path.getsize(path)
    if size > MAX_RESULTS_BYTES:
        raise ValueError(f"{path} is {size / 2**20:.0f} MiB, more than a per-stitch results file holds (at most "
                         f"{MAX_RESULTS_BYTES >> 20} MiB; 10,000 stitches take about 5 MiB): it is not one, give the "
                         f"{RESULTS_FILE} of a per-stitch evaluation")
    try:
        with open(path) as f:
            record = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        why = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise RuntimeError(f"{path} is not valid JSON ({why}); move it away to start the evaluation afresh") from exc
    check_results(record, path)
    return record


def load_results(output_dir: str) -> Dict[str, dict]:
    """The results file of a previous (possibly interrupted) run in ``output_dir``, or an empty record."""
    path = os.path.join(output_dir, RESULTS_FILE)
    return read_results(path) if os.path.isfile(path) else {}


def select_stitches(
    selection: str,
    space: StitchSpace,
    pareto_source: Optional[str] = None,
    task: Optional[str] = None,
    metric: Optional[str] = None,
    higher_is_better: Optional[bool] = None,
) -> List[int]:
    """Resolve ``all``, ``ID[,ID...]`` or ``pareto`` (frontier of a previous evaluation's results file).

    Args:
        task: the caller's task; a ``pareto_source`` written for another task is refused.
        metric, higher_is_better: the frontier's metric (default: the file's primary metric and its direction);
            every row must have it, so another task's file (with other metrics) is refused as well.
    """
    if selection.strip() != "pareto":
        return space.parse_selection(selection)
    if pareto_source is None or not os.path.isfile(pareto_source):
        raise FileNotFoundError(
            f"--stitch pareto needs the results of a previous per-stitch evaluation ({RESULTS_FILE}); "
            f"not found at {pareto_source!r}. Run with --stitch all first (e.g. on a validation subset)."
        )
    record = read_results(pareto_source)
    check_task(record, pareto_source, task, f"give --stitch pareto (--pareto-from) the {RESULTS_FILE} of a {task} "
               "evaluation")
    if metric is None or metric == record["primary_metric"]:
        metric = record["primary_metric"]
        higher_is_better = record["higher_is_better"] if higher_is_better is None else higher_is_better
    elif higher_is_better is None:
        raise ValueError(f"select_stitches(metric={metric!r}) needs higher_is_better: {pareto_source} ranks by "
                         f"{record['primary_metric']!r}")
    rows = record["stitches"]
    lacking = [k for k, r in rows.items() if metric not in r]
    if lacking:
        raise ValueError(
            f"{pareto_source}: stitch {lacking[0]} has no {metric!r} (its metrics: {metric_names(record)}); "
            f"it holds results of another task or metric set: give the {RESULTS_FILE} of an evaluation with {metric!r}"
        )
    foreign = [k for k in rows if int(k) not in space]
    if foreign:
        raise ValueError(f"{pareto_source} holds stitches {foreign[:10]} that this stitch space "
                         f"({'/'.join(map(str, space.depths))} blocks, {len(space)} stitches) lacks: it was written "
                         "for another SN-Net")
    unranked = sorted((int(k) for k, r in rows.items() if not has_finite_value(r[metric])))
    if unranked:
        logger.warning("%s: stitches %s have no finite %r and are left out of the Pareto selection",
                       pareto_source, unranked, metric)
    frontier = pareto_frontier({int(k): r["gflops"] for k, r in rows.items()},
                               {int(k): r[metric] for k, r in rows.items()}, higher_is_better)
    if not frontier:
        raise ValueError(f"{pareto_source} holds no stitch with a finite {metric!r}: nothing to select. "
                         "Run with --stitch all first")
    return frontier


def _metric_value(value) -> Optional[float]:
    """``value`` as a float, or ``None`` if it is missing, NaN or inf (``_warn_non_finite`` says so once per run)."""
    number = None if value is None else float(value)
    return number if number is not None and math.isfinite(number) else None


def _warn_non_finite(rows: Sequence[Mapping], primary_metric: str, reasons: Mapping[str, str]) -> None:
    """One warning for all the metrics that came out NaN/inf (stored as null) for some of the evaluated ``rows``:
    the metrics with the same stitches and reason together, each group with its stitches and ``reasons[metric]``,
    e.g. ``bbox_APl, segm_APl for all 14 evaluated stitches (<why COCO's APl is NaN>)``."""
    stitches: Dict[str, List[int]] = {}
    for row in rows:
        for name, value in row.items():
            if name not in FIXED_COLUMNS and value is None:
                stitches.setdefault(name, []).append(row["id"])
    groups: Dict[tuple, List[str]] = {}
    for name, ids in stitches.items():
        groups.setdefault((tuple(ids), reasons.get(name)), []).append(name)
    parts = []
    for (ids, reason), names in groups.items():
        shown = ", ".join(map(str, ids[:20])) + (", ..." if len(ids) > 20 else "")
        which = (f"all {len(rows)} evaluated stitches" if len(ids) == len(rows) else
                 f"{len(ids)} of the {len(rows)} evaluated stitches ({shown})")
        parts.append(f"{', '.join(names)} for {which}" + (f" ({reason})" if reason else "")
                     + (", left off the frontier" if primary_metric in names else ""))
    if parts:
        logger.warning("NaN or inf metrics, stored as null: %s", "; ".join(parts))


def _open_record(path: str, run_key: str, task: Optional[str], primary_metric: str,
                 higher_is_better: bool) -> Dict:
    """The current results in ``path`` (or a new record) for this run; call it under ``file_lock(path)``.

    Results of another ``run_key`` (another model, or other evaluation options) or another ``task`` are never
    mixed in: a file holding them is an error. The primary metric and its direction become this call's (the
    rows are measurements of the same run), so every row must have that metric.
    """
    record = read_results(path) if os.path.isfile(path) else {}
    if not record:
        return {"run_key": run_key, "task": task, "primary_metric": primary_metric,
                "higher_is_better": higher_is_better, "stitches": {}}
    stored_task = record.get("task")
    if record["run_key"] != run_key or (task is not None and stored_task not in (None, task)):
        raise RuntimeError(
            f"{path} holds results of another run ({record['run_key']!r}, task {stored_task!r}; this one is "
            f"{run_key!r}, task {task!r}); choose a new output directory"
        )
    record.update(task=task or stored_task, primary_metric=primary_metric, higher_is_better=higher_is_better)
    check_results(record, path)
    return record


def evaluate_stitches(
    evaluate: Callable[[int], Mapping[str, float]],
    stitch_ids: Sequence[int],
    space: StitchSpace,
    flops: FlopsTable,
    output_dir: str,
    primary_metric: str,
    higher_is_better: bool = True,
    run_key: str = "",
    title: str = "SN-Net stitches",
    progress: bool = True,
    task: Optional[str] = None,
    resume: bool = True,
    images: Optional[int] = None,
    non_finite_reasons: Optional[Mapping[str, str]] = None,
) -> Dict[str, dict]:
    """Evaluate stitches one by one, resumably, merging into a shared results file, and write the report.

    Args:
        evaluate: ``stitch id -> {metric name: value}``; NaN/inf values are stored as ``null``.
        stitch_ids: stitches to evaluate (a repeated id is evaluated once).
        space, flops: the SN-Net's stitch space and FLOPs table (GFLOPs/params columns).
        output_dir: where ``stitch_results.json``, ``stitch_report.{csv,md,png}`` (and, with a ``latency_ms``
            column, ``stitch_report_latency.png``) go.
        primary_metric: metric of the Pareto frontier and the plot; ``higher_is_better`` its direction.
        run_key: identifies the model and the evaluation options. A results file written for another
            ``run_key`` (or ``task``) is refused (``RuntimeError``), at the start or when it appears mid-run.
        task: names the task in the results file (``select_stitches`` refuses another task's results).
        resume: skip the stitches the results file already holds. Pass ``False`` where the caller has chosen
            the stitches still to do itself (e.g. broadcast to DDP ranks, which must all evaluate the same ones).
        progress: show a progress bar. With ``images`` (the number of test images a stitch is evaluated on) it
            counts ``images x stitches`` and ``evaluate`` moves it per batch (``snnet_core.progress.advance``);
            without, it counts stitches.
        non_finite_reasons: why a metric can come out NaN/inf (``{metric name: reason}``), said in the one warning
            that names the metrics stored as ``null`` and their stitches (e.g. COCO's ``APl`` on a test set
            without large objects).

    Returns:
        the merged results record ``{"stitches": {id: row}, ...}`` (rows of every evaluator of the file).
    """
    return evaluate_stitch_groups(
        lambda ids: {ids[0]: evaluate(ids[0])}, [[s] for s in stitch_ids], space, flops, output_dir, primary_metric,
        higher_is_better, run_key, title, progress, task, resume, images, non_finite_reasons,
    )


def evaluate_stitch_groups(
    evaluate_group: Callable[[List[int]], Mapping[int, Mapping[str, float]]],
    groups: Sequence[Sequence[int]],
    space: StitchSpace,
    flops: FlopsTable,
    output_dir: str,
    primary_metric: str,
    higher_is_better: bool = True,
    run_key: str = "",
    title: str = "SN-Net stitches",
    progress: bool = True,
    task: Optional[str] = None,
    resume: bool = True,
    images: Optional[int] = None,
    non_finite_reasons: Optional[Mapping[str, str]] = None,
) -> Dict[str, dict]:
    """``evaluate_stitches`` for an ``evaluate_group`` that evaluates several stitches together (e.g. in one pass
    over the data with ``run_stitches``): each group's rows are merged as ``evaluate_stitches`` merges one row,
    all at once when the group is done, so an interrupted run loses at most the group in progress.

    Args:
        evaluate_group: ``[stitch id, ...] -> {stitch id: {metric name: value}}`` for exactly the ids given.
        groups: the stitches to evaluate, in groups (an id repeated anywhere is evaluated once, in its first
            group). With ``resume``, the stitches the results file holds are dropped from their group and a group
            left empty is skipped. With ``images``, the progress bar moves per batch inside a group (as
            ``evaluate_group`` calls ``snnet_core.progress.advance``) and stands at the group's share, ``images x
            len(group)``, when it is done. Other arguments: as ``evaluate_stitches``.
    """
    wrong = wrong_direction(primary_metric, bool(higher_is_better))
    if wrong:
        raise ValueError(f"evaluate_stitches: {wrong}: pass higher_is_better={not higher_is_better}")
    path = os.path.join(output_dir, RESULTS_FILE)
    seen: Dict[int, None] = {}
    todo_groups = []
    for group in groups:
        ids = [space[s].id for s in group]  # validates every id before any evaluation
        todo_groups.append([s for s in dict.fromkeys(ids) if s not in seen])
        seen.update(dict.fromkeys(ids))
    with file_lock(path):
        remove_stale_temporaries(path)  # of a killed write; every writer of the file holds this lock
        record = _open_record(path, run_key, task, primary_metric, higher_is_better)
    todo_groups = [g for g in ([s for s in group if not (resume and str(s) in record["stitches"])]
                               for group in todo_groups) if g]
    evaluated: List[Dict] = []
    # log lines print above the progress bar
    with logging_redirect_tqdm(console_loggers()), \
            evaluation_progress(sum(map(len, todo_groups)), images, progress) as bar:
        for group in todo_groups:
            bar.start_group(len(group))
            evaluated += _evaluate_and_merge(evaluate_group, group, space, flops, path, run_key, task, primary_metric,
                                             higher_is_better)
            bar.end_group()
    _warn_non_finite(evaluated, primary_metric, non_finite_reasons or {})
    with file_lock(path):  # the report of everything merged so far; the lock orders concurrent reports
        record = _open_record(path, run_key, task, primary_metric, higher_is_better)
        frontier = write_report(record, output_dir, title)
    for line in frontier_lines(record, frontier):
        logger.info(line)
    logger.info("per-stitch report of %d stitches: %s (%s, stitch_report.csv/.md/.png)", len(record["stitches"]),
                output_dir, RESULTS_FILE)
    return record


def is_console_handler(handler: logging.Handler) -> bool:
    """A handler writing to the terminal (stdout/stderr; a log file's handler is a ``StreamHandler`` too)."""
    return isinstance(handler, logging.StreamHandler) and getattr(handler, "stream", None) in (sys.stdout, sys.stderr)


def console_loggers() -> List[logging.Logger]:
    """The loggers with a console handler, for ``logging_redirect_tqdm``: it would give any other logger a console
    handler of its own, printing its messages twice where they propagate."""
    candidates = [logging.root] + [lg for lg in logging.Logger.manager.loggerDict.values()
                                   if isinstance(lg, logging.Logger)]
    return [lg for lg in candidates if any(is_console_handler(h) for h in lg.handlers)]


def _evaluate_and_merge(evaluate_group, group: List[int], space: StitchSpace, flops: FlopsTable, path: str,
                        run_key: str, task: Optional[str], primary_metric: str, higher_is_better: bool
                        ) -> List[Dict]:
    """Evaluate one group, merge its rows into the results file under its lock and log a line per stitch;
    returns the rows."""
    results = evaluate_group(list(group))
    if set(results) != set(group):
        raise KeyError(f"evaluate_group({group}) returned the stitches {sorted(results)}: it must return exactly "
                       "the stitches it is given")
    rows = [_result_row(space, flops, sid, results[sid], primary_metric) for sid in group]
    with file_lock(path):
        record = _open_record(path, run_key, task, primary_metric, higher_is_better)
        for row in rows:
            known = metric_names(record)
            metrics = [k for k in row if k not in FIXED_COLUMNS]
            if known and set(known) != set(metrics):
                raise RuntimeError(f"evaluate({row['id']}) returned the metrics {sorted(metrics)}, but {path} "
                                   f"holds rows with {sorted(known)}; evaluate into a new output directory")
            record["stitches"][str(row["id"])] = row
        write_json_atomic(path, record)
    for row in rows:
        logger.info("stitch %s", row_summary(row, primary_metric))
    return rows


def row_summary(row: Mapping, primary_metric: str, extra_metrics: int = 3) -> str:
    """One line for a results row: id, route type, route, GFLOPs, the primary metric and up to
    ``extra_metrics`` more, e.g. ``5 SF L[0:2] -> S[1:4] | 0.268 GFLOPs | a1 0.692, a2 0.913, ...``."""
    names = [primary_metric] + [k for k in row if k not in FIXED_COLUMNS and k != primary_metric][:extra_metrics]
    values = ", ".join(f"{k} {'n/a' if row[k] is None else format(row[k], '.4g')}" for k in names)
    return f"{row['id']:>3} {row['type']:<6} {row['route']:<28} | {row['gflops']:.4g} GFLOPs | {values}"


def frontier_lines(record: Mapping, frontier: Sequence[int]) -> List[str]:
    """The Pareto frontier of a results record as log lines: a heading, then one ``row_summary`` per stitch on
    the frontier, cheapest first."""
    primary, rows = record["primary_metric"], record["stitches"]
    lines = [f"Pareto frontier on {primary} ({len(frontier)} of {len(rows)} stitches, cheapest first):"]
    ordered = sorted((rows[str(i)] for i in frontier), key=lambda r: (r["gflops"], r["id"]))
    return lines + ["  " + row_summary(r, primary) for r in ordered]


def _result_row(space: StitchSpace, flops: FlopsTable, sid: int, values: Mapping[str, float],
                primary_metric: str) -> Dict:
    """The results-file row of stitch ``sid`` with metrics ``values`` (NaN/inf as ``None``)."""
    stitch = space[sid]
    metrics = {k: _metric_value(v) for k, v in values.items()}
    if primary_metric not in metrics:
        raise KeyError(f"evaluate({sid}) returned {sorted(metrics)} without the primary metric {primary_metric!r}")
    return {"id": sid, "type": stitch.kind, "route": stitch.route,
            "gflops": flops.gflops[sid], "params_m": flops.params_m[sid], **metrics}


def write_report(record: Mapping, output_dir: str, title: str = "SN-Net stitches") -> List[int]:
    """Write CSV, Markdown and PNG from a results record (atomically); returns the Pareto-frontier ids.

    Rows with a ``latency_ms`` column (``snnet_core.evaluation.latency``) also get ``stitch_report_latency.png``: the same
    plot against latency, with the frontier on latency.

    Stitches without a finite primary metric are listed (empty CSV cell, ``n/a`` in the table), named in a note
    of the Markdown report, and left off the frontier and the plot.

    Call it under ``file_lock`` of the results file, as every writer of a report does: it removes the temporaries
    that killed writes of these files left (``remove_report_temporaries``).
    """
    check_results(record, f"the results record of {output_dir}")
    remove_report_temporaries(output_dir, REPORT_FILES)
    rows = {int(k): v for k, v in record["stitches"].items()}
    primary, hib = record["primary_metric"], record["higher_is_better"]
    frontier = pareto_frontier({k: r["gflops"] for k, r in rows.items()}, {k: r[primary] for k, r in rows.items()},
                               hib)
    names = metric_names(record)
    ordered = sorted(rows.values(), key=lambda r: (r["gflops"], r["id"]))
    on_front = set(frontier)
    unranked = [r["id"] for r in ordered if not has_finite_value(r[primary])]

    def write_csv(f) -> None:
        writer = csv.writer(f)
        writer.writerow(list(FIXED_COLUMNS) + names + ["on_frontier"])
        for r in ordered:
            writer.writerow([r[k] for k in list(FIXED_COLUMNS) + names] + [r["id"] in on_front])

    def write_markdown(f) -> None:
        f.write(f"# {title}\n\n{len(rows)} stitches; Pareto frontier on `{primary}` "
                f"({'higher' if hib else 'lower'} is better) marked with *.\n\n")
        if unranked:
            f.write(f"No finite `{primary}` (NaN/inf when evaluated, stored as null), left off the frontier: "
                    f"stitches {', '.join(map(str, unranked))}.\n\n")
        header = ["id", "type", "route", "GFLOPs", "params (M)"] + names + ["frontier"]
        f.write("| " + " | ".join(header) + " |\n|" + "---|" * len(header) + "\n")
        for r in ordered:
            cells = [str(r["id"]), r["type"], f"`{r['route']}`", f"{r['gflops']:.4g}", f"{r['params_m']:.1f}"]
            cells += ["n/a" if r[m] is None else f"{r[m]:.4g}" for m in names] + ["*" if r["id"] in on_front else ""]
            f.write("| " + " | ".join(cells) + " |\n")

    write_atomic(os.path.join(output_dir, "stitch_report.csv"), write_csv)  # POSIX text mode keeps csv's \r\n
    write_atomic(os.path.join(output_dir, "stitch_report.md"), write_markdown)
    if rows:
        plot_report(record, os.path.join(output_dir, "stitch_report.png"), title)
    if any(has_finite_value(r.get(LATENCY_COLUMN)) for r in rows.values()):  # timed with --measure-latency
        plot_report(record, os.path.join(output_dir, LATENCY_PLOT), title, cost=LATENCY_COLUMN)
    return frontier


ROUTE_NAMES = {"FS": "Fast-to-Slow", "SF": "Slow-to-Fast", "FSF": "Fast-Slow-Fast", "SFS": "Slow-Fast-Slow"}
ROUTE_COLOURS = {"FS": "tab:blue", "SF": "tab:orange", "FSF": "tab:green", "SFS": "tab:purple"}


def plot_report(record: Mapping, path: str, title: str = "SN-Net stitches", metric: Optional[str] = None,
                higher_is_better: Optional[bool] = None, cost: str = "gflops", selected: Optional[int] = None
                ) -> List[int]:
    """``plot_metric_vs_gflops`` of a results record: ``metric`` (default: the primary one, in the record's
    direction; another needs ``higher_is_better`` unless ``snnet_core.evaluation.metric_labels`` knows it) against ``cost``
    (``gflops`` or ``latency_ms``), with the Pareto frontier of the stitches with a finite cost, and stitch
    ``selected`` marked. Returns that frontier's ids."""
    metric = metric or record["primary_metric"]
    if higher_is_better is None:
        higher_is_better = record["higher_is_better"] if metric == record["primary_metric"] else \
            known_direction(metric)
    if higher_is_better is None:
        raise ValueError(f"plot_report(metric={metric!r}): it is not known whether a higher {metric} is better; pass "
                         "higher_is_better")
    rows = {int(k): r for k, r in record["stitches"].items() if has_finite_value(r.get(cost))}
    frontier = pareto_frontier({k: r[cost] for k, r in rows.items()}, {k: r[metric] for k, r in rows.items()},
                               higher_is_better)
    cost_label = {"gflops": "GFLOPs", LATENCY_COLUMN: "latency (ms per batch)"}.get(cost, cost)
    plot_metric_vs_gflops(rows, frontier, metric, path, title, cost, cost_label, higher_is_better, selected)
    return frontier


def remove_report_temporaries(output_dir: str, names: Sequence[str]) -> List[str]:
    """Delete the temporaries killed atomic writes of the report files ``names`` left in ``output_dir`` (e.g. a
    ``--report-dir`` outside the training run's directory, which ``run_dir.remove_killed_writes`` does not clear);
    returns the removed paths. Call it under ``file_lock`` of the results file, which every writer of the files
    holds."""
    removed = [tmp for name in names for tmp in remove_stale_temporaries(os.path.join(output_dir, name))]
    if removed:
        logger.info("removed %d temporary file(s) of killed report writes: %s", len(removed), removed)
    return removed


def plot_metric_vs_gflops(rows: Mapping[int, Mapping], frontier: Sequence[int], metric: str, path: str,
                          title: str, cost: str = "gflops", cost_label: str = "GFLOPs",
                          higher_is_better: Optional[bool] = None, selected: Optional[int] = None) -> None:
    """Scatter of ``metric`` vs GFLOPs (or another ``cost`` column, e.g. ``latency_ms``, the x axis named
    ``cost_label``), PNG written atomically to ``path``.

    One colour per route type (legend: type, name, count), the Pareto ``frontier`` as a line with the ids of its
    stitches, each anchor as a star named in the legend (``small anchor S[0:12], id 0``), and stitch ``selected``
    (e.g. the exported one) ringed and named. The y axis spells the metric out with its direction
    (``snnet_core.evaluation.metric_labels.metric_label``; ``higher_is_better`` for a metric it does not know).
    Rows without a finite ``metric`` are not drawn.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ranked = {k: r for k, r in rows.items() if has_finite_value(r[metric])}
    fig, ax = plt.subplots(figsize=(9.5, 5), dpi=120)
    for kind in sorted({r["type"] for r in ranked.values()} - {"anchor"}, key=_route_order):
        pts = [(r[cost], r[metric]) for r in ranked.values() if r["type"] == kind]
        ax.scatter(*zip(*pts), s=16, alpha=0.75, color=ROUTE_COLOURS.get(kind, "tab:gray"), linewidths=0,
                   label=f"{kind} ({ROUTE_NAMES.get(kind, 'route')}): {len(pts)}")
    front = [(rows[i][cost], rows[i][metric]) for i in frontier]
    if front:
        ax.plot(*zip(*front), color="black", lw=1.1, marker="o", ms=4, mfc="none", zorder=3,
                label="Pareto frontier (numbers: stitch ids)")
    anchors = sorted((r for r in ranked.values() if r["type"] == "anchor"), key=lambda r: r["route"][0] != "S")
    for r in anchors:  # S[0:ds] (small, fast) or L[0:dl] (large, slow); three or more: A0[0:d] (smallest) ..
        small = r["route"].startswith(("S", "A0["))
        size = {"S": "small ", "L": "large "}.get(r["route"][0], "")
        ax.scatter(r[cost], r[metric], marker="*", s=260, color="gold" if small else "black", edgecolor="black",
                   zorder=5, label=f"{size}anchor {r['route']}, id {r['id']}")
    if selected is not None:
        _plot_selected(ax, rows.get(selected), selected, metric, cost)
    ax.set_xlabel(cost_label)
    ax.set_ylabel(metric_label(metric, higher_is_better))
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    if ranked:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    else:  # every row's metric is NaN (e.g. an AP over no ground truth)
        ax.text(0.5, 0.5, f"no finite {metric}", transform=ax.transAxes, ha="center", va="center")
    fig.tight_layout()
    _label_ids(ax, rows, [r["id"] for r in anchors], frontier, selected, metric, cost)  # on the final layout
    try:
        write_atomic(path, lambda f: fig.savefig(f, format="png"), binary=True)
    finally:
        plt.close(fig)


def _label_ids(ax, rows: Mapping[int, Mapping], anchors: Sequence[int], frontier: Sequence[int],
               selected: Optional[int], metric: str, cost: str, min_gap: Tuple[float, float] = (22.0, 11.0)) -> None:
    """Write the ids of the anchors and of the frontier (cheapest first) beside their points (``selected`` has its
    own label); a frontier id whose label would overlap one already written (closer than ``min_gap`` pixels in x
    and y) is left out: the Markdown report lists every frontier stitch."""
    placed: List[Tuple[float, float]] = []
    if selected in rows and has_finite_value(rows[selected][metric]):
        placed.append(tuple(ax.transData.transform((rows[selected][cost], rows[selected][metric]))))
    for i in dict.fromkeys([*anchors, *sorted(frontier, key=lambda k: rows[k][cost])]):
        x, y = ax.transData.transform((rows[i][cost], rows[i][metric]))
        crowded = any(abs(x - px) < min_gap[0] and abs(y - py) < min_gap[1] for px, py in placed)
        if i == selected or (crowded and i not in anchors):
            continue
        placed.append((x, y))
        ax.annotate(str(i), (rows[i][cost], rows[i][metric]), xytext=(4, -9), textcoords="offset points", fontsize=7)


def _route_order(kind: str) -> int:
    return list(ROUTE_NAMES).index(kind) if kind in ROUTE_NAMES else len(ROUTE_NAMES)


def _plot_selected(ax, row: Optional[Mapping], stitch_id: int, metric: str, cost: str) -> None:
    """Ring stitch ``stitch_id`` (its results ``row``) and name it in the legend; a stitch without a finite
    metric or cost is named as not drawn."""
    if row is None or not has_finite_value(row[metric]):
        ax.scatter([], [], marker="o", facecolor="none", edgecolor="red",
                   label=f"selected: stitch {stitch_id} (no finite {metric} or {cost}: not drawn)")
        return
    point = (row[cost], row[metric])
    ax.scatter(*point, marker="o", s=240, facecolor="none", edgecolor="red", linewidths=2, zorder=6,
               label=f"selected: stitch {stitch_id} ({row['type']}, {row['route']})")
    ax.annotate(str(stitch_id), point, xytext=(6, 5), textcoords="offset points", fontsize=8, color="red",
                fontweight="bold")
