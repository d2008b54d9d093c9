"""How well the stitches of one SN-Net fill the accuracy-cost range between its anchors (issue 21).

The measures read a per-stitch table the way a sceptical reviewer reads the authors' own table
(``classification/results/stitches_res_s_l.txt`` in ziplab/SN-Netv2), with the *anchor line* the straight line
through the small and the large anchor in (cost, metric):

- ``share_between``: fraction of the non-anchor stitches whose metric lies between the anchors' (inclusive);
- ``below_small``: how many non-anchor stitches are worse than the small anchor;
- ``frontier_points``: non-anchor stitches on the Pareto frontier of all rows
  (``snnet_core.evaluation.selection.pareto_frontier``: no other row costs no more and is no worse, one strictly);
- ``frontier_above_line``: how many of those are better than the anchor line at their cost;
- ``bin_gap``: the cost range [small anchor, large anchor] cut into ``bins`` equal intervals (each closed on the
  left, the last closed on both ends); per interval, the best non-anchor stitch's metric minus the line's value at
  its cost (``None`` for an interval holding no stitch).

For a metric where lower is better (e.g. a depth error), "worse", "better", "above the line" and the sign of
``bin_gap`` follow the metric's direction: a positive gap is always better than the line. Stitches without a
finite metric are left out, as the report leaves them off the frontier.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from snnet_core.evaluation.selection import has_finite_value, pareto_frontier

MEASURE_NAMES = ("share_between", "below_small", "frontier_points", "frontier_above_line", "bin_gap")
NUM_BINS = 5


@dataclasses.dataclass(frozen=True)
class FrontierMeasures:
    """The measures of one per-stitch table (see the module docstring); ``stitches``: the non-anchor stitches with
    a finite metric, ``small``/``large``: the anchors' metric values, ``small_cost``/``large_cost``: their costs."""

    share_between: float
    below_small: int
    frontier_points: int
    frontier_above_line: int
    bin_gap: Tuple[Optional[float], ...]
    stitches: int
    small: float
    large: float
    small_cost: float
    large_cost: float

    def as_dict(self) -> Dict[str, object]:
        return dataclasses.asdict(self)


def anchor_line(small: Tuple[float, float], large: Tuple[float, float]):
    """The straight line through the anchors' ``(cost, metric)`` points, as ``cost -> metric``."""
    (c0, m0), (c1, m1) = small, large
    if not c1 > c0:
        raise ValueError(f"the large anchor must cost more than the small one (costs {c1:g} and {c0:g}): pass the "
                         "anchors as (small, large)")
    return lambda cost: m0 + (m1 - m0) * (cost - c0) / (c1 - c0)


def frontier_measures(cost: Mapping[int, float], metric: Mapping[int, Optional[float]], small: int, large: int,
                      higher_is_better: bool = True, bins: int = NUM_BINS) -> FrontierMeasures:
    """The frontier measures of a per-stitch table.

    Args:
        cost: stitch id -> cost (e.g. GFLOPs or FLOPs; any unit, the same for every row).
        metric: stitch id -> metric value (``None``/NaN/inf: left out).
        small, large: the ids of the small (cheap) and the large anchor; both need a finite metric.
        higher_is_better: the metric's direction.
        bins: how many equal cost intervals ``bin_gap`` has.
    """
    for name, sid in (("small", small), ("large", large)):
        if sid not in cost or not has_finite_value(metric.get(sid)):
            raise ValueError(f"the {name} anchor (stitch {sid}) has no finite metric and cost in the table: the "
                             "measures are relative to both anchors")
    sign = 1.0 if higher_is_better else -1.0
    score = {i: sign * metric[i] for i in metric if i in cost and has_finite_value(metric[i])}
    line = anchor_line((cost[small], score[small]), (cost[large], score[large]))
    stitched = [i for i in score if i not in (small, large)]
    lo, hi = sorted((score[small], score[large]))
    frontier = [i for i in pareto_frontier(cost, score) if i not in (small, large)]
    return FrontierMeasures(
        share_between=sum(lo <= score[i] <= hi for i in stitched) / len(stitched) if stitched else math.nan,
        below_small=sum(score[i] < score[small] for i in stitched),
        frontier_points=len(frontier),
        frontier_above_line=sum(score[i] > line(cost[i]) for i in frontier),
        bin_gap=tuple(None if best is None else score[best] - line(cost[best])
                      for best in best_per_bin(cost, score, stitched, cost[small], cost[large], bins)),
        stitches=len(stitched),
        small=metric[small], large=metric[large], small_cost=cost[small], large_cost=cost[large],
    )


def best_per_bin(cost: Mapping[int, float], score: Mapping[int, float], ids: Sequence[int], lo: float, hi: float,
                 bins: int) -> List[Optional[int]]:
    """Per equal interval of ``[lo, hi]`` (left-closed, the last closed on both ends), the id among ``ids`` with
    the highest ``score`` (ties: the cheaper, then the lower id), or ``None`` for an empty interval; ids costing
    outside ``[lo, hi]`` fall in none."""
    width = (hi - lo) / bins
    best: List[Optional[int]] = [None] * bins
    for i in sorted(ids, key=lambda i: (-score[i], cost[i], i)):
        if lo <= cost[i] <= hi:
            k = min(int((cost[i] - lo) / width), bins - 1)
            if best[k] is None:
                best[k] = i
    return best


def summarise(runs: Sequence[FrontierMeasures]) -> Dict[str, Tuple[float, float]]:
    """Mean and (population) standard deviation over ``runs`` (e.g. seeds) of every measure; ``bin_gap`` per bin
    as ``bin_gap[k]``, over the runs whose bin ``k`` holds a stitch (NaN where none does)."""
    def mean_std(values: Sequence[float]) -> Tuple[float, float]:
        if not values:
            return math.nan, math.nan
        mean = sum(values) / len(values)
        return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))

    out = {name: mean_std([getattr(r, name) for r in runs]) for name in MEASURE_NAMES if name != "bin_gap"}
    for k in range(len(runs[0].bin_gap) if runs else 0):
        out[f"bin_gap[{k}]"] = mean_std([r.bin_gap[k] for r in runs if r.bin_gap[k] is not None])
    return out
