"""Fast version of ``benchmarks/digits_stitching.py`` (issue #5): stitching two ViTs trained on real digits.

The benchmark's own functions run with smaller anchors and budgets; every seed trains everything anew
(about 20 s per seed on one thread). Seeds 0-4 were tried; the closest margins were a 66.7% worst stitch
(bound 50%), a 1.1-point anchor drop (bound 3) and anchors at 83.6% (bound 60%).
"""
import importlib.util
import pathlib
import sys

import pytest


def _load_benchmark():
    """``benchmarks/`` is not an installed package: load the benchmark module from its file."""
    path = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "digits_stitching.py"
    spec = importlib.util.spec_from_file_location("digits_stitching", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module's annotations through sys.modules
    spec.loader.exec_module(module)
    return module


ds = _load_benchmark()
STUDY = ds.StudyConfig(fast=ds.AnchorConfig(embed_dim=24, depth=3, num_heads=2),
                       slow=ds.AnchorConfig(embed_dim=48, depth=6, num_heads=3),
                       anchor_epochs=12, snnet_epochs=3)
CHANCE = 1.0 / ds.NUM_CLASSES


@pytest.fixture(scope="module")
def digits():
    return ds.load_digits_split(STUDY.test_size)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_stitching_works_on_digits(digits, seed):
    anchors, rows = ds.train_anchors(STUDY, digits, seed)
    assert rows["fast"]["acc"] > 6 * CHANCE and rows["slow"]["acc"] > 6 * CHANCE, rows

    table = ds.flops_table(anchors)
    init = ds.score_at_init(anchors, STUDY, digits, table, seed)
    assert init["ls"]["mean"] > init["kaiming"]["mean"] + 0.2, (init["ls"]["mean"], init["kaiming"]["mean"])

    trained = ds.run_variant(anchors, STUDY, ds.VARIANTS["v2"], digits, table, seed)
    assert trained["min"] > 5 * CHANCE, trained["per_stitch"]
    for name in ("fast", "slow"):
        assert trained[name] >= rows[name]["acc"] - 0.03, (name, rows[name]["acc"], trained[name])
