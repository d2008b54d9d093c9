"""Upstream SN-Netv2 interoperability: stitch-id mapping (both ways) and checkpoint conversion."""
import pytest

from snnet_core import StitchSpace
from snnet_core.upstream import stitch_id_from_upstream, upstream_stitch_id


# ---------------------------------------------------------------------------------------------------
# Upstream's enumeration, re-derived from its construction rules (get_stitch_configs_bidirection):
# configs carry `comb_id` (anchor per segment), `route` (per segment [begin, end], run as
# "blocks i with begin <= i <= end") and `stitch_layer_ids` (stitch_layers[comb_id[k]][id] after segment k).
def upstream_configs(ds, dl):
    ratio = dl // ds
    small_of_large = [i * ds // dl for i in range(dl)]  # nearest-neighbour resampling of range(ds) to dl
    sl = [dict(front=i, end=(i + 1) * ratio, layer=i) for i in range(ds)]
    ls = [dict(front=i, end=small_of_large[i] + 1, layer=i // ratio)
          for i in range(dl) if i < dl - 1 and (ds == dl or i % 2 == 1)]
    configs = [dict(comb_id=[0]), dict(comb_id=[1])]
    depth = {0: ds, 1: dl}
    for c in sl:
        configs.append(dict(comb_id=[0, 1], route=[[0, c["front"]], [c["end"], dl]], layers=[c["layer"]]))
    for c in ls:
        configs.append(dict(comb_id=[1, 0], route=[[0, c["front"]], [c["end"], ds]], layers=[c["layer"]]))
    for a in ls:
        for b in sl:
            if b["layer"] != ds - 1 and b["front"] >= a["end"]:
                configs.append(dict(comb_id=[1, 0, 1], route=[[0, a["front"]], [a["end"], b["front"]], [b["end"], dl]],
                                    layers=[a["layer"], b["layer"]]))
    for a in sl:
        for b in ls:
            if b["front"] >= a["end"]:
                configs.append(dict(comb_id=[0, 1, 0], route=[[0, a["front"]], [a["end"], b["front"]], [b["end"], ds]],
                                    layers=[a["layer"], b["layer"]]))
    for c in configs:
        if len(c["comb_id"]) == 1:
            c["route"], c["layers"] = [[0, depth[c["comb_id"][0]]]], []
        c["blocks"] = [(m, [i for i in range(depth[m]) if lo <= i <= hi]) for m, (lo, hi) in zip(c["comb_id"], c["route"])]
    return configs


def upstream_signature(config):
    """What a config runs: (anchor, blocks) per segment and (direction, stitching layer) per link."""
    return (tuple((m, tuple(b)) for m, b in config["blocks"]),
            tuple(("s2l" if m == 0 else "l2s", layer) for m, layer in zip(config["comb_id"], config["layers"])))


def our_signature(stitch):
    return (tuple((s.anchor, tuple(range(s.start, s.end))) for s in stitch.segments),
            tuple((link.direction, link.position) for link in stitch.links))


def dead_config(config, ds):
    """Upstream's FS config through the last small block: runs no large block, never trained or evaluated."""
    return config["comb_id"] == [0, 1] and config["route"][0][1] == ds - 1


@pytest.mark.parametrize("depths", [(4, 8), (12, 24), (12, 12)])
def test_id_mapping_matches_upstream_enumeration_route_by_route(depths):
    space = StitchSpace(*depths)
    configs = upstream_configs(*depths)
    ours = {our_signature(s): s.id for s in space}
    live = [u for u, c in enumerate(configs) if not dead_config(c, depths[0])]
    assert len(live) == len(space) and len(configs) == len(space) + 1
    for u in live:
        sid = ours[upstream_signature(configs[u])]
        assert upstream_stitch_id(space, sid) == u
        assert stitch_id_from_upstream(space, u) == sid
    for sid in space.ids:
        assert stitch_id_from_upstream(space, upstream_stitch_id(space, sid)) == sid


def test_id_mapping_12_24_blocks():
    space = StitchSpace(12, 24)
    upstream = {kind: sorted(upstream_stitch_id(space, s.id) for s in space if s.kind == kind)
                for kind in ("anchor", "FS", "SF", "SFS", "FSF")}
    assert upstream == {"anchor": [0, 1], "FS": list(range(2, 13)), "SF": list(range(14, 25)),
                        "SFS": list(range(25, 80)), "FSF": list(range(80, 135))}
    assert [sid for sid in space.ids if upstream_stitch_id(space, sid) == sid] == list(range(13))
    with pytest.raises(KeyError, match="upstream stitch id 13 is upstream's unused FS config"):
        stitch_id_from_upstream(space, 13)


def test_id_mapping_errors():
    space = StitchSpace(12, 24)
    with pytest.raises(KeyError, match="unknown upstream stitch id 135.*0..134"):
        stitch_id_from_upstream(space, 135)
    with pytest.raises(KeyError, match="unknown stitch id 134"):
        upstream_stitch_id(space, 134)
    fs_only = StitchSpace(12, 24, route_types=("anchor", "FS"))
    with pytest.raises(KeyError, match="upstream stitch id 30 is our SFS stitch .* outside this space"):
        stitch_id_from_upstream(fs_only, 30)
    assert stitch_id_from_upstream(fs_only, 5) == 5
    with pytest.raises(ValueError, match="4/12 blocks does not match"):
        upstream_stitch_id(StitchSpace(4, 12), 0)
