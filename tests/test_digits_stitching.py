"""Fast version of ``benchmarks/digits_stitching.py`` (issues #5, #13): the study's mechanics end to end.

The benchmark's own ``run_study`` runs with tiny anchors and budgets (about a minute on one thread). The
assertions are about mechanics (data, iteration counts, per-stitch scoring, frontier measures, files), never
about the scientific verdict, which only the full run can give.
"""
import importlib.util
import json
import pathlib
import sys

import numpy as np
import pytest
import torch


def _load_benchmark():
    """``benchmarks/`` is not an installed package: load the benchmark module from its file."""
    path = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "digits_stitching.py"
    spec = importlib.util.spec_from_file_location("digits_stitching", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module's annotations through sys.modules
    spec.loader.exec_module(module)
    return module


ds = _load_benchmark()
STUDY = ds.StudyConfig(fast=ds.AnchorConfig(embed_dim=8, depth=3, num_heads=2, epochs=6),
                       slow=ds.AnchorConfig(embed_dim=16, depth=3, num_heads=2, epochs=6),
                       test_draws=1, snnet_iterations=40, snnet_evals=2, batch_size=64)
SEEDS = (0, 1)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    output = tmp_path_factory.mktemp("digits")
    return ds.run_study(STUDY, SEEDS, str(output)), output


def test_noisy_digits_fixed_test_set_fresh_train_noise():
    a = ds.load_noisy_digits(0.3, 2)
    b = ds.load_noisy_digits(0.3, 2)
    assert torch.equal(a.test_x, b.test_x) and len(a.test_x) == 2 * 450 and len(a.train_x) == 1347
    x1, y1 = next(a.batches(16, 1, seed=0))
    x2, y2 = next(a.batches(16, 1, seed=1))
    assert x1.shape == (16, 1, 8, 8) and not torch.equal(x1, x2)
    assert [len(y) for _, y in a.batches(500, 5, seed=0)] == [500, 500, 347, 500, 500]  # 5 iterations


def test_study_files_and_records(study):
    result, output = study
    assert {p.name for p in output.iterdir()} == {"summary.json", "summary.md", "frontier.png"}
    on_disk = json.loads((output / "summary.json").read_text())
    assert len(on_disk["verdicts"]) == len(result["verdicts"]) == 7
    assert all(isinstance(v["holds"], bool) and any(c.isdigit() for c in v["evidence"]) for v in result["verdicts"])
    for name in ("fast", "slow"):
        row = result["anchors"][name]
        assert len(row["curve"]) == row["epochs"] and row["acc"] == row["curve"][-1]["acc"]
        assert row["curve"][-1]["train_loss"] < row["curve"][0]["train_loss"]  # anchor training fits


@pytest.mark.parametrize("arm", list(ds.ARMS))
def test_arm_budgets_and_measures(study, arm):
    result, _ = study
    space = ds.StitchSpace(STUDY.fast.depth, STUDY.slow.depth, route_types=ds.ARMS[arm].route_types)
    for run in result["runs"][arm]:
        counts = run["iterations_per_stitch"]
        assert sorted(counts) == space.ids and sum(counts.values()) == STUDY.snnet_iterations
        assert sorted(run["per_stitch"]) == space.ids
        assert all(0.0 <= a <= 1.0 for a in run["per_stitch"].values())
        assert 0.0 <= run["between"] <= 1.0 and run["above_line"] <= run["frontier"] <= len(space) - 2
        # the SN-Net's budget curve starts at its fast anchor and never falls below it
        assert run["auc"] >= run["fast"] and len(run["curve"]) == STUDY.snnet_evals


def test_shared_prefix_scores_equal_stitch_by_stitch(study):
    data = ds.load_noisy_digits(STUDY.noise_std, 1)
    anchors = tuple(ds.build_digits_anchor(c).eval() for c in (STUDY.fast, STUDY.slow))
    net = ds.build_snnet(anchors, STUDY, ds.ARMS["v2"], data, seed=0)
    scores = ds.stitch_accuracies(net, data, batch_size=300)
    with torch.no_grad():
        one_by_one = {sid: float((net.classify(data.test_x, sid).argmax(1) == data.test_y).float().mean())
                      for sid in net.space.ids}
    assert scores == pytest.approx(one_by_one, abs=1.5 / len(data.test_y))


def test_frontier_measures_on_a_hand_made_frontier():
    gflops = {0: 1.0, 1: 3.0, 2: 2.0, 3: 2.5, 4: 1.5}
    acc = {0: 0.6, 1: 0.9, 2: 0.85, 3: 0.7, 4: 0.5}  # 2 above the line, 3 between but below it, 4 below fast
    m = ds.frontier_measures(acc, gflops, alone=(0.6, 0.9))
    assert (m["between"], m["below_fast"], m["frontier"], m["above_line"]) == (2 / 3, 1, 1, 1)
    assert m["auc_alone"] == pytest.approx(0.6 + 0.3 / ds.NUM_BUDGETS)
    budgets = np.linspace(1.0, 3.0, ds.NUM_BUDGETS)  # best under a budget: a step function of the budget
    assert m["auc"] == pytest.approx(np.mean([0.6 if b < 2 else 0.85 if b < 3 else 0.9 for b in budgets]))
    assert m["auc_line"] == pytest.approx(0.75)
