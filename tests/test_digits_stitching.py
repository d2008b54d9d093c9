"""Fast version of ``benchmarks/digits_stitching.py`` (issue 21): the study's mechanics end to end.

The benchmark's own ``run_study`` runs with tiny anchors, 30 SN-Net iterations and two seeds (about 10 s of CPU).
The assertions are about mechanics (data, iteration counts, the results files and their measures read back by
``benchmarks/frontier_measures.py``, the arms' recipes for the classification project's training, the files
written), never about the scientific verdict, which only the full run can give.
"""
import json

import pytest
import torch

from tests.conftest import load_benchmark

ds = load_benchmark("digits_stitching")
fm = load_benchmark("frontier_measures")
STUDY = ds.StudyConfig(fast=ds.AnchorConfig(embed_dim=8, depth=3, num_heads=2, epochs=2),
                       slow=ds.AnchorConfig(embed_dim=16, depth=3, num_heads=2, epochs=2),
                       test_draws=1, snnet_iterations=30, batch_size=64)
SEEDS = (0, 1)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    output = tmp_path_factory.mktemp("digits")
    authors = output / "authors.txt"  # a stand-in for the authors' table, in its format (FLOPs, acc1 in %)
    authors.write_text("".join(json.dumps({"cfg_id": i, "acc1": acc, "flops": flops}) + "\n" for i, (acc, flops) in
                               enumerate([(80.0, 1e9), (90.0, 5e9), (86.0, 2e9), (84.0, 4.5e9)])))
    return ds.run_study(STUDY, SEEDS, str(output / "out"), None), output / "out", authors


def test_noisy_digits_fixed_test_set_fresh_train_noise():
    a = ds.load_noisy_digits(0.3, 2)
    b = ds.load_noisy_digits(0.3, 2)
    assert torch.equal(a.test_x, b.test_x) and len(a.test_x) == 2 * 450 and len(a.train_x) == 1347
    x1, _ = next(a.batches(16, 1, seed=0))
    x2, _ = next(a.batches(16, 1, seed=1))
    assert x1.shape == (16, 1, 8, 8) and not torch.equal(x1, x2)
    assert [len(y) for _, y in a.batches(500, 5, seed=0)] == [500, 500, 347, 500, 500]  # 5 iterations


def test_study_files_and_anchors(study):
    result, output, _ = study
    assert {p.name for p in output.iterdir()} == {"summary.json", "summary.md", "frontier.png", "runs"}
    assert json.loads((output / "summary.json").read_text())["seeds"] == list(SEEDS)
    for name, cfg in (("fast", STUDY.fast), ("slow", STUDY.slow)):
        row = result["anchors"][name]  # trained for epochs and, to judge convergence, for twice as many
        assert (row["short"]["epochs"], row["full"]["epochs"]) == (cfg.epochs, 2 * cfg.epochs)
        assert row["acc"] == row["full"]["acc"] and row["doubling_gain"] == row["full"]["acc"] - row["short"]["acc"]
    assert "Verdict:" in (output / "summary.md").read_text()


@pytest.mark.parametrize("arm", list(ds.ARMS))
def test_every_run_writes_results_whose_measures_the_script_reads(study, arm):
    result, output, _ = study
    space = ds.StitchSpace(STUDY.fast.depth, STUDY.slow.depth)
    for seed, run in zip(SEEDS, result["runs"][arm]):
        counts = run["iterations_per_stitch"]
        assert sorted(counts) == space.ids
        epochs = max(1, round(STUDY.snnet_iterations / 21)) * ds.ARMS[arm].iterations_factor  # 21 batches of 64
        assert sum(counts.values()) == run["iterations"] == 21 * epochs == 21 * run["epochs"]
        path = output / "runs" / arm / f"seed{seed}" / "stitch_results.json"
        assert run["results_file"] == str(path.relative_to(output))
        read_back = fm.measure_table(fm.read_table(str(path))).as_dict()
        assert read_back == {k: tuple(v) if k == "bin_gap" else v for k, v in run["measures"].items()}
        record = json.loads(path.read_text())
        assert {int(k): r["acc1"] for k, r in record["stitches"].items()} == run["per_stitch"]
        assert all(0.0 <= a <= 100.0 for a in run["per_stitch"].values())
    summary = result["summary"][arm]
    assert summary["frontier_points"][0] == pytest.approx(
        sum(r["measures"]["frontier_points"] for r in result["runs"][arm]) / len(SEEDS))


