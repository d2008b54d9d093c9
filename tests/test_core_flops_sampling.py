"""FLOPs table (equals fvcore on each stitch, cached), ROS/uniform samplers, Pareto selection."""
import multiprocessing as mp
import random

import numpy as np
import pytest
import torch
from scipy.stats import chisquare

import snnet_core.model.flops as flops_module
from snnet_core import (ResourceConstrainedSampler, StitchSpace, UniformSampler, best_under_budget,
                        build_anchor, build_flops_table, count_gflops, export_stitch, flops_bins,
                        pareto_frontier, StitchedViT)
from snnet_core.training.sampling import build_sampler, describe_sampler
from tests.conftest import tiny_snnet


@pytest.mark.parametrize("mode", ["features", "classify"])
def test_table_equals_fvcore_count_of_each_stitch(mode):
    net = tiny_snnet(num_classes=5, img_size=64).eval()
    x = torch.randn(1, 3, 48, 64)
    table = build_flops_table(net, (48, 64), mode=mode, head_gflops=0.5, head_params=1000)
    for st in net.space:
        exported = export_stitch(net, st.id)
        direct = count_gflops(_Run(exported, mode), (x,))
        assert table.gflops[st.id] == pytest.approx(direct + 0.5, rel=1e-9), st.route
        embed = [p for n, p in exported.embed_anchor.named_parameters() if not n.startswith(("norm.", "head."))]
        extra = [exported.finish_anchor.norm, exported.finish_anchor.head] if mode == "classify" else [
            exported.projections]  # a projection may also be a link of the route: count it once
        params = _numel(embed, exported.layers, *extra)
        assert table.params_m[st.id] == pytest.approx((params + 1000) / 1e6, abs=2e-6), st.route
    fast, slow = net.space.anchor_ids()
    assert table.gflops[fast] < min(table.gflops.values()) + 1e-12 < table.gflops[slow]


class _Run(torch.nn.Module):
    """An exported stitch as the table counts it: dense features, or classification."""

    def __init__(self, exported, mode):
        super().__init__()
        self.exported, self.mode = exported, mode

    def forward(self, x):
        if self.mode == "classify":
            return self.exported.classify(x)
        out = self.exported(x)
        return (out.tokens, *out.features)


def _numel(params, *modules):
    unique = {id(p): p for p in params}
    unique.update({id(p): p for m in modules for p in m.parameters()})
    return sum(p.numel() for p in unique.values())


def test_attention_is_counted_and_deit3_matches_published_flops():
    """DeiT3-S / DeiT3-L at 224: 4.6 / 61.6 GFLOPs (DeiT3 paper; fvcore counts multiply-adds)."""
    small = build_anchor("deit3_small_patch16_224", num_classes=1000)
    assert count_gflops(small, (torch.zeros(1, 3, 224, 224),)) == pytest.approx(4.6, abs=0.05)
    large = build_anchor("deit3_large_patch16_224", num_classes=1000)
    net = StitchedViT(small, large)
    table = build_flops_table(net, (224, 224), mode="classify")
    assert table.gflops[0] == pytest.approx(4.6, abs=0.05)
    assert table.gflops[1] == pytest.approx(61.6, abs=0.1)
    assert table.params_m[0] == pytest.approx(22.1, abs=0.1) and table.params_m[1] == pytest.approx(304.4, abs=0.2)
    assert len(table.gflops) == 134


def test_table_is_cached_by_anchors_size_and_head(tmp_path, monkeypatch):
    net = tiny_snnet()
    first = build_flops_table(net, (32, 32), cache_dir=str(tmp_path), head_key="head-a")

    def no_trace(*args, **kwargs):
        raise AssertionError("the cached table should not be recounted")

    with monkeypatch.context() as m:
        m.setattr(flops_module, "flop_counter", no_trace)
        again = build_flops_table(net, (32, 32), cache_dir=str(tmp_path), head_key="head-a")
        assert again.gflops == first.gflops and again.params_m == first.params_m
        with pytest.raises(AssertionError, match="recounted"):
            build_flops_table(net, (48, 32), cache_dir=str(tmp_path), head_key="head-a")
        with pytest.raises(AssertionError, match="recounted"):
            build_flops_table(net, (32, 32), cache_dir=str(tmp_path), head_key="head-b")
        with pytest.raises(AssertionError, match="recounted"):
            build_flops_table(tiny_snnet(lora_rank=2), (32, 32), cache_dir=str(tmp_path), head_key="head-a")
    (cache,) = tmp_path.glob("flops_*.json")
    cache.write_text("{ truncated")
    assert build_flops_table(net, (32, 32), cache_dir=str(tmp_path), head_key="head-a").gflops == first.gflops


