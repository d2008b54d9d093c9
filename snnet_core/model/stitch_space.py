"""The Two-way stitching space of SN-Netv2 (paper Section 4.1).

Two anchors of one family: the *fast* (small) anchor ``S`` with ``ds`` blocks and the *slow* (large) anchor
``L`` with ``dl >= ds`` blocks. Stitching positions pair blocks at the same relative depth:
small block ``k`` with large block ``b_k = round((k + 1) * dl / ds) - 1`` (for 12/24: ``b_k = 2k + 1``).

* small-to-large (``s2l``) stitching layers exist at all ``ds`` positions (the last one maps the small
  anchor's final features to the large width, used by dense heads);
* large-to-small (``l2s``) layers exist at the first ``ds - 1`` positions (the large anchor's last block has
  nothing after it in the small anchor).

Route types: the two anchors, Fast-to-Slow (FS), Slow-to-Fast (SF), Fast-Slow-Fast (FSF) and
Slow-Fast-Slow (SFS). A stitch's id is its index in the full two-way enumeration, so restricting the route
types (e.g. the SN-Netv1 space, FS only) keeps every stitch's id.
"""
from __future__ import annotations

import dataclasses
import logging
import operator
from typing import Any, Dict, Iterable, List, Sequence, Tuple

logger = logging.getLogger(__name__)

FAST, SLOW = 0, 1
ROUTE_TYPES = ("anchor", "FS", "SF", "FSF", "SFS")
_ANCHOR_LETTERS = ("S", "L")


@dataclasses.dataclass(frozen=True)
class Segment:
    """Blocks ``[start, end)`` of one anchor (``FAST`` or ``SLOW``)."""

    anchor: int
    start: int
    end: int

    def __str__(self) -> str:
        return f"{_ANCHOR_LETTERS[self.anchor]}[{self.start}:{self.end}]"


@dataclasses.dataclass(frozen=True)
class Link:
    """A stitching layer between two segments: direction ``"s2l"`` or ``"l2s"`` at stitching position."""

    direction: str
    position: int


@dataclasses.dataclass(frozen=True)
class Stitch:
    """One runtime-selectable network of the space.

    Attributes:
        id: stable integer id (index in the full two-way enumeration).
        kind: one of ``ROUTE_TYPES``.
        segments: the anchor segments in execution order.
        links: ``len(segments) - 1`` stitching layers joining consecutive segments.
    """

    id: int
    kind: str
    segments: Tuple[Segment, ...]
    links: Tuple[Link, ...]

    @property
    def route(self) -> str:
        """Readable route such as ``S[0:4] -> L[8:24]``."""
        return " -> ".join(str(s) for s in self.segments)

    @property
    def first_anchor(self) -> int:
        return self.segments[0].anchor

    @property
    def last_anchor(self) -> int:
        return self.segments[-1].anchor

    def num_blocks(self) -> Tuple[int, int]:
        """(blocks of the fast anchor, blocks of the slow anchor) used by this stitch."""
        counts = [0, 0]
        for seg in self.segments:
            counts[seg.anchor] += seg.end - seg.start
        return counts[0], counts[1]


def paired_large_blocks(fast_depth: int, slow_depth: int) -> List[int]:
    """Large-anchor block paired with each small-anchor block: ``b_k = round((k+1) * dl / ds) - 1``."""
    if fast_depth < 1 or slow_depth < 1:
        raise ValueError(f"anchor depths must be positive, got {fast_depth} and {slow_depth}")
    if fast_depth > slow_depth:
        raise ValueError(
            f"the fast anchor must not be deeper than the slow one (got {fast_depth} > {slow_depth} blocks); "
            "pass the anchors in (fast, slow) order"
        )
    return [int(round((k + 1) * slow_depth / fast_depth)) - 1 for k in range(fast_depth)]


def map_out_indices_to_fast(out_indices: Sequence[int], fast_depth: int, slow_depth: int) -> Tuple[int, ...]:
    """Map the slow anchor's dense-feature block indices onto the fast anchor.

    Stage ``j`` of the slow anchor (block ``l_j``) maps to the first small block ``k`` whose paired large
    block ``b_k >= l_j`` (nearest block at the same relative depth; (4, 11, 17, 23) -> (2, 5, 8, 11) for
    12/24). This is the choice under which every route of the space crosses each stage exactly once.
    """
    pairs = paired_large_blocks(fast_depth, slow_depth)
    mapped = []
    for idx in out_indices:
        if not 0 <= idx < slow_depth:
            raise ValueError(f"out index {idx} is outside the slow anchor's {slow_depth} blocks")
        mapped.append(next(k for k, b in enumerate(pairs) if b >= idx))
    return tuple(mapped)


