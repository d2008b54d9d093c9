"""SN-Netv1's sliding-window space with nearest stitching: ids and routes as SN-Netv1 builds them for DeiT-Ti/S/B,
the counts of its Figure B, and the engine (forward with dense features, LS init, FLOPs, ROS, checkpoints, export,
stitch table) on a tiny three-anchor SN-Net; the two-way space unchanged."""
import hashlib
import json

import pytest
import torch

from snnet_core import (ResourceConstrainedSampler, StitchedViT, StitchSpace, build_flops_table, export_stitch,
                        load_snnet, save_snnet)
from snnet_core.model.flops import count_gflops
from snnet_core.model.stitch_space import Segment, window_pairs
from snnet_core.model.stitching_layers import LeastSquaresAccumulator
from snnet_core.model.upstream import stitch_id_from_upstream, upstream_stitch_id
from snnet_core.training.ls_init import calibration_pairs, ls_init_stitching_layers
from tests.conftest import tiny_anchor
from tests.test_core_flops_sampling import _Run

# SN-Netv1 (github.com/ziplab/SN-Net, stitching_deit/utils.py), paired_stitching(depth=12, kernel_size=2, stride=1):
# the window [i, i+1] slides by 1; each new (front block j, end block m) pair of a window is one config, mapped to
# the window's stitching layer (the window [11] adds no pair, hence 11 layers). get_stitch_configs then lists the
# anchor combinations (0,), (1,), (2,), (0, 1), (1, 2) (nearest stitching pops (0, 2) and (0, 1, 2)) and, for each
# pair, one config per (j, m) in this order; SNNet.forward runs front blocks [0, j] and end blocks [m, 12).
V1_PAIRS_K2_S1 = [(0, 0), (0, 1), (1, 0), (1, 1), (1, 2), (2, 1), (2, 2), (2, 3), (3, 2), (3, 3), (3, 4), (4, 3),
                  (4, 4), (4, 5), (5, 4), (5, 5), (5, 6), (6, 5), (6, 6), (6, 7), (7, 6), (7, 7), (7, 8), (8, 7),
                  (8, 8), (8, 9), (9, 8), (9, 9), (9, 10), (10, 9), (10, 10), (10, 11), (11, 10), (11, 11)]
V1_LAYERS_K2_S1 = [0, 0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4, 5, 5, 5, 6, 6, 6, 7, 7, 7, 8, 8, 8, 9, 9, 9,
                   10, 10, 10]
# SN-Netv1's stitching_deit/results/stitches_res.txt (DeiT-Ti/S/B, k = 2, s = 1, 224x224): "flops" of some cfg_ids
V1_RESULT_FLOPS = {0: 1258411200, 1: 4608338304, 2: 17582740224, 3: 4696010496, 7: 4040142336, 36: 1652086272,
                   37: 17961426432, 70: 6121909248}


def test_deit_ti_s_b_ids_and_routes_are_snnetv1s():
    space = StitchSpace(12, 12, 12)
    assert space.window == (2, 1) and space.num_anchors == 3
    assert len(space) == 71 == 3 + 2 * len(V1_PAIRS_K2_S1)  # stitches_res.txt holds cfg_id 0..70
    assert [(j, m, layer) for j, m, layer in window_pairs(12, 2, 1)] == [
        (j, m, layer) for (j, m), layer in zip(V1_PAIRS_K2_S1, V1_LAYERS_K2_S1)]
    for anchor in range(3):
        assert space[anchor].kind == "anchor" and space[anchor].segments == (Segment(anchor, 0, 12),)
    assert space.num_s2l == 2 * 11 and space.num_l2s == 0
    for pair, front in enumerate((0, 1)):  # Ti-S, then S-B
        for i, ((j, m), layer) in enumerate(zip(V1_PAIRS_K2_S1, V1_LAYERS_K2_S1)):
            stitch = space[3 + pair * 34 + i]
            assert stitch.kind == "FS"
            assert stitch.segments == (Segment(front, 0, j + 1), Segment(front + 1, m, 12))
            assert [(link.direction, link.position) for link in stitch.links] == [("s2l", pair * 11 + layer)]
            assert upstream_stitch_id(space, stitch.id) == stitch.id == stitch_id_from_upstream(space, stitch.id)
    assert space[3].route == "A0[0:1] -> A1[0:12]" and space[70].route == "A1[0:12] -> A2[11:12]"
    # each layer is shared by its window's pairs; LS init fits front block j to the end's input of block m
    assert [(s.name, s.source, s.target, s.matches) for s in space.layers[:2]] == [
        ("stitch_s2l.0", 0, 1, ((0, -1), (0, 0), (1, -1), (1, 0))), ("stitch_s2l.1", 0, 1, ((1, 1), (2, 0), (2, 1)))]
    assert space.layers[11].source == 1 and space.layers[11].target == 2