def test_arms_change_one_thing_each():
    data = ds.load_noisy_digits(0.3, 1)
    anchors = tuple(ds.build_digits_anchor(c).eval() for c in (STUDY.fast, STUDY.slow))
    table = ds.flops_table(anchors)
    train_set = ds.NoisyTrainSet(data, seed=0)
    recipes = {name: ds.snnet_recipe(STUDY, arm, table, 21, seed=0) for name, arm in ds.ARMS.items()}
    base = recipes["v2"]
    assert (base.sampling, base.distillation["type"], base.ls_init_images, base.opt) == ("ros", "none", 100, "adamw")
    assert base.epochs == round(STUDY.snnet_iterations / 21) and recipes["v2-3x"].epochs == 3 * base.epochs
    changed = {name: {k for k, v in r.to_dict().items() if v != base.to_dict()[k]} for name, r in recipes.items()}
    assert changed.pop("v2-3x") - {"warmup_epochs"} == {"epochs"}  # the warm-up stays 10% of the epochs
    assert changed == {"v2": set(), "full-sl": set(), "default-init": {"ls_init_images"}, "uniform": {"sampling"},
                       "distill": {"distillation"}}
    assert recipes["distill"].distillation["type"] == "soft" and recipes["default-init"].ls_init_images == 0
    nets = {name: ds.build_snnet(anchors, STUDY, ds.ARMS[name], recipes[name], train_set)
            for name in ("v2", "full-sl", "default-init")}
    layer = {name: net.stitch_s2l[0] for name, net in nets.items()}
    assert layer["v2"].rank == STUDY.lora_rank and not layer["v2"].weight.requires_grad
    assert layer["full-sl"].rank == 0 and layer["full-sl"].weight.requires_grad
    assert torch.equal(layer["v2"].weight, layer["full-sl"].weight)  # both least-squares initialised
    assert not torch.allclose(layer["v2"].weight, layer["default-init"].weight)


def test_train_set_draws_fresh_noise_per_epoch():
    data = ds.load_noisy_digits(0.3, 1)
    train_set = ds.NoisyTrainSet(data, seed=0)
    first, label = train_set[5]
    assert first.shape == (1, 8, 8) and label == int(data.train_y[5]) and torch.equal(train_set[5][0], first)
    train_set.set_epoch(1)
    assert not torch.equal(train_set[5][0], first)
    assert not torch.equal(ds.NoisyTrainSet(data, seed=1)[5][0], first)


def test_verdict_and_factor_effects_on_hand_made_measures():
    holds = {"frontier_above_line": 2, "frontier_points": 3, "bin_gap": [0.0, 1.0, 0.5, 0.2, 0.1]}
    assert ds.frontier_holds(holds)
    assert ds.frontier_holds(dict(holds, bin_gap=[None, 1.0, 0.5, 0.2, None]))  # empty bins: the space's, not judged
    assert "(2 of 5 bins hold no stitch)" in ds.claim_text(dict(holds, bin_gap=[None, 1.0, 0.5, 0.2, None]))
    assert not ds.frontier_holds(dict(holds, bin_gap=[None] * 5))
    assert not ds.frontier_holds(dict(holds, bin_gap=[-0.1, 1.0, 0.5, 0.2, 0.1]))
    assert not ds.frontier_holds(dict(holds, frontier_above_line=0))
    assert "4/5 bins with the best stitch on or above" in ds.claim_text(dict(holds, bin_gap=[-0.1, 1.0, 0.5, 0.2, 0.1]))

    def run(above, gaps, share):
        return {"measures": {"frontier_above_line": above, "bin_gap": gaps, "share_between": share}}

    runs = {"v2": [run(1, [0.0, 1.0], 0.5), run(2, [1.0, None], 0.5)],
            "x": [run(2, [1.0, 2.0], 0.5), run(1, [3.0, None], 0.25)]}
    effect = ds.factor_effects(runs)["x"]
    assert effect["frontier_above_line"]["per_seed"] == [1, -1] and effect["frontier_above_line"]["up"] == 1
    assert effect["mean_bin_gap"]["per_seed"] == [1.0, 2.0] and effect["mean_bin_gap"]["up"] == 2
    assert effect["share_between"]["down"] == 1 and effect["share_between"]["mean"] == pytest.approx(-0.125)


def test_report_only_judges_the_stored_runs_again(study, capsys):
    result, output, authors = study
    (output / "summary.md").unlink()
    again = ds.main(["--output-dir", str(output), "--report-only", "--authors-table", str(authors)])
    assert again["verdict"][1:] == result["verdict"] and again["verdict"][0].startswith("Authors' DeiT3-S/L table")
    assert "Verdict:" in (output / "summary.md").read_text() and "| `v2` |" in capsys.readouterr().out
    with pytest.raises(SystemExit):  # a full run refuses to replace the stored one unasked
        ds.main(["--output-dir", str(output)])


def test_figure_beside_the_authors_table(study, drawn_figures, tmp_path):
    result, _, authors = study
    ds.plot(result, str(tmp_path / "frontier.png"), str(authors))
    (left, right), = [fig.axes for fig in drawn_figures]
    assert "authors" in left.get_title() and "this study" in right.get_title()
    for ax, n in ((left, 4), (right, len(result["runs"]["v2"][0]["per_stitch"]))):
        labels = [t.get_text() for t in ax.get_legend().get_texts()]
        assert {"Pareto frontier", "line joining the anchors"} <= set(labels)
        assert sum(lab.startswith(("small anchor", "large anchor")) for lab in labels) == 2
        dots = sum(len(c.get_offsets()) for c in ax.collections)  # route-type dots plus the two anchor stars
        assert dots == n
