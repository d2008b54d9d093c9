"""Choosing stitches after evaluation: Pareto frontier and best stitch under a budget.

A metric of ``None`` or NaN/inf (a stitch whose evaluation gave no finite value; results files store it as
``null``) is not comparable: such stitches are left out of the frontier and of the budget choice.
"""
from __future__ import annotations

import math
from typing import Mapping, Optional, Sequence


def has_finite_value(value: Optional[float]) -> bool:
    """Whether a metric value can be ranked (a number, not ``None``, NaN or inf)."""
    return value is not None and math.isfinite(value)


def pareto_frontier(cost: Mapping[int, float], metric: Mapping[int, Optional[float]],
                    higher_is_better: bool = True) -> list:
    """Ids not dominated by another stitch (no other has cost <= and metric better-or-equal, one strict).

    Stitches without a finite metric are skipped. Returns the frontier ids sorted by increasing cost.
    """
    sign = 1.0 if higher_is_better else -1.0
    ids = sorted((i for i in metric if i in cost and has_finite_value(metric[i])),
                 key=lambda i: (cost[i], -sign * metric[i]))
    frontier, best = [], float("-inf")
    for i in ids:
        score = sign * metric[i]
        if score > best:
            frontier.append(i)
            best = score
    return frontier


def best_under_budget(
    cost: Mapping[int, float],
    metric: Mapping[int, Optional[float]],
    budget: float,
    higher_is_better: bool = True,
    candidates: Optional[Sequence[int]] = None,
) -> int:
    """The stitch with the best finite metric whose cost fits ``budget`` (ties: the cheaper)."""
    pool = [i for i in (candidates if candidates is not None else metric)
            if i in cost and cost[i] <= budget and has_finite_value(metric.get(i))]
    if not pool:
        cheapest = min(cost.values()) if cost else float("nan")
        raise ValueError(f"no stitch with a finite metric fits a budget of {budget:g} (the cheapest costs "
                         f"{cheapest:g})")
    sign = 1.0 if higher_is_better else -1.0
    return max(pool, key=lambda i: (sign * metric[i], -cost[i]))
