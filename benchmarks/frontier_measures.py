"""Frontier measures of a per-stitch table: does it fill the range between its anchors? (issue 21)

Reads either table format:

- the authors' (``classification/results/stitches_res_s_l.txt`` in ziplab/SN-Netv2): one JSON object per line with
  ``cfg_id``, ``acc1`` and ``flops``; ``cfg_id`` 0 is the small anchor, 1 the large one;
- this project's per-stitch results: a ``stitch_results.json`` (or the folder holding it) written by
  ``snnet_core.evaluate_stitches``; the anchors are its rows of type ``anchor`` (route ``S[...]`` small,
  ``L[...]`` large), the metric its primary one in its direction, the cost its GFLOPs.

and prints ``share_between``, ``below_small``, ``frontier_points``, ``frontier_above_line`` and ``bin_gap``
(``snnet_core.evaluation.frontier_measures`` defines them), as text or, with ``--json``, as one JSON object.

    python benchmarks/frontier_measures.py stitches_res_s_l.txt
    python benchmarks/frontier_measures.py output/cls_run/stitch_report --json
    python benchmarks/frontier_measures.py stitches_res_s_l.txt --output benchmarks/results/frontier_x.json
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import sys
from typing import Dict, List, Optional, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from snnet_core.evaluation.frontier_measures import FrontierMeasures, frontier_measures  # noqa: E402
from snnet_core.evaluation.report import RESULTS_FILE, load_results, read_results  # noqa: E402
from snnet_core.io.atomic_io import write_json_atomic  # noqa: E402

AUTHORS_ANCHORS = (0, 1)  # cfg_id of the small and the large anchor in the authors' table


@dataclasses.dataclass(frozen=True)
class Table:
    """A per-stitch table: ``cost`` and ``metric`` (id -> value), the ``small``/``large`` anchor ids, the metric's
    name and direction, the cost's unit and the ``format`` it was read from (``authors`` or ``snnet_core``)."""

    cost: Dict[int, float]
    metric: Dict[int, Optional[float]]
    small: int
    large: int
    metric_name: str
    higher_is_better: bool
    cost_unit: str
    format: str


def read_authors_table(path: str) -> Table:
    """The authors' JSON-lines table (``cfg_id``, ``acc1``, ``flops`` per line); ``ValueError`` naming the line
    that is not one of its rows."""
    cost: Dict[int, float] = {}
    metric: Dict[int, float] = {}
    with open(path) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                sid, acc, flops = int(row["cfg_id"]), float(row["acc1"]), float(row["flops"])
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                raise ValueError(f"{path}, line {number}: not a row of the authors' table (one JSON object with "
                                 f"cfg_id, acc1 and flops per line): {exc}") from None
            if sid in cost:
                raise ValueError(f"{path}, line {number}: cfg_id {sid} appears a second time")
            cost[sid], metric[sid] = flops, acc
    missing = [i for i in AUTHORS_ANCHORS if i not in cost]
    if missing:
        raise ValueError(f"{path} has no row with cfg_id {missing}: the authors' table holds the small anchor as "
                         "cfg_id 0 and the large one as cfg_id 1")
    return Table(cost=cost, metric=metric, small=0, large=1, metric_name="acc1", higher_is_better=True,
                 cost_unit="FLOPs", format="authors")


def read_project_results(path: str) -> Table:
    """A ``stitch_results.json`` (or the folder holding one) of this project's per-stitch evaluation."""
    record = load_results(path) if os.path.isdir(path) else read_results(path)
    if not record:
        raise FileNotFoundError(f"{path} holds no {RESULTS_FILE}: give a per-stitch evaluation's output folder or "
                                "its results file")
    rows = {int(k): r for k, r in record["stitches"].items()}
    anchors = {r["route"][0]: i for i, r in rows.items() if r["type"] == "anchor"}
    if set(anchors) != {"S", "L"}:
        raise ValueError(f"{path} lacks the row of the {'small' if 'S' not in anchors else 'large'} anchor (type "
                         "anchor): the measures are relative to both anchors; evaluate them too (--stitch all)")
    metric = record["primary_metric"]
    return Table(cost={i: r["gflops"] for i, r in rows.items()}, metric={i: r[metric] for i, r in rows.items()},
                 small=anchors["S"], large=anchors["L"], metric_name=metric,
                 higher_is_better=record["higher_is_better"], cost_unit="GFLOPs", format="snnet_core")


def read_table(path: str) -> Table:
    """Either format: a folder, or a file whose first line is not a JSON object of its own or is one with
    ``stitches``, is this project's results; any other file the authors' JSON-lines table."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} does not exist: give the authors' table (e.g. stitches_res_s_l.txt) or a "
                                f"{RESULTS_FILE} (or its folder)")
    if os.path.isdir(path):
        return read_project_results(path)
    if path.endswith(".csv"):
        raise ValueError(f"{path} is a report table, which does not say the primary metric or its direction: give "
                         f"the {RESULTS_FILE} beside it")
    with open(path, errors="replace") as f:
        first = f.readline(1 << 16)
    try:
        row = json.loads(first)
    except json.JSONDecodeError:  # a multi-line (indented) results file
        return read_project_results(path)
    return read_project_results(path) if isinstance(row, dict) and "stitches" in row else read_authors_table(path)


def measure_table(table: Table) -> FrontierMeasures:
    return frontier_measures(table.cost, table.metric, table.small, table.large, table.higher_is_better)


def format_measures(m: FrontierMeasures, table: Table) -> List[str]:
    """The measures as text lines."""
    gaps = ", ".join("none" if g is None else f"{g:+.3f}" for g in m.bin_gap)
    direction = "higher" if table.higher_is_better else "lower"
    return [
        f"{m.stitches} stitches besides the anchors; {table.metric_name} ({direction} is better): small anchor "
        f"{m.small:.4g} at {m.small_cost:.4g} {table.cost_unit}, large anchor {m.large:.4g} at {m.large_cost:.4g} {table.cost_unit}",
        f"share_between        {m.share_between:.3f}",
        f"below_small          {m.below_small}",
        f"frontier_points      {m.frontier_points}",
        f"frontier_above_line  {m.frontier_above_line}",
        f"bin_gap              {gaps}",
    ]


def main(argv: Optional[Sequence[str]] = None) -> Dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("table", help="the authors' JSON-lines table, or a stitch_results.json (or its folder)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    parser.add_argument("--output", help="also write the JSON object (with the table's path and this command) to "
                                         "this file; an existing one is refused unless --overwrite")
    parser.add_argument("--overwrite", action="store_true", help="let --output replace an existing file")
    args = parser.parse_args(argv)
    if args.output and os.path.exists(args.output) and not args.overwrite:
        parser.error(f"--output {args.output} exists: pass --overwrite to replace it, or choose another path")
    try:
        table = read_table(args.table)
        measures = measure_table(table)
    except (OSError, ValueError, RuntimeError) as exc:
        parser.exit(2, f"frontier_measures.py: error: {exc}\n")
    record = {"table": args.table, "format": table.format, "metric": table.metric_name,
              "higher_is_better": table.higher_is_better, "cost_unit": table.cost_unit, **measures.as_dict()}
    if args.output:
        command = "python benchmarks/frontier_measures.py " + " ".join(map(shlex.quote, argv or sys.argv[1:]))
        write_json_atomic(args.output, dict(record, command=command))
    print(json.dumps(record, indent=1) if args.json else "\n".join(format_measures(measures, table)))
    return record


if __name__ == "__main__":
    main()