def paper_like_gflops():
    """GFLOPs of the 134 DeiT3-S/L stitches from per-block costs (S block 0.38, L block 2.57 at 224)."""
    space = StitchSpace(12, 24)
    return {s.id: 0.15 + 0.38 * s.num_blocks()[0] + 2.57 * s.num_blocks()[1] for s in space}


def test_ros_bins_are_drawn_uniformly():
    gflops = paper_like_gflops()
    sampler = ResourceConstrainedSampler(gflops, step=1.0, seed=0)
    bins = flops_bins(gflops, 1.0)
    assert sum(len(ids) for ids in bins) == 134 and len(bins) == 13
    bin_of = {sid: b for b, ids in enumerate(bins) for sid in ids}
    draws = [sampler.sample(i) for i in range(30000)]
    per_bin = np.bincount([bin_of[d] for d in draws], minlength=len(bins))
    assert chisquare(per_bin).pvalue > 1e-3  # uniform over bins
    # within the most populated bin, stitches are uniform too
    big = max(bins, key=len)
    inside = np.array([sum(1 for d in draws if d == sid) for sid in big])
    assert chisquare(inside).pvalue > 1e-3
    # anchors sit in sparse bins: ROS samples them far more than uniform sampling (2/134)
    anchor_share = sum(1 for d in draws if d in (0, 1)) / len(draws)
    assert anchor_share > 4 * 2 / 134
    probs = sampler.probabilities()
    assert sum(probs.values()) == pytest.approx(1.0)
    # and the uniform sampler is not: its bins follow the stitch counts
    uniform = UniformSampler(list(gflops), seed=0)
    per_bin_u = np.bincount([bin_of[uniform.sample(i)] for i in range(30000)], minlength=len(bins))
    assert chisquare(per_bin_u).pvalue < 1e-6


def test_ros_bins_group_greedily_from_each_bins_cheapest_stitch():
    """A bin holds every stitch within ``step`` of its first member, whatever a fixed grid would say."""
    gflops = {7: 8.8, 3: 10.6, 5: 9.2, 0: 1.0, 1: 30.0, 4: 20.5, 2: 19.4, 6: 8.8}
    assert flops_bins(gflops, 2.0) == [[0], [6, 7, 5, 3], [2, 4], [1]]  # a grid of 2 would split 8.8 | 9.2
    assert flops_bins(gflops, 1.2) == [[0], [6, 7, 5], [3], [2, 4], [1]]
    assert flops_bins(gflops, 100.0) == [[0, 6, 7, 5, 3, 2, 4, 1]]


@pytest.mark.parametrize("img_size, mode, step", [((224, 224), "classify", 1.0), ((480, 640), "features", 10.0)])
def test_ros_gives_the_papers_13_bins_for_deit3_s_l(img_size, mode, step):
    """Paper Sec. 4.2: 13 FLOPs intervals for DeiT3-S/L (anchor probability 2/13), t = 1 on ImageNet, t = 10 for
    dense prediction. Counted by fvcore on the real architectures (random weights); a dense head adds the same
    GFLOPs to every stitch, which leaves the bins unchanged."""
    classes = 1000 if mode == "classify" else 0
    fast, slow = (build_anchor(name, img_size=img_size, num_classes=classes)
                  for name in ("deit3_small_patch16_224", "deit3_large_patch16_224"))
    net = StitchedViT(fast, slow, lora_rank=4, out_indices=(4, 11, 17, 23))
    gflops = build_flops_table(net, img_size, mode=mode).gflops
    bins = flops_bins(gflops, step)
    assert [len(ids) for ids in bins] == [1] + [12] * 11 + [1]
    assert bins[0] == [0] and bins[-1] == [1]  # each anchor alone in its bin
    probs = ResourceConstrainedSampler(gflops, step).probabilities()
    assert probs[0] == probs[1] == pytest.approx(1 / 13)
    assert flops_bins({k: g + 122.5 for k, g in gflops.items()}, step) == bins


