"""Does a per-stitch report of an upstream SN-Netv2 checkpoint reproduce the authors' per-stitch table? (issue 19)

The authors released DeiT3-S/L with the top-1 and FLOPs of its 134 stitches (``classification/results/
stitches_res_s_l.txt`` in ziplab/SN-Netv2: one JSON object per line, ``cfg_id`` in their numbering). Evaluate their
checkpoint with ``projects/snnet_cls/train.py --eval-only`` (on a GPU: fp16 autocast, as they evaluated), then

    python benchmarks/compare_upstream_cls.py output/snnet_cls_s_l/stitch_report_imagenet_val stitches_res_s_l.txt

matches the rows by the report's ``upstream_id`` column and prints, per stitch and in all, the differences in
top-1 (points) and GFLOPs, and the stitches the table has but the report lacks. It exits with status 1 when a top-1
differs by more than ``--tolerance`` points (default 0.1: fp16 round-off and batch composition move a few of the
50 000 images) or a stitch is missing.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Dict, List, Optional, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from benchmarks.frontier_measures import read_authors_table  # noqa: E402
from projects.snnet_cls.evaluation import UPSTREAM_ID  # noqa: E402
from snnet_core.evaluation.report import load_results, read_results  # noqa: E402


def compare(report: str, authors: str, tolerance: float = 0.1) -> Dict[str, object]:
    """``{"rows": [(cfg_id, our id, top-1 ours, theirs, GFLOPs ours, theirs)], "missing": [cfg_id],
    "over": [cfg_id whose top-1 differs by more than tolerance]}``."""
    record = load_results(report) if os.path.isdir(report) else read_results(report)
    if not record:
        raise FileNotFoundError(f"{report} holds no stitch_results.json: give the report directory of "
                                "train.py --eval-only --stitch all")
    ours = {row.get(UPSTREAM_ID): row for row in record["stitches"].values()}
    if None in ours:
        raise ValueError(f"{report} has no {UPSTREAM_ID} column: it is not a classification report of anchors whose "
                         "stitches upstream numbers (evaluate with projects/snnet_cls/train.py)")
    table = read_authors_table(authors)
    rows: List[tuple] = []
    missing, over = [], []
    for cfg_id in sorted(table.metric):
        row = ours.get(cfg_id)
        if row is None:
            missing.append(cfg_id)
            continue
        rows.append((cfg_id, row["id"], row["acc1"], table.metric[cfg_id], row["gflops"], table.cost[cfg_id] / 1e9))
        if row["acc1"] is None or abs(row["acc1"] - table.metric[cfg_id]) > tolerance:
            over.append(cfg_id)
    return {"rows": rows, "missing": missing, "over": over}


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("report", help="per-stitch report directory (or its stitch_results.json)")
    parser.add_argument("authors", help="the authors' table, stitches_res_s_l.txt")
    parser.add_argument("--tolerance", type=float, default=0.1, help="top-1 difference allowed, in points")
    args = parser.parse_args(argv)
    try:
        result = compare(args.report, args.authors, args.tolerance)
    except (OSError, ValueError) as exc:
        parser.exit(2, f"compare_upstream_cls.py: error: {exc}\n")
    print(f"{'cfg_id':>6} {'id':>4} {'top-1 ours':>10} {'authors':>8} {'diff':>6} {'GFLOPs ours':>11} {'authors':>8}")
    for cfg_id, sid, acc, theirs, gflops, their_gflops in result["rows"]:
        diff = float("nan") if acc is None else acc - theirs
        print(f"{cfg_id:>6} {sid:>4} {acc if acc is not None else float('nan'):>10.3f} {theirs:>8.3f} {diff:>+6.2f} "
              f"{gflops:>11.3f} {their_gflops:>8.3f}")
    diffs = [abs(r[2] - r[3]) for r in result["rows"] if r[2] is not None]
    print(f"{len(result['rows'])} stitches compared; top-1 differs by at most {max(diffs, default=0):.3f} points "
          f"(mean {sum(diffs) / max(len(diffs), 1):.3f}); {len(result['over'])} beyond {args.tolerance}: "
          f"{result['over'][:10]}; missing from the report: {result['missing'][:10]}")
    return 1 if result["over"] or result["missing"] else 0


if __name__ == "__main__":
    sys.exit(main())
