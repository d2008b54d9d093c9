"""The stitch spaces: SN-Netv2's two-way space (paper Section 4.1) and SN-Netv1's sliding-window space.

**Two-way space** (two anchors, the default). The *fast* (small) anchor ``S`` with ``ds`` blocks and the *slow*
(large) anchor ``L`` with ``dl >= ds`` blocks. Stitching positions pair blocks at the same relative depth:
small block ``k`` with large block ``b_k = round((k + 1) * dl / ds) - 1`` (for 12/24: ``b_k = 2k + 1``).

* small-to-large (``s2l``) stitching layers exist at all ``ds`` positions (the last one maps the small
  anchor's final features to the large width, used by dense heads);
* large-to-small (``l2s``) layers exist at the first ``ds - 1`` positions (the large anchor's last block has
  nothing after it in the small anchor).

Route types: the two anchors, Fast-to-Slow (FS), Slow-to-Fast (SF), Fast-Slow-Fast (FSF) and
Slow-Fast-Slow (SFS). A stitch's id is its index in the full two-way enumeration, so restricting the route
types (e.g. the FS-only subset) keeps every stitch's id.

**Sliding-window space** (SN-Netv1, its supplementary A and B; ``window=(k, s)``, the only space for three or more
anchors). ``N >= 2`` anchors of equal depth ``d``, ordered by size; *nearest stitching*: only neighbouring anchors
``a -> a + 1`` are stitched (DeiT-Ti/S/B: Ti-S and S-B), small to large only (FS routes). A window of ``k`` blocks
slides over the blocks with stride ``s``; inside a window every pair ``(j, m)`` of its blocks is a stitch
``a[0:j+1] -> (a+1)[m:d]`` (``m <= j`` re-runs blocks, ``m > j + 1`` skips some). A pair already made by an
earlier window keeps that window's layer; each window that makes new pairs gets one stitching layer per
anchor pair, shared by its pairs. Ids follow SN-Netv1's ``get_stitch_configs`` (``stitching_deit/utils.py``):
the ``N`` anchors, then each neighbouring pair's stitches in window order, so they are SN-Netv1's ``cfg_id``.
DeiT-Ti/S/B at ``k = 2, s = 1``: 3 + 2 x 34 = 71 stitches (SN-Netv1's ``results/stitches_res.txt``);
``k = s = 2, 3, 4``: 51, 75, 99 (its Figure B).
"""
from __future__ import annotations

import dataclasses
import logging
import operator
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from snnet_core.io.config_io import Check, subset_of

logger = logging.getLogger(__name__)

FAST, SLOW = 0, 1
ROUTE_TYPES = ("anchor", "FS", "SF", "FSF", "SFS")
WINDOW_ROUTE_TYPES = ("anchor", "FS")  # the sliding-window space stitches small to large only
V1_WINDOW = (2, 1)  # SN-Netv1's default kernel and stride (config/deit_stitching.json)


def route_types_check() -> Check:
    """The config check of a two-way space's ``route_types``: distinct entries of ``ROUTE_TYPES``, the anchors
    among them (every space holds its anchors), e.g. ``["anchor", "FS"]`` for SN-Netv1's space."""
    return subset_of(*ROUTE_TYPES, required=("anchor",), note="SN-Netv1: ['anchor', 'FS']")


def evaluated_route_types(trained: Sequence[str], configured: Sequence[str], set_on_command_line: bool, key: str,
                          checkpoint: str) -> List[str]:
    """The route types ``--eval-only`` builds for ``checkpoint``, trained with the route types ``trained``: the
    config's ``configured`` when the command line sets ``key`` to some of them (a sub-space: its stitches keep
    their ids and its layers are the trained space's), else ``trained``. A route type it never trained is refused
    (``ValueError`` naming ``key``)."""
    if not set_on_command_line:
        return list(trained)
    untrained = [kind for kind in configured if kind not in trained]
    if untrained:
        raise ValueError(f"{key}={list(configured)}: {checkpoint} was trained without route types {untrained} (its "
                         f"space: {list(trained)}); evaluate some of its route types, or drop {key}")
    return list(configured)


def anchor_names(num_anchors: int) -> Tuple[str, ...]:
    """How routes name the anchors: ``S``, ``L`` for two; ``A0`` (smallest) .. ``A{N-1}`` for more."""
    return ("S", "L") if num_anchors == 2 else tuple(f"A{i}" for i in range(num_anchors))


@dataclasses.dataclass(frozen=True)
class Segment:
    """Blocks ``[start, end)`` of one anchor (its index, smallest first: ``FAST``/``SLOW`` for two anchors).

    ``str`` names the anchor as a two-anchor route does (``S[0:4]``); ``Stitch.route`` names those of larger spaces.
    """

    anchor: int
    start: int
    end: int

    def __str__(self) -> str:
        return f"{anchor_names(max(2, self.anchor + 1))[self.anchor]}[{self.start}:{self.end}]"


