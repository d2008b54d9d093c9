"""Fast version of ``benchmarks/stitching_study.py`` (issue 21): the study's mechanics end to end.

The benchmark's own ``run_study`` runs on a tiny Fashion-MNIST written here in the official IDX format, with tiny
anchors, a few SN-Net iterations and two seeds (about 10 s of CPU). The assertions are about mechanics (reading the
IDX files and refusing bad ones, the fixed subsets, augmentation drawn per epoch, iteration counts, the results
files and their measures read back by ``benchmarks/frontier_measures.py``, the arms' recipes for the classification
project's training, the files written), never about the scientific verdict, which only the full run can give.
"""
import dataclasses
import gzip
import json
import math
import shutil
import struct

import numpy as np
import pytest
import torch

from tests.conftest import load_benchmark

ss = load_benchmark("stitching_study")
fm = load_benchmark("frontier_measures")
STUDY = ss.StudyConfig(fast=ss.AnchorConfig(embed_dim=8, depth=3, num_heads=2, epochs=2),
                       slow=ss.AnchorConfig(embed_dim=16, depth=3, num_heads=2, epochs=2),
                       train_size=200, test_size=50, snnet_iterations=12, batch_size=32)
SEEDS = (0, 1)
STEPS = 200 // 32  # the classification project's loader drops the last, partial batch


