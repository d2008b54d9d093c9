"""Choosing stitches after evaluation: Pareto frontier and best stitch under a budget."""
from __future__ import annotations

from typing import Mapping, Optional, Sequence


def pareto_frontier(cost: Mapping[int, float], metric: Mapping[int, float], higher_is_better: bool = True) -> list:
    """Ids not dominated by another stitch (no other has cost <= and metric better-or-equal, one strict).

    Returns the frontier ids sorted by increasing cost.
    """
    sign = 1.0 if higher_is_better else -1.0
    ids = sorted((i for i in metric if i in cost), key=lambda i: (cost[i], -sign * metric[i]))
    frontier, best = [], float("-inf")
    for i in ids:
        score = sign * metric[i]
        if score > best:
            frontier.append(i)
            best = score
    return frontier


def best_under_budget(
    cost: Mapping[int, float],
    metric: Mapping[int, float],
    budget: float,
    higher_is_better: bool = True,
    candidates: Optional[Sequence[int]] = None,
) -> int:
    """The stitch with the best metric whose cost fits ``budget`` (ties: the cheaper)."""
    pool = [i for i in (candidates if candidates is not None else metric) if i in cost and cost[i] <= budget]
    if not pool:
        cheapest = min(cost.values()) if cost else float("nan")
        raise ValueError(f"no stitch fits a budget of {budget:g} (the cheapest costs {cheapest:g})")
    sign = 1.0 if higher_is_better else -1.0
    return max(pool, key=lambda i: (sign * metric[i], -cost[i]))