@dataclasses.dataclass(frozen=True)
class Link:
    """A stitching layer between two segments: direction ``"s2l"`` or ``"l2s"`` and its index among the space's
    layers of that direction (``StitchSpace.layers``; in the two-way space, the stitching position)."""

    direction: str
    position: int


@dataclasses.dataclass(frozen=True)
class LayerSpec:
    """One stitching layer of a space: what it maps and the block outputs its least-squares init fits.

    Attributes:
        direction, index: the layer is ``stitch_{direction}.{index}`` of the SN-Net (direction ``"s2l"`` or
            ``"l2s"``); ``"proj"``: its dense-feature projection ``feature_proj.{index}`` (``StitchedViT.layer_specs``).
        source, target: anchor indices; the layer maps tokens of ``source``'s width to ``target``'s.
        matches: ``(source block, target block)`` pairs whose output tokens the layer maps onto each other
            (target block ``-1``: the target's embedded tokens, before its first block). A layer shared by the
            pairs of one window (SN-Netv1) has several; LS init averages their solutions, as SN-Netv1 does.
    """

    direction: str
    index: int
    source: int
    target: int
    matches: Tuple[Tuple[int, int], ...]

    @property
    def name(self) -> str:
        return f"feature_proj.{self.index}" if self.direction == "proj" else f"stitch_{self.direction}.{self.index}"


@dataclasses.dataclass(frozen=True)
class Stitch:
    """One runtime-selectable network of the space.

    Attributes:
        id: stable integer id (index in the full two-way enumeration; in the sliding-window space, SN-Netv1's
            ``cfg_id``).
        kind: one of ``ROUTE_TYPES``.
        segments: the anchor segments in execution order.
        links: ``len(segments) - 1`` stitching layers joining consecutive segments.
        names: how the route names the anchors (``anchor_names``; not compared).
    """

    id: int
    kind: str
    segments: Tuple[Segment, ...]
    links: Tuple[Link, ...]
    names: Tuple[str, ...] = dataclasses.field(default=("S", "L"), compare=False, repr=False)

    @property
    def route(self) -> str:
        """Readable route such as ``S[0:4] -> L[8:24]`` (three anchors: ``A0[0:2] -> A1[1:12]``)."""
        return " -> ".join(f"{self.names[s.anchor]}[{s.start}:{s.end}]" for s in self.segments)

    @property
    def first_anchor(self) -> int:
        return self.segments[0].anchor

    @property
    def last_anchor(self) -> int:
        return self.segments[-1].anchor

    def num_blocks(self) -> Tuple[int, ...]:
        """Blocks of each anchor this stitch runs: (fast, slow) for two anchors, one count per anchor for more."""
        counts = [0] * len(self.names)
        for seg in self.segments:
            counts[seg.anchor] += seg.end - seg.start
        return tuple(counts)


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


def window_pairs(depth: int, kernel: int, stride: int) -> List[Tuple[int, int, int]]:
    """SN-Netv1's stitching positions of two anchors of ``depth`` blocks: ``(j, m, layer)`` in its order.

    A window of ``kernel`` blocks starts at every ``stride``-th block; each pair ``(j, m)`` of its blocks not made
    by an earlier window is the stitch ``front[0:j+1] -> end[m:depth]`` and uses the window's stitching layer
    ``layer`` (counted over the windows that make new pairs), as ``paired_stitching`` in SN-Netv1's
    ``stitching_deit/utils.py`` does.
    """
    if kernel < 1 or stride < 1:
        raise ValueError(f"the sliding window needs kernel >= 1 and stride >= 1, got kernel {kernel}, stride {stride}")
    seen, out, layer = set(), [], -1
    for start in range(0, depth, stride):
        blocks = range(start, min(start + kernel, depth))
        new = [(j, m) for j in blocks for m in blocks if (j, m) not in seen]
        if new:
            layer += 1
        seen.update(new)
        out += [(j, m, layer) for j, m in new]
    return out