def _rank_draws(rank: int):
    random.seed(rank)
    np.random.seed(rank)
    torch.manual_seed(rank)
    sampler = ResourceConstrainedSampler(paper_like_gflops(), step=10.0, seed=42)
    return [sampler.sample(i) for i in range(500)]


def test_every_rank_draws_the_same_stitch_and_resume_repeats_the_sequence():
    with mp.get_context("spawn").Pool(2) as pool:
        rank0, rank1 = pool.map(_rank_draws, [0, 1])
    assert rank0 == rank1
    assert len(set(rank0)) > 50  # it does vary across iterations
    resumed = ResourceConstrainedSampler(paper_like_gflops(), step=10.0, seed=42)
    assert [resumed.sample(i) for i in range(250, 500)] == rank0[250:]
    assert ResourceConstrainedSampler(paper_like_gflops(), step=10.0, seed=43).sample(0) is not None
    other_seed = [ResourceConstrainedSampler(paper_like_gflops(), 10.0, seed=43).sample(i) for i in range(500)]
    assert other_seed != rank0


def test_sampler_state_round_trip_and_validation():
    s = ResourceConstrainedSampler({0: 1.0, 1: 9.0, 2: 5.0}, step=2.0, seed=7)
    t = ResourceConstrainedSampler({0: 1.0, 1: 9.0, 2: 5.0}, step=2.0, seed=0)
    t.load_state_dict(s.state_dict())
    assert [t.sample(i) for i in range(20)] == [s.sample(i) for i in range(20)]
    with pytest.raises(ValueError, match="does not match"):
        UniformSampler([0, 1]).load_state_dict(s.state_dict())
    with pytest.raises(ValueError, match="3 ROS bins but this sampler has 2"):
        ResourceConstrainedSampler({0: 1.0, 1: 9.0, 2: 5.0}, step=5.0).load_state_dict(s.state_dict())
    with pytest.raises(ValueError, match="positive"):
        flops_bins({0: 1.0}, 0)
    with pytest.raises(ValueError, match="positive"):
        flops_bins({0: 1.0}, float("nan"))
    with pytest.raises(ValueError, match="empty"):
        UniformSampler([])


def test_build_sampler_gives_ros_or_uniform_over_the_given_stitches_and_names_a_bad_key():
    gflops = {0: 1.0, 1: 9.0, 2: 5.0, 5: 5.5}
    ros, uniform = build_sampler("ros", gflops, 2.0, seed=3), build_sampler("uniform", gflops, 2.0, seed=3)
    assert type(ros) is ResourceConstrainedSampler and ros.bins == [[0], [2, 5], [1]]
    assert type(uniform) is UniformSampler and uniform.stitch_ids == [0, 1, 2, 5]
    assert [uniform.sample(i) for i in range(30)] == [UniformSampler([0, 1, 2, 5], 3).sample(i) for i in range(30)]
    assert describe_sampler(ros, ("anchor", "FS")) == ("ROS over 4 stitches (route types anchor, FS) in 3 FLOPs bins "
                                                       "of 2 GFLOPs")
    assert describe_sampler(uniform, ("anchor", "FS")) == "uniform sampling over 4 stitches (route types anchor, FS)"
    with pytest.raises(ValueError, match=r"snnet.sampling='random': choose ros \(SN-Netv2\) or uniform"):
        build_sampler("random", gflops, 2.0, key="snnet.sampling")


def test_pareto_frontier_and_budget_on_hand_made_points():
    cost = {0: 1.0, 1: 2.0, 2: 2.0, 3: 3.0, 4: 4.0, 5: 5.0}
    acc = {0: 50.0, 1: 55.0, 2: 60.0, 3: 58.0, 4: 70.0, 5: 70.0}
    assert pareto_frontier(cost, acc) == [0, 2, 4]
    err = {k: -v for k, v in acc.items()}
    assert pareto_frontier(cost, err, higher_is_better=False) == [0, 2, 4]
    assert best_under_budget(cost, acc, 3.5) == 2
    assert best_under_budget(cost, acc, 10) == 4  # tie at 70: the cheaper
    assert best_under_budget(cost, err, 3.5, higher_is_better=False) == 2
    with pytest.raises(ValueError, match="cheapest costs 1"):
        best_under_budget(cost, acc, 0.5)