class StitchSpace:
    """Enumerates the stitches of two anchors.

    Args:
        fast_depth: blocks of the fast (small) anchor.
        slow_depth: blocks of the slow (large) anchor.
        route_types: the route types to keep (default: all of ``ROUTE_TYPES``; the SN-Netv1 space is
            ``("anchor", "FS")``).
    """

    def __init__(self, fast_depth: int, slow_depth: int, route_types: Iterable[str] = ROUTE_TYPES):
        self.depths = (fast_depth, slow_depth)
        self.pairs = paired_large_blocks(fast_depth, slow_depth)
        self.route_types = tuple(route_types)
        unknown = set(self.route_types) - set(ROUTE_TYPES)
        if unknown:
            raise ValueError(f"unknown route types {sorted(unknown)}; choose from {ROUTE_TYPES}")
        every = self._enumerate()
        self._stitches: Dict[int, Stitch] = {s.id: s for s in every if s.kind in self.route_types}

    @property
    def num_s2l(self) -> int:
        """Number of small-to-large stitching positions (``ds``)."""
        return self.depths[0]

    @property
    def num_l2s(self) -> int:
        """Number of large-to-small stitching positions (``ds - 1``)."""
        return self.depths[0] - 1

    def _enumerate(self) -> List[Stitch]:
        ds, dl = self.depths
        b = self.pairs
        n = ds - 1  # positions usable mid-route: both sides keep at least one block
        routes: List[Tuple[str, Tuple[Segment, ...], Tuple[Link, ...]]] = [
            ("anchor", (Segment(FAST, 0, ds),), ()),
            ("anchor", (Segment(SLOW, 0, dl),), ()),
        ]
        for i in range(n):  # S[0:i+1] -> L[b_i+1:dl]
            routes.append(("FS", (Segment(FAST, 0, i + 1), Segment(SLOW, b[i] + 1, dl)), (Link("s2l", i),)))
        for j in range(n):  # L[0:b_j+1] -> S[j+1:ds]
            routes.append(("SF", (Segment(SLOW, 0, b[j] + 1), Segment(FAST, j + 1, ds)), (Link("l2s", j),)))
        for i in range(n):  # S[0:i+1] -> L[b_i+1:b_k+1] -> S[k+1:ds]
            for k in range(i + 1, n):
                segs = (Segment(FAST, 0, i + 1), Segment(SLOW, b[i] + 1, b[k] + 1), Segment(FAST, k + 1, ds))
                routes.append(("FSF", segs, (Link("s2l", i), Link("l2s", k))))
        for j in range(n):  # L[0:b_j+1] -> S[j+1:i+1] -> L[b_i+1:dl]
            for i in range(j + 1, n):
                segs = (Segment(SLOW, 0, b[j] + 1), Segment(FAST, j + 1, i + 1), Segment(SLOW, b[i] + 1, dl))
                routes.append(("SFS", segs, (Link("l2s", j), Link("s2l", i))))
        return [Stitch(idx, kind, segs, links) for idx, (kind, segs, links) in enumerate(routes)]

    def __len__(self) -> int:
        return len(self._stitches)

    def __iter__(self):
        return iter(self._stitches.values())

    def __contains__(self, stitch_id: Any) -> bool:
        try:
            return as_stitch_id(stitch_id) in self._stitches
        except TypeError:
            return False

    @property
    def ids(self) -> List[int]:
        return list(self._stitches)

    def __getitem__(self, stitch_id: int) -> Stitch:
        """The stitch with id ``stitch_id`` (an integer; ``TypeError`` for a bool, float or string)."""
        try:
            return self._stitches[as_stitch_id(stitch_id)]
        except KeyError:
            raise KeyError(
                f"unknown stitch id {stitch_id!r}: this space ({'/'.join(map(str, self.depths))} blocks, "
                f"routes {', '.join(self.route_types)}) has {len(self)} stitches with ids "
                f"{self.ids[0]}..{self.ids[-1]}"
            ) from None

    def anchor_ids(self) -> Tuple[int, int]:
        """Ids of the (fast, slow) anchor stitches."""
        return 0, 1

    def count_by_type(self) -> Dict[str, int]:
        counts = {t: 0 for t in self.route_types}
        for s in self:
            counts[s.kind] += 1
        return counts

    def parse_selection(self, selection: str) -> List[int]:
        """Parse ``"all"`` or ``"ID[,ID...]"`` into stitch ids, validating each id.

        A selection naming no stitch (``""``, ``","``) is an error. A repeated id is evaluated once: the
        duplicates are dropped with a warning (the intent is clear, and evaluating a stitch twice only costs).
        """
        text = selection.strip()
        if text == "all":
            return self.ids
        tokens = [tok.strip() for tok in text.split(",") if tok.strip()]
        if not tokens:
            raise ValueError(f"stitch selection {selection!r} names no stitch: give 'all', 'pareto' or "
                             f"comma-separated ids such as '0,1,5' (ids {self.ids[0]}..{self.ids[-1]})")
        bad = [tok for tok in tokens if not tok.lstrip("-").isdigit()]
        if bad:
            raise ValueError(f"stitch selection must be 'all', 'pareto' or comma-separated integer ids, got "
                             f"{selection!r} ({', '.join(map(repr, bad))} is not an integer)")
        ids = [int(tok) for tok in tokens]
        for i in ids:
            self[i]  # raises a KeyError naming the valid range
        unique = list(dict.fromkeys(ids))
        if len(unique) < len(ids):
            repeated = sorted({i for i in ids if ids.count(i) > 1})
            logger.warning("stitch selection %r repeats %s: each stitch is evaluated once", selection, repeated)
        return unique


def as_stitch_id(value: Any) -> int:
    """``value`` as a stitch id: any integer (``int``, numpy integer, integer 0-d tensor), but not a bool.

    Raises ``TypeError`` for a bool (``True`` would silently be stitch 1), a float, a string or anything else.
    """
    if isinstance(value, bool) or "bool" in str(getattr(value, "dtype", "")):  # numpy / torch bools too
        raise TypeError(f"stitch id {value!r} is a bool, not an integer id; pass the id as an int")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"stitch id {value!r} ({type(value).__name__}) is not an integer; pass the id as an int "
                        "(parse strings with StitchSpace.parse_selection)") from None