class StitchSpace:
    """Enumerates the stitches of two or more anchors.

    Args:
        *depths: blocks of each anchor, smallest anchor first (two-way: the fast and the slow anchor).
        route_types: the route types to keep (default: every type the space has; ``("anchor", "FS")`` keeps the
            two-way space's FS subset).
        window: ``(kernel, stride)`` of SN-Netv1's sliding window, which gives the sliding-window space (module
            docstring); default: the two-way space for two anchors, ``(2, 1)`` (SN-Netv1's) for more.

    Attributes:
        layers: the stitching layers (``LayerSpec``): small-to-large ones first, in index order.
    """

    def __init__(self, *depths: int, route_types: Optional[Iterable[str]] = None,
                 window: Optional[Sequence[int]] = None):
        if len(depths) < 2:
            raise ValueError(f"a stitch space needs at least two anchors' depths, got {list(depths)}")
        if window is None and len(depths) > 2:
            window = V1_WINDOW
        self.depths = tuple(int(d) for d in depths)
        self.window: Optional[Tuple[int, int]] = None if window is None else _check_window(window, self.depths)
        kinds = ROUTE_TYPES if self.window is None else WINDOW_ROUTE_TYPES
        self.route_types = kinds if route_types is None else tuple(route_types)
        unknown = set(self.route_types) - set(ROUTE_TYPES)
        if unknown:
            raise ValueError(f"unknown route types {sorted(unknown)}; choose from {ROUTE_TYPES}")
        if set(self.route_types) - set(kinds):
            raise ValueError(f"the sliding-window space (SN-Netv1) stitches small to large only: route types "
                             f"{list(self.route_types)} are not all of {list(kinds)}")
        self.names = anchor_names(len(self.depths))
        if self.window is None:
            self.pairs = paired_large_blocks(*self.depths)
            every, self.layers = self._enumerate(), self._two_way_layers()
        else:
            every, self.layers = self._enumerate_windows()
        self._stitches: Dict[int, Stitch] = {s.id: s for s in every if s.kind in self.route_types}

    @property
    def num_anchors(self) -> int:
        return len(self.depths)

    @property
    def num_s2l(self) -> int:
        """Number of small-to-large stitching layers (two-way: ``ds``, one per stitching position)."""
        return sum(layer.direction == "s2l" for layer in self.layers)

    @property
    def num_l2s(self) -> int:
        """Number of large-to-small stitching layers (two-way: ``ds - 1``; none in the sliding-window space)."""
        return sum(layer.direction == "l2s" for layer in self.layers)

    def _two_way_layers(self) -> Tuple[LayerSpec, ...]:
        ds, b = self.depths[0], self.pairs
        s2l = [LayerSpec("s2l", k, FAST, SLOW, ((k, b[k]),)) for k in range(ds)]
        return tuple(s2l + [LayerSpec("l2s", k, SLOW, FAST, ((b[k], k),)) for k in range(ds - 1)])

    def _enumerate_windows(self) -> Tuple[List[Stitch], Tuple[LayerSpec, ...]]:
        """SN-Netv1's configs in its ``cfg_id`` order, and their layers (one per window and neighbouring pair)."""
        depth, (kernel, stride) = self.depths[0], self.window
        positions = window_pairs(depth, kernel, stride)
        per_pair = positions[-1][2] + 1  # layers per anchor pair
        stitches = [Stitch(a, "anchor", (Segment(a, 0, depth),), (), self.names) for a in range(self.num_anchors)]
        layers = []
        for front in range(self.num_anchors - 1):
            for w in range(per_pair):  # the target's block m - 1 output is the input of its block m
                matches = tuple((j, m - 1) for j, m, layer in positions if layer == w)
                layers.append(LayerSpec("s2l", front * per_pair + w, front, front + 1, matches))
            for j, m, w in positions:
                segs = (Segment(front, 0, j + 1), Segment(front + 1, m, depth))
                stitches.append(Stitch(len(stitches), "FS", segs, (Link("s2l", front * per_pair + w),), self.names))
        return stitches, tuple(layers)

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
                f"unknown stitch id {stitch_id!r}: this space ({self.describe()}, "
                f"routes {', '.join(self.route_types)}) has {len(self)} stitches with ids "
                f"{self.ids[0]}..{self.ids[-1]}"
            ) from None

    def anchor_ids(self) -> Tuple[int, ...]:
        """Ids of the anchor stitches, smallest anchor first ((fast, slow) for two anchors): ``0 .. N-1``."""
        return tuple(range(self.num_anchors))

    def describe(self) -> str:
        """``"12/24 blocks, two-way"`` or ``"12/12/12 blocks, sliding window k=2 s=1"``."""
        blocks = "/".join(map(str, self.depths))
        return f"{blocks} blocks, " + ("two-way" if self.window is None else
                                       f"sliding window k={self.window[0]} s={self.window[1]}")

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


def _check_window(window: Sequence[int], depths: Tuple[int, ...]) -> Tuple[int, int]:
    """``(kernel, stride)`` of a valid window over anchors of ``depths``; ``ValueError`` naming the fix if not."""
    if len(window) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in window):
        raise ValueError(f"window must be (kernel, stride), two integers, got {window!r}")
    kernel, stride = window
    window_pairs(1, kernel, stride)  # checks kernel and stride
    if len(set(depths)) != 1 or depths[0] < 1:
        raise ValueError(f"SN-Netv1's sliding-window stitching pairs block j of an anchor with block m of the next "
                         f"inside one window, which needs anchors of one positive depth (DeiT-Ti/S/B: 12 each); got "
                         f"depths {list(depths)}. Use two anchors and the two-way space for anchors of different depths")
    return int(kernel), int(stride)


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
