"""Stitch space: counts, routes, positions and ids for 12/24, 12/12, 24/24 and the SN-Netv1 subset."""
import pytest
import torch

from snnet_core import StitchSpace, map_out_indices_to_fast
from snnet_core.model.stitch_space import FAST, SLOW, paired_large_blocks, route_types_check


@pytest.mark.parametrize(
    "depths, expected",
    [
        ((12, 24), {"anchor": 2, "FS": 11, "SF": 11, "FSF": 55, "SFS": 55}),
        ((12, 12), {"anchor": 2, "FS": 11, "SF": 11, "FSF": 55, "SFS": 55}),
        ((24, 24), {"anchor": 2, "FS": 23, "SF": 23, "FSF": 253, "SFS": 253}),
        ((6, 12), {"anchor": 2, "FS": 5, "SF": 5, "FSF": 10, "SFS": 10}),
    ],
)
def test_counts_follow_depths(depths, expected):
    space = StitchSpace(*depths)
    assert space.count_by_type() == expected
    assert len(space) == sum(expected.values())
    assert space.num_s2l == depths[0] and space.num_l2s == depths[0] - 1


def test_deit3_s_l_space_is_the_papers_134():
    space = StitchSpace(12, 24)
    assert len(space) == 134
    # small block i pairs with large block 2i+1; large-to-small only from odd large blocks 1..21
    assert space.pairs == [2 * i + 1 for i in range(12)]
    l2s_sources = sorted({st.segments[i].end - 1 for st in space for i, link in enumerate(st.links)
                          if link.direction == "l2s"})
    assert l2s_sources == list(range(1, 22, 2))
    s2l_sources = sorted({st.segments[i].end - 1 for st in space for i, link in enumerate(st.links)
                          if link.direction == "s2l"})
    assert s2l_sources == list(range(0, 11))  # the 12th s2l layer (block 11) serves dense features only


def test_routes_are_contiguous_and_readable():
    space = StitchSpace(12, 24)
    assert space[0].route == "S[0:12]" and space[1].route == "L[0:24]"
    fs = [s for s in space if s.kind == "FS"]
    assert fs[3].route == "S[0:4] -> L[8:24]"
    for st in space:
        depth = {FAST: 12, SLOW: 24}
        assert st.segments[0].start == 0 and st.segments[-1].end == depth[st.last_anchor]
        for seg, nxt, link in zip(st.segments, st.segments[1:], st.links):
            assert seg.anchor != nxt.anchor and seg.start < seg.end and nxt.start < nxt.end
            small, large = (seg.end - 1, nxt.start - 1) if seg.anchor == FAST else (nxt.start - 1, seg.end - 1)
            assert large == space.pairs[small]  # joined at a stitching position
            assert link.position == small and link.direction == ("s2l" if seg.anchor == FAST else "l2s")
    routes = [s.route for s in space]
    assert len(set(routes)) == len(routes)


def test_ids_are_stable_across_route_subsets():
    full = StitchSpace(12, 24)
    v1 = StitchSpace(12, 24, route_types=("anchor", "FS"))
    assert len(v1) == 13
    for st in v1:
        assert full[st.id] == st
    assert StitchSpace(12, 24).ids == full.ids  # deterministic enumeration


def test_unknown_ids_and_bad_input_fail_clearly():
    v1 = StitchSpace(12, 24, route_types=("anchor", "FS"))
    with pytest.raises(KeyError, match="unknown stitch id 40"):
        v1[40]  # an FSF id of the full space is not in the v1 space
    with pytest.raises(KeyError, match="unknown stitch id"):
        v1.parse_selection("0,1,999")
    with pytest.raises(ValueError, match="comma-separated"):
        v1.parse_selection("fast")
    with pytest.raises(ValueError, match="unknown route types"):
        StitchSpace(12, 24, route_types=("FS", "XY"))
    with pytest.raises(ValueError, match="deeper"):
        paired_large_blocks(24, 12)
    assert v1.parse_selection("all") == v1.ids and v1.parse_selection("2, 3") == [2, 3]


def test_out_indices_map_to_the_same_relative_depth():
    assert map_out_indices_to_fast((4, 11, 17, 23), 12, 24) == (2, 5, 8, 11)
    assert map_out_indices_to_fast((2, 5, 8, 11), 12, 12) == (2, 5, 8, 11)
    with pytest.raises(ValueError, match="outside"):
        map_out_indices_to_fast((24,), 12, 24)


@pytest.mark.parametrize("depths", [(12, 24), (12, 12), (24, 24), (5, 13)])
def test_every_route_crosses_every_dense_stage_exactly_once(depths):
    ds, dl = depths
    out = tuple(sorted({(dl * (j + 1)) // 4 - 1 for j in range(4)}))
    fast_out = map_out_indices_to_fast(out, ds, dl)
    for st in StitchSpace(ds, dl):
        hits = [0] * len(out)
        for seg in st.segments:
            idx = fast_out if seg.anchor == FAST else out
            for stage, b in enumerate(idx):
                hits[stage] += seg.start <= b < seg.end
        assert hits == [1] * len(out), st.route


def test_selections_naming_no_stitch_or_repeating_one(caplog):
    space = StitchSpace(4, 8)
    for empty in (",", "", " , ,"):
        with pytest.raises(ValueError, match="names no stitch"):
            space.parse_selection(empty)
    with pytest.raises(ValueError, match=r"'3.0' is not an integer"):
        space.parse_selection("1,3.0")
    assert space.parse_selection("3,3,3") == [3]
    assert "repeats [3]: each stitch is evaluated once" in caplog.text
    assert space.parse_selection("5, 2,5,0") == [5, 2, 0]


def test_only_integers_are_stitch_ids():
    """``True == 1`` in Python: a bool must not silently select the slow anchor; nor may 3.0 or "3" pass."""
    import numpy as np

    from tests.conftest import tiny_snnet

    space = StitchSpace(4, 8)
    for bad in (True, False, np.bool_(True), 1.0, "1", None):
        with pytest.raises(TypeError, match="stitch id"):
            space[bad]
        assert bad not in space
    assert space[np.int64(3)] == space[3] and 3 in space
    net = tiny_snnet()
    with pytest.raises(TypeError, match="is a bool"):
        net.set_stitch(True)
    with pytest.raises(TypeError, match="is a bool"):
        net(torch.zeros(1, 3, 32, 32), stitch_id=True)
    assert net.set_stitch(torch.tensor(2)).id == 2 and net.stitch_id == 2


def test_route_types_check_takes_the_spaces_the_engine_builds_and_holds_the_anchors():
    check = route_types_check()
    for kinds in (["anchor", "FS"], ["anchor", "FS", "SF", "FSF", "SFS"], ["anchor", "SFS"]):
        assert check.valid(kinds) and len(StitchSpace(12, 24, route_types=kinds)) > 2
    assert not any(check.valid(v) for v in (["FS"], ["anchor", "fs"], ["anchor", "FS", "FS"], [], None))
    assert "'anchor', 'FS', 'SF', 'FSF', 'SFS', holding 'anchor'" in check.expected
