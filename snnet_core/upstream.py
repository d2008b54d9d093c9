"""Interoperability with upstream SN-Netv2 (github.com/ziplab/SN-Netv2): stitch ids and checkpoints.

Upstream numbers its stitches in the order ``get_stitch_configs_bidirection`` builds them: the two
anchors, then one small-to-large config per small block ("sl", our FS; the last one, which runs the
whole small anchor and no large block, is never trained or evaluated), the large-to-small configs
("ls", our SF), large-small-large ("lsl", our SFS) and small-large-small ("sls", our FSF). Our ids put
FSF before SFS and skip the dead FS config, so only the anchors and FS keep their ids (12/24 blocks:
0-12 agree, 13 is upstream's dead config, upstream SF 14-24, SFS 25-79, FSF 80-134).
"""
from __future__ import annotations

import functools
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F

from .stitch_space import FAST, SLOW, Link, Segment, StitchSpace

_Route = Tuple[str, Tuple[Segment, ...], Tuple[Link, ...]]


def _upstream_routes(fast_depth: int, slow_depth: int) -> List[Optional[_Route]]:
    """Upstream's configs in upstream's id order as ``(kind, segments, links)``; ``None`` for the dead FS id.

    Upstream's inclusive block ranges ``[begin, end]`` become our half-open ``Segment(anchor, begin, end + 1)``.
    """
    ratio = slow_depth // fast_depth
    # Small block at each large position: upstream resamples range(fast_depth) to slow_depth positions
    # with nearest-neighbour F.interpolate (12/24: i -> i // 2).
    ids = torch.arange(fast_depth, dtype=torch.float32)[None, None]
    small_at = F.interpolate(ids, size=slow_depth, mode="nearest").flatten().long().tolist()
    # "sl": small blocks [0, i], then large blocks from (i + 1) * ratio, through s2l layer i.
    s2l = [(i, (i + 1) * ratio) for i in range(fast_depth)]
    # "ls": large blocks [0, i], then small blocks from small_at[i] + 1, through l2s layer i // ratio;
    # every odd large block except the last when the depths differ, every block but the last otherwise.
    l2s = [
        (i, small_at[i] + 1, i // ratio)
        for i in range(slow_depth - 1)
        if fast_depth == slow_depth or i % 2 == 1
    ]
    routes: List[Optional[_Route]] = [
        ("anchor", (Segment(FAST, 0, fast_depth),), ()),
        ("anchor", (Segment(SLOW, 0, slow_depth),), ()),
    ]
    for i, large_start in s2l:  # the last one runs no large block: upstream leaves its id out of training
        segs = (Segment(FAST, 0, i + 1), Segment(SLOW, large_start, slow_depth))
        routes.append(None if i == fast_depth - 1 else ("FS", segs, (Link("s2l", i),)))
    for i, small_start, layer in l2s:
        segs = (Segment(SLOW, 0, i + 1), Segment(FAST, small_start, fast_depth))
        routes.append(("SF", segs, (Link("l2s", layer),)))
    for i_large, small_start, layer in l2s:  # "lsl"
        for i_small, large_start in s2l[:-1]:
            if i_small >= small_start:
                segs = (Segment(SLOW, 0, i_large + 1), Segment(FAST, small_start, i_small + 1),
                        Segment(SLOW, large_start, slow_depth))
                routes.append(("SFS", segs, (Link("l2s", layer), Link("s2l", i_small))))
    for i_small, large_start in s2l:  # "sls"
        for i_large, small_start, layer in l2s:
            if i_large >= large_start:
                segs = (Segment(FAST, 0, i_small + 1), Segment(SLOW, large_start, i_large + 1),
                        Segment(FAST, small_start, fast_depth))
                routes.append(("FSF", segs, (Link("s2l", i_small), Link("l2s", layer))))
    return routes


@functools.lru_cache(maxsize=None)
def _id_tables(fast_depth: int, slow_depth: int) -> Tuple[Dict[int, int], Dict[int, int], int]:
    """``(ours -> upstream, upstream -> ours, number of upstream ids)``; ``ValueError`` if they differ."""
    ours = {(s.segments, s.links): s for s in StitchSpace(fast_depth, slow_depth)}
    routes = _upstream_routes(fast_depth, slow_depth)
    to_upstream: Dict[int, int] = {}
    for upstream_id, route in enumerate(routes):
        if route is None:
            continue
        kind, segments, links = route
        stitch = ours.get((segments, links))
        if stitch is None or stitch.kind != kind:
            raise ValueError(
                f"upstream's stitch enumeration for {fast_depth}/{slow_depth} blocks does not match this "
                f"space (its id {upstream_id}, {kind} {' -> '.join(map(str, segments))}, is not one of our "
                "routes); upstream's rules pair blocks like ours only for equal depths or a 1:2 depth ratio"
            )
        to_upstream[stitch.id] = upstream_id
    if len(to_upstream) != len(ours):
        missing = sorted(set(s.id for s in ours.values()) - set(to_upstream))
        raise ValueError(
            f"upstream's stitch enumeration for {fast_depth}/{slow_depth} blocks lacks our stitches {missing[:5]}"
        )
    return to_upstream, {u: o for o, u in to_upstream.items()}, len(routes)


def upstream_stitch_id(space: StitchSpace, stitch_id: int) -> int:
    """Upstream SN-Netv2's id of our stitch ``stitch_id`` (e.g. 12/24 blocks: our SF 13 -> upstream 14).

    Raises ``KeyError`` for an id not in ``space`` and ``ValueError`` for depths upstream's enumeration
    does not cover.
    """
    stitch = space[stitch_id]
    return _id_tables(*space.depths)[0][stitch.id]


def stitch_id_from_upstream(space: StitchSpace, upstream_id: int) -> int:
    """Our id of upstream SN-Netv2's stitch ``upstream_id`` (inverse of ``upstream_stitch_id``).

    Raises ``KeyError`` naming the id when upstream has no such stitch, when it is upstream's dead FS
    config (the whole small anchor followed by no large block), or when its route type is not in ``space``.
    """
    fast_depth, slow_depth = space.depths
    _, from_upstream, count = _id_tables(fast_depth, slow_depth)
    if upstream_id not in from_upstream:
        if upstream_id in range(count):
            raise KeyError(
                f"upstream stitch id {upstream_id} is upstream's unused FS config (all {fast_depth} small "
                "blocks, then no large block); upstream never trains or evaluates it, so it has no id here"
            )
        raise KeyError(
            f"unknown upstream stitch id {upstream_id!r}: upstream numbers the stitches of "
            f"{fast_depth}/{slow_depth} blocks 0..{count - 1}"
        )
    stitch_id = from_upstream[upstream_id]
    if stitch_id not in space:
        raise KeyError(
            f"upstream stitch id {upstream_id} is our {StitchSpace(fast_depth, slow_depth)[stitch_id].kind} "
            f"stitch {stitch_id}, outside this space (routes {', '.join(space.route_types)})"
        )
    return stitch_id