@pytest.mark.parametrize("window, count, layers", [((2, 1), 71, 11), ((2, 2), 51, 6), ((3, 3), 75, 4), ((4, 4), 99, 3)])
def test_window_counts_are_figure_bs(window, count, layers):
    """SN-Netv1 supplementary, Figure B: k = s = 2, 3, 4 give 51, 75 and 99 stitches (k = 2, s = 1: 71); one layer
    per window that makes new pairs and anchor pair."""
    space = StitchSpace(12, 12, 12, window=window)
    assert len(space) == count and space.count_by_type() == {"anchor": 3, "FS": count - 3}
    assert space.num_s2l == 2 * layers
    if window == (4, 4):  # non-overlapping windows: the stitch front[0:1] -> end[3:12] skips two blocks
        assert space[3 + 3].segments == (Segment(0, 0, 1), Segment(1, 3, 12))


def test_two_way_space_is_unchanged():
    """Ids, routes and layers of the two-way spaces as before the sliding-window space (digests of HEAD 10d3177)."""
    digests = {(12, 24): "f9b87f7ea76c1c25", (4, 8): "7a5e497b97115357", (12, 12): "94d25e8591ab1da0"}
    for depths, digest in digests.items():
        space = StitchSpace(*depths)
        text = "\n".join(f"{s.id} {s.kind} {s.route} {[(l.direction, l.position) for l in s.links]}" for s in space)
        assert hashlib.sha256(text.encode()).hexdigest()[:16] == digest
        assert space.window is None and space.anchor_ids() == (0, 1)
    space = StitchSpace(12, 24)
    assert len(space) == 134 and space[4].route == "S[0:3] -> L[6:24]" and space[13].route == "L[0:2] -> S[1:12]"
    assert [(s.name, s.matches) for s in space.layers[:2]] == [("stitch_s2l.0", ((0, 1),)), ("stitch_s2l.1", ((1, 3),))]
    with pytest.raises(ValueError, match="one positive depth"):
        StitchSpace(12, 24, window=(2, 1))
    with pytest.raises(ValueError, match="small to large only"):
        StitchSpace(12, 12, 12, route_types=("anchor", "SF"))
    with pytest.raises(ValueError, match="kernel >= 1"):
        StitchSpace(12, 12, 12, window=(0, 1))