def test_table_follows_the_anchors_input_channels():
    """e.g. grayscale digits: the probe image must have the anchors' channel count."""
    net = tiny_snnet(img_size=32, anchor_kwargs={"in_chans": 1})
    table = build_flops_table(net, (32, 32), mode="features")
    direct = count_gflops(_Run(export_stitch(net, 7), "features"), (torch.zeros(1, 1, 32, 32),))
    assert table.gflops[7] == pytest.approx(direct, rel=1e-9)


def _tamper_cases():
    """(description, edit of the cache's parsed JSON) -> the edited cache must be recounted, not used."""
    def edit_value(d):
        d["gflops"]["3"] *= 0.5  # plausible, but not what the model costs
    return [
        ("a JSON list", lambda d: [d]),
        ("a stitch removed", lambda d: d["gflops"].pop("3") and d),
        ("a foreign stitch", lambda d: d["params_m"].update({"999": 1.0}) or d),
        ("NaN stored as null", lambda d: d["gflops"].update({"2": None}) or d),
        ("a negative count", lambda d: d["params_m"].update({"2": -1.0}) or d),
        ("a string count", lambda d: d["gflops"].update({"2": "1.5"}) or d),
        ("another head cost", lambda d: d.update(head_gflops=d["head_gflops"] + 1.0) or d),
        ("an edited value", lambda d: edit_value(d) or d),
        ("a missing field", lambda d: d.pop("checksum") and d),
        ("an old format", lambda d: d.update(version=1) or d),
    ]


@pytest.mark.parametrize("case", range(len(_tamper_cases())))
def test_a_tampered_flops_cache_is_recounted_with_a_warning(tmp_path, monkeypatch, caplog, case):
    import json

    what, tamper = _tamper_cases()[case]
    net = tiny_snnet()
    first = build_flops_table(net, (32, 32), cache_dir=str(tmp_path), head_gflops=0.5, head_key="h")
    (cache,) = tmp_path.glob("flops_*.json")
    intact = cache.read_text()
    cache.write_text(json.dumps(tamper(json.loads(intact))))
    traces = []
    real = flops_module.flop_counter
    monkeypatch.setattr(flops_module, "flop_counter", lambda *a: traces.append(1) or real(*a))
    again = build_flops_table(net, (32, 32), cache_dir=str(tmp_path), head_gflops=0.5, head_key="h")
    assert traces == [1], f"{what}: the cache was used as is"
    assert again.gflops == first.gflops and again.params_m == first.params_m
    assert f"FLOPs cache {cache} " in caplog.text and "recounting and rewriting it" in caplog.text
    assert cache.read_text() == intact  # rewritten: the next run reads it without recounting


def test_counting_leaves_the_random_state_as_it_was(tmp_path):
    """A cold table (counted) and a warm one (read from the cache) leave torch's RNG at the same state, so a
    seeded training draws the same weights and stitches whether or not ``flops_cache/`` exists."""
    net = tiny_snnet(img_size=64)
    states = []
    for _ in ("cold", "warm"):
        torch.manual_seed(0)
        build_flops_table(net, (48, 64), cache_dir=str(tmp_path))
        states.append(torch.get_rng_state())
    torch.manual_seed(0)
    assert torch.equal(states[0], states[1]) and torch.equal(states[0], torch.get_rng_state())


def test_non_finite_flops_are_refused_naming_the_stitches():
    """NaN compares false with everything: it used to open a bin of its own, drawn as often as a real one."""
    gflops = {0: 1.0, 1: float("nan"), 2: 2.5, 3: float("inf"), 4: -1.0}
    with pytest.raises(ValueError, match=r"stitches \[1, 3, 4\] no finite, non-negative GFLOPs"):
        flops_bins(gflops, 1.0)
    with pytest.raises(ValueError, match=r"stitches \[1, 3, 4\]"):
        ResourceConstrainedSampler(gflops, 1.0)