def write_idx(path, array, kind):
    """``array`` (uint8) as a gzip-compressed IDX file of MNIST's format."""
    header = struct.pack(f">{1 + array.ndim}I", ss.IDX_MAGIC[kind], *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def write_fashion_mnist(root, n_train=300, n_test=120, seed=0):
    """A tiny Fashion-MNIST in the official file names and format: class ``c`` is a bright bar at row ``2c``."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test)):
        labels = np.arange(n) % 10
        images = rng.integers(0, 60, (n, 28, 28))
        for i, c in enumerate(labels):
            images[i, 2 * c:2 * c + 3, 4:24] = 255
        write_idx(root / ss.IDX_FILES[split][0], images, "images")
        write_idx(root / ss.IDX_FILES[split][1], labels, "labels")
    return root


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return write_fashion_mnist(tmp_path_factory.mktemp("fashion"))


@pytest.fixture(scope="module")
def study(tmp_path_factory, data_root):
    output = tmp_path_factory.mktemp("study")
    authors = output / "authors.txt"  # a stand-in for the authors' table, in its format (FLOPs, acc1 in %)
    authors.write_text("".join(json.dumps({"cfg_id": i, "acc1": acc, "flops": flops}) + "\n" for i, (acc, flops) in
                               enumerate([(80.0, 1e9), (90.0, 5e9), (86.0, 2e9), (84.0, 4.5e9)])))
    return ss.run_study(STUDY, SEEDS, str(output / "out"), None, str(data_root)), output / "out", authors


def load(data_root):
    return ss.load_fashion_mnist(str(data_root), STUDY.train_size, STUDY.test_size, STUDY.max_shift)


def test_fixed_balanced_subsets_and_fresh_augmentation(data_root):
    a, b = load(data_root), load(data_root)
    assert torch.equal(a.test_x, b.test_x) and torch.equal(a.train_x, b.train_x)
    assert a.train_x.shape == (200, 1, 28, 28) and a.test_x.shape == (50, 1, 28, 28)
    assert torch.bincount(a.train_y).tolist() == [20] * 10 and torch.bincount(a.test_y).tolist() == [5] * 10
    assert float(a.train_x.min()) == 0.0 and float(a.train_x.max()) == 1.0  # clean pixels; standardised on use
    x1, _ = next(a.batches(16, 1, seed=0))
    x2, _ = next(a.batches(16, 1, seed=1))
    assert x1.shape == (16, 1, 28, 28) and not torch.equal(x1, x2)
    assert [len(y) for _, y in a.batches(64, 5, seed=0)] == [64, 64, 64, 8, 64]  # 5 iterations


def test_augmentation_flips_and_shifts_within_bounds(data_root):
    data = load(data_root)
    clean = data.train_x[:64]
    out = data.augment(torch.arange(64), torch.Generator().manual_seed(0)) * data.std + data.mean
    for i in range(64):
        image = out[i, 0]
        matches = [(dx, dy, flip) for flip in (False, True) for dx in range(-2, 3) for dy in range(-2, 3)
                   if torch.allclose(image, shift(clean[i, 0].flip(-1) if flip else clean[i, 0], dx, dy), atol=1e-5)]
        assert matches, f"image {i} is no flip/shift of its clean image by at most 2 pixels"


def shift(image, dx, dy):
    """``image`` translated by (dx, dy) pixels, zeros shifted in."""
    out = torch.zeros_like(image)
    h, w = image.shape
    out[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = image[max(-dy, 0):h - max(dy, 0),
                                                                      max(-dx, 0):w - max(dx, 0)]
    return out


def test_missing_or_corrupt_files_are_named(tmp_path, data_root):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        ss.read_split(str(tmp_path), "train")
    root = write_fashion_mnist(tmp_path / "bad")
    images = root / ss.IDX_FILES["train"][0]
    images.write_bytes(gzip.compress(gzip.decompress(images.read_bytes())[:-100]))
    with pytest.raises(ValueError, match="truncated or corrupt") as err:
        ss.read_split(str(root), "train")
    assert str(images) in str(err.value)
    write_idx(images, np.zeros((300, 28, 28)), "labels")  # an image file with the labels' magic number
    with pytest.raises(ValueError, match="is not that of IDX images"):
        ss.read_split(str(root), "train")
    with pytest.raises(ValueError, match="not a multiple of the 10 classes"):
        ss.load_fashion_mnist(str(data_root), 105, None, 2)


def test_study_files_and_anchors(study):
    result, output, _ = study
    assert {p.name for p in output.iterdir()} == set(ss.STUDY_OUTPUTS)
    assert json.loads((output / "summary.json").read_text())["seeds"] == list(SEEDS)
    for name, cfg in (("fast", STUDY.fast), ("slow", STUDY.slow)):
        row = result["anchors"][name]  # trained once, for its epochs (convergence: --anchor-trials)
        assert (row["epochs"], row["iterations"]) == (cfg.epochs, cfg.epochs * math.ceil(200 / 32))
        assert 0 <= row["acc"] <= 100 and row["cpu_s"] > 0
    assert "Verdict:" in (output / "summary.md").read_text()


@pytest.mark.parametrize("arm", list(ss.ARMS))
def test_every_run_writes_results_whose_measures_the_script_reads(study, arm):
    result, output, _ = study
    space = ss.StitchSpace(STUDY.fast.depth, STUDY.slow.depth)
    for seed, run in zip(SEEDS, result["runs"][arm]):
        counts = run["iterations_per_stitch"]
        assert sorted(counts) == space.ids
        epochs = max(1, round(STUDY.snnet_iterations / STEPS)) * ss.ARMS[arm].iterations_factor
        assert sum(counts.values()) == run["iterations"] == STEPS * epochs == STEPS * run["epochs"]
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


def test_arms_change_one_thing_each(data_root):
    data = load(data_root)
    anchors = tuple(ss.build_study_anchor(c).eval() for c in (STUDY.fast, STUDY.slow))
    table = ss.flops_table(anchors)
    train_set = ss.AugmentedTrainSet(data, seed=0)
    recipes = {name: ss.snnet_recipe(STUDY, arm, table, STEPS, seed=0) for name, arm in ss.ARMS.items()}
    base = recipes["v2"]
    assert (base.sampling, base.distillation["type"], base.ls_init_images, base.opt) == ("ros", "none", 100, "adamw")
    assert base.epochs == round(STUDY.snnet_iterations / STEPS) and recipes["v2-2x"].epochs == 2 * base.epochs
    changed = {name: {k for k, v in r.to_dict().items() if v != base.to_dict()[k]} for name, r in recipes.items()}
    assert changed.pop("v2-2x") - {"warmup_epochs"} == {"epochs"}  # the warm-up stays 10% of the epochs
    assert changed == {"v2": set(), "full-sl": set(), "default-init": {"ls_init_images"}, "uniform": {"sampling"},
                       "distill": {"distillation"}}
    assert recipes["distill"].distillation["type"] == "soft" and recipes["default-init"].ls_init_images == 0
    nets = {name: ss.build_snnet(anchors, STUDY, ss.ARMS[name], recipes[name], train_set)
            for name in ("v2", "full-sl", "default-init")}
    layer = {name: net.stitch_s2l[0] for name, net in nets.items()}
    assert layer["v2"].rank == STUDY.lora_rank and not layer["v2"].weight.requires_grad
    assert layer["full-sl"].rank == 0 and layer["full-sl"].weight.requires_grad
    assert torch.equal(layer["v2"].weight, layer["full-sl"].weight)  # both least-squares initialised
    assert not torch.allclose(layer["v2"].weight, layer["default-init"].weight)


def test_train_set_draws_fresh_augmentation_per_epoch(data_root):
    data = load(data_root)
    train_set = ss.AugmentedTrainSet(data, seed=0)
    first = torch.stack([train_set[i][0] for i in range(10)])  # 50 flip/shift draws each: compare ten items
    assert first.shape == (10, 1, 28, 28) and train_set[5][1] == int(data.train_y[5])
    assert torch.equal(train_set[5][0], first[5])  # an item is a function of (seed, epoch, index)
    train_set.set_epoch(1)
    assert not torch.equal(torch.stack([train_set[i][0] for i in range(10)]), first)
    other_seed = ss.AugmentedTrainSet(data, seed=1)
    assert not torch.equal(torch.stack([other_seed[i][0] for i in range(10)]), first)


def test_verdict_and_factor_effects_on_hand_made_measures():
    holds = {"frontier_above_line": 2, "frontier_points": 3, "bin_gap": [0.0, 1.0, 0.5, 0.2, 0.1]}
    assert ss.frontier_holds(holds)
    assert ss.frontier_holds(dict(holds, bin_gap=[None, 1.0, 0.5, 0.2, None]))  # empty bins: the space's, not judged
    assert "(2 of 5 bins hold no stitch)" in ss.claim_text(dict(holds, bin_gap=[None, 1.0, 0.5, 0.2, None]))
    assert not ss.frontier_holds(dict(holds, bin_gap=[None] * 5))
    assert not ss.frontier_holds(dict(holds, bin_gap=[-0.1, 1.0, 0.5, 0.2, 0.1]))
    assert not ss.frontier_holds(dict(holds, frontier_above_line=0))
    assert "4/5 bins with the best stitch on or above" in ss.claim_text(dict(holds, bin_gap=[-0.1, 1.0, 0.5, 0.2, 0.1]))

    def run(above, gaps, share):
        return {"measures": {"frontier_above_line": above, "bin_gap": gaps, "share_between": share}}

    runs = {"v2": [run(1, [0.0, 1.0], 0.5), run(2, [1.0, None], 0.5)],
            "x": [run(2, [1.0, 2.0], 0.5), run(1, [3.0, None], 0.25)]}
    effect = ss.factor_effects(runs)["x"]
    assert effect["frontier_above_line"]["per_seed"] == [1, -1] and effect["frontier_above_line"]["up"] == 1
    assert effect["mean_bin_gap"]["per_seed"] == [1.0, 2.0] and effect["mean_bin_gap"]["up"] == 2
    assert effect["share_between"]["down"] == 1 and effect["share_between"]["mean"] == pytest.approx(-0.125)


def test_report_only_judges_the_stored_runs_again(study, capsys):
    result, output, authors = study
    (output / "summary.md").unlink()
    again = ss.main(["--output-dir", str(output), "--report-only", "--authors-table", str(authors)])
    assert again["verdict"][1:] == result["verdict"] and again["verdict"][0].startswith("Authors' DeiT3-S/L table")
    assert "Verdict:" in (output / "summary.md").read_text() and "| `v2` |" in capsys.readouterr().out
    with pytest.raises(SystemExit):  # a full run refuses to replace the stored one unasked
        ss.main(["--output-dir", str(output)])


def test_figure_beside_the_authors_table(study, drawn_figures, tmp_path):
    result, _, authors = study
    ss.plot(result, str(tmp_path / "frontier.png"), str(authors))
    (left, right), = [fig.axes for fig in drawn_figures]
    assert "authors" in left.get_title() and "this study" in right.get_title()
    for ax, n in ((left, 4), (right, len(result["runs"]["v2"][0]["per_stitch"]))):
        labels = [t.get_text() for t in ax.get_legend().get_texts()]
        assert {"Pareto frontier", "line joining the anchors"} <= set(labels)
        assert sum(lab.startswith(("small anchor", "large anchor")) for lab in labels) == 2
        dots = sum(len(c.get_offsets()) for c in ax.collections)  # route-type dots plus the two anchor stars
        assert dots == n


def test_resume_trains_only_what_is_missing(study, data_root, tmp_path, monkeypatch):
    result, output, _ = study
    copy = tmp_path / "out"
    shutil.copytree(output, copy)
    (copy / "runs" / "full-sl" / "seed1" / "run.json").unlink()  # as if killed while training this run
    (copy / "summary.json").unlink()
    monkeypatch.setattr(ss, "train_anchor", lambda *a, **k: pytest.fail("the stored anchors are trained again"))
    trained = []
    fit = ss.fit_snnet
    monkeypatch.setattr(ss, "fit_snnet", lambda net, *a, **k: trained.append(net) or fit(net, *a, **k))
    again = ss.run_study(STUDY, SEEDS, str(copy), None, str(data_root))
    assert len(trained) == 1 and again["runs"]["full-sl"][1].get("resumed") is None
    assert all(r["resumed"] for name, rs in again["runs"].items() for r in rs if r is not again["runs"]["full-sl"][1])
    assert again["runs"]["full-sl"][1]["per_stitch"] == result["runs"]["full-sl"][1]["per_stitch"]  # deterministic
    assert {k: r["acc"] for k, r in again["anchors"].items()} == {k: r["acc"] for k, r in result["anchors"].items()}
    assert again["verdict"] == result["verdict"]
    with pytest.raises(ValueError, match="other settings \\(lora_rank\\)"):
        ss.run_study(dataclasses.replace(STUDY, lora_rank=2), SEEDS, str(copy), None, str(data_root))
    with pytest.raises(SystemExit):  # --overwrite and --resume exclude each other
        ss.main(["--output-dir", str(copy), "--resume", "--overwrite"])


def test_anchor_trials_tabulate_and_keep_their_rows(data_root, tmp_path, capsys):
    argv = ["--anchor-trials", "2x8", "--trial-epochs", "1", "2", "--train-size", "100", "--test-size", "50", "--data-root",
            str(data_root), "--output-dir", str(tmp_path)]
    rows = ss.main(argv)["trials"]
    assert [(r["depth"], r["width"], r["epochs"], r["train_images"]) for r in rows] == [(2, 8, 1, 100), (2, 8, 2, 100)]
    table = (tmp_path / "anchor_trials.md").read_text()
    gain = rows[1]["acc"] - rows[0]["acc"]
    assert f"| 100 | 2 blocks x 8 | {rows[0]['gflops'] * 1e3:.2f} | {rows[0]['acc']:.2f} | " \
           f"{rows[1]['acc']:.2f} ({gain:+.2f}) |" in table
    again = ss.main(argv + ["--anchor-trials", "2x8", "3x8"])["trials"]  # the stored rows are not trained again
    assert again[:2] == rows and [(r["depth"], r["epochs"]) for r in again[2:]] == [(3, 1), (3, 2)]
    with pytest.raises(SystemExit):
        ss.main(["--anchor-trials", "4by32", "--data-root", str(data_root), "--output-dir", str(tmp_path)])


def test_anchor_epochs_changes_only_the_anchors_training(tmp_path, monkeypatch):
    called = []
    monkeypatch.setattr(ss, "run_study", lambda study, *a: called.append(study))
    ss.main(["--output-dir", str(tmp_path), "--anchor-epochs", "480"])
    default = ss.StudyConfig()
    assert called == [dataclasses.replace(default, fast=dataclasses.replace(default.fast, epochs=480),
                                          slow=dataclasses.replace(default.slow, epochs=480))]
    with pytest.raises(SystemExit):
        ss.main(["--output-dir", str(tmp_path), "--anchor-epochs", "0"])