def test_stitch_table_of_deit_ti_s_b_matches_snnetv1s_flops(tmp_path, capsys):
    """The CLI on the real DeiT-Ti/S/B widths: SN-Netv1's ids, routes and fvcore FLOPs (its results file)."""
    from snnet_core import stitch_table

    stitch_table.main(["--anchors", "deit_tiny_patch16_224", "deit_small_patch16_224", "deit_base_patch16_224",
                       "--sort", "id", "--output-dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert out.startswith("71 stitches of A0 = deit_tiny_patch16_224, A1 = deit_small_patch16_224, "
                          "A2 = deit_base_patch16_224 at 224x224 (12/12/12 blocks, sliding window k=2 s=1; anchor 3, "
                          "FS 68)")
    saved = json.loads((tmp_path / "stitches.json").read_text())
    assert saved["window"] == {"kernel": 2, "stride": 1}
    rows = {r["id"]: r for r in saved["stitches"]}
    assert sorted(rows) == list(range(71)) and all(r["upstream_id"] == r["id"] for r in rows.values())
    # SN-Netv1 counted with fvcore too: its anchors exactly; its stitches without the end anchor's final LayerNorm,
    # which its SNNet.forward skips (forward_head alone): 5 FLOPs per element of 197 tokens of the end width fewer
    (cache,) = (tmp_path / "cache").glob("flops_*.json")
    exact = {int(k): v for k, v in json.loads(cache.read_text())["gflops"].items()}
    for cfg_id, flops in V1_RESULT_FLOPS.items():
        skipped_norm = 0 if cfg_id < 3 else 5 * 197 * (384 if cfg_id < 37 else 768)
        assert round(exact[cfg_id] * 1e9) == flops + skipped_norm
    # FLOPs monotone: for one pair, more front blocks cost more, a later end start costs less
    for front in (0, 1):
        gflops = {pair: rows[3 + front * 34 + i]["gflops"] for i, pair in enumerate(V1_PAIRS_K2_S1)}
        for (j, m), g in gflops.items():
            assert (j + 1, m) not in gflops or gflops[(j + 1, m)] > g
            assert (j, m + 1) not in gflops or gflops[(j, m + 1)] < g


def test_stitch_table_window_flags():
    from snnet_core.stitch_table import parse_args

    three = ["--anchors", "a", "b", "c"]
    assert parse_args(three).window == (2, 1)
    assert parse_args(three + ["--window-kernel", "4", "--window-stride", "4"]).window == (4, 4)
    assert parse_args(["--anchors", "a", "b"]).window is None
    assert parse_args(["--anchors", "a", "b", "--space", "v1"]).window == (2, 1)
    assert parse_args(["--anchors", "a", "b", "--window-kernel", "3"]).window == (3, 1)
    for bad in (three + ["--space", "two-way"], ["--anchors", "a"], three + ["--window-stride", "0"]):
        with pytest.raises(SystemExit):
            parse_args(bad)


# --- a tiny three-anchor SN-Net: depth 4, widths 16/32/48 -------------------------------------------------------
def tiny_three(window=(2, 1), lora_rank=2, out_indices=(1, 3), seed=0):
    torch.manual_seed(seed)
    anchors = [tiny_anchor(embed_dim=d, depth=4, num_heads=2, num_classes=5) for d in (16, 32, 48)]
    return StitchedViT(*anchors, lora_rank=lora_rank, out_indices=out_indices, window=window).eval()


def test_every_stitch_runs_with_dense_features_and_exports_alone():
    net = tiny_three()
    assert len(net.space) == 3 + 2 * 10 and len(net.stitch_s2l) == 2 * 3 and len(net.feature_proj) == 2 * 2
    x = torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        for sid in net.space.ids:
            out, stitch = net(x, stitch_id=sid), net.space[sid]
            assert out.tokens.shape == (2, 1 + 2 * 3, net.embed_dims[stitch.last_anchor])
            assert [f.shape for f in out.feature_maps()] == [(2, 48, 2, 3)] * 2
            assert net.classify(x, stitch_id=sid).shape == (2, 5)
            alone = export_stitch(net, sid)
            assert len(alone.layers) == len(net.plan(sid).layers) < 10
            again = alone(x)
            torch.testing.assert_close(again.tokens, out.tokens)
            for a, b in zip(again.features, out.features):
                torch.testing.assert_close(a, b)


def test_routes_that_rerun_or_skip_a_stage_read_the_later_state():
    net = tiny_three(window=(3, 3), out_indices=(1, 3))
    x = torch.randn(1, 3, 32, 32)
    rerun = next(s for s in net.space if s.segments == (Segment(0, 0, 2), Segment(1, 0, 4)))  # block 1 run twice
    skip = next(s for s in net.space if s.segments == (Segment(0, 0, 1), Segment(1, 2, 4)))  # block 1 jumped over
    with torch.no_grad():
        a0 = net.anchor_block_outputs(x, 0)
        layer = net.stitching_layer("s2l", rerun.links[0].position)
        a1 = layer(a0[1])
        for block in net.anchors[1].blocks[:2]:
            a1 = block(a1)
        torch.testing.assert_close(net(x, stitch_id=rerun.id).features[0], net.feature_proj[1 * 2 + 0](a1))
        jumped = net.stitching_layer("s2l", skip.links[0].position)(a0[0])
        torch.testing.assert_close(net(x, stitch_id=skip.id).features[0], net.feature_proj[1 * 2 + 0](jumped))
    names = net.plan(rerun.id).layer_names
    assert sum(t.projection_name is not None for ts in net.plan(rerun.id).taps.values() for t in ts) == 2
    assert names[:3] == ["anchors.0.blocks.0", "anchors.0.blocks.1", f"stitch_s2l.{rerun.links[0].position}"]


def test_ls_init_averages_a_windows_pair_solutions():
    net = tiny_three(lora_rank=0)
    images = [torch.randn(2, 3, 32, 32) for _ in range(2)]
    errors = ls_init_stitching_layers(net, images, num_images=4, progress=False)
    assert sorted(errors) == sorted(spec.name for spec in net.layer_specs())
    assert all(e >= 0 for e in errors.values())
    shared = net.space.layers[0]  # front blocks 0/1 -> embedding / block 0 of A1
    accumulators = [LeastSquaresAccumulator(16, 32) for _ in shared.matches]
    for batch in images:
        pairs = [(x, y) for name, x, y in calibration_pairs(net, batch) if name == shared.name]
        assert len(pairs) == 4
        for acc, (x, y) in zip(accumulators, pairs):
            acc.update(x, y)
    solutions = [acc.solve() for acc in accumulators]
    weight = torch.stack([w for w, _ in solutions]).mean(0)
    torch.testing.assert_close(net.stitch_s2l[0].weight, weight.float(), rtol=1e-4, atol=1e-5)
    # a projection is fit to the largest anchor's features at the same depth: better than mapping to zero
    target = torch.cat([net.anchor_block_outputs(batch, 2)[3] for batch in images])
    assert net.layer_specs()[-1].name == "feature_proj.3" and net.layer_specs()[-1].matches == ((3, 3),)
    assert errors["feature_proj.3"] < float(torch.mean(target.double() ** 2))


def test_flops_table_matches_fvcore_per_exported_stitch_and_drives_ros():
    net = tiny_three()
    table = build_flops_table(net, (32, 32), mode="features")
    assert sorted(table.gflops) == net.space.ids
    for sid in (0, 2, 3, 9, 22):
        alone = export_stitch(net, sid)
        assert table.gflops[sid] == pytest.approx(count_gflops(_Run(alone, "features"), (torch.zeros(1, 3, 32, 32),)),
                                                  rel=1e-9)
    sampler = ResourceConstrainedSampler(table.gflops, step=table.gflops[1] / 4, seed=0)
    assert sorted(sid for ids in sampler.bins for sid in ids) == net.space.ids and len(sampler.bins) > 2
    assert {sampler.sample(it) for it in range(200)} <= set(net.space.ids)


def test_checkpoint_rebuilds_the_window_space(tmp_path):
    net = tiny_three(window=(4, 4))
    assert net.config()["window"] == [4, 4] and "window" not in StitchedViT(*list(net.anchors)[:2]).config()
    path = str(tmp_path / "model.pth")
    save_snnet(path, net)
    loaded = load_snnet(path)
    assert loaded.space.window == (4, 4) and loaded.space.ids == net.space.ids
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        for sid in (0, 5, len(net.space) - 1):
            torch.testing.assert_close(loaded(x, stitch_id=sid).features[-1], net(x, stitch_id=sid).features[-1])
    with pytest.raises(ValueError, match="ordered by size"):
        StitchedViT(*reversed(list(tiny_three().anchors)))


def test_snnetv1_checkpoint_loads_into_the_window_space(tmp_path):
    """A file in SN-Netv1's layout (main.py saves {'model': SNNet.state_dict(), 'args', ...}; SNNet holds
    anchors.{i}.<timm key> and stitch_layers.{pair}.{layer}.transform, an nn.Linear per window and anchor pair)."""
    import argparse

    from snnet_core.model.upstream import convert_v1_state_dict, load_upstream_checkpoint

    source = tiny_three(lora_rank=0, seed=1)
    per_pair = source.space.num_s2l // 2
    state = {k: v for k, v in source.state_dict().items() if k.startswith("anchors.")}
    for index, layer in enumerate(source.stitch_s2l):
        pair, window = divmod(index, per_pair)
        state[f"stitch_layers.{pair}.{window}.transform.weight"] = layer.weight.detach().clone()
        state[f"stitch_layers.{pair}.{window}.transform.bias"] = layer.bias.detach().clone()
    path = str(tmp_path / "checkpoint.pth")
    torch.save({"model": state, "epoch": 49, "args": argparse.Namespace(stitch_kernel_size=2)}, path)
    net = tiny_three(lora_rank=0, seed=2)
    report = load_upstream_checkpoint(path, net)
    assert report.layout == "snnet-v1" and sorted(report.set_aside) == ["args", "epoch"]
    assert all(k.startswith("feature_proj.") for k in report.kept) and "SN-Netv1" in str(report)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        for sid in net.space.ids:
            torch.testing.assert_close(net.classify(x, sid), source.classify(x, sid))
    state["stitch_layers.2.0.transform.weight"] = state["stitch_layers.1.0.transform.weight"]  # no third pair
    torch.save({"model": state}, path)
    with pytest.raises(ValueError, match=r"unknown keys: stitch_layers\.2\.0\.transform\.weight"):
        load_upstream_checkpoint(path, tiny_three(lora_rank=0))
    with pytest.raises(ValueError, match="not the two-way space"):
        convert_v1_state_dict({"model": state}, StitchedViT(*list(net.anchors)[:2]))
