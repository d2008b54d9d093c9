"""``--measure-latency`` of the evaluation CLIs: every evaluated stitch timed as deployed on this device into the
``latency_ms`` column (JSON/CSV/Markdown, a plot against latency, the ``"latency"`` entry), which
``python -m snnet_core.select REPORT --max-latency-ms MS`` then budgets; nothing changes without the flag; clear
errors for bad latency options."""
import argparse
import csv
import json
import os

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import LazyConfig, instantiate

from datasets.make_synthetic_coco import make_synthetic_coco
from datasets.make_synthetic_nyu import make_synthetic_nyu
from projects.snnet_dpt import evaluation as dpt_evaluation
from projects.snnet_dpt import train as dpt_train
from projects.snnet_vitdet import evaluation as vitdet_evaluation
from projects.snnet_vitdet import train_net
from projects.snnet_vitdet.evaluation import deployed_detector
from snnet_core import export_stitch, select
from snnet_core.evaluation.latency import LATENCY_COLUMN, LATENCY_KEY, device_name
from snnet_core.evaluation.latency_options import add_latency_arguments, latency_options
from snnet_core.evaluation.report import LATENCY_PLOT, RESULTS_FILE
from tests.test_dpt_train import REPORT as DEPTH_REPORT
from tests.test_dpt_train import cli_args as depth_cli_args

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "projects", "snnet_vitdet", "configs", "synthetic", "mask_rcnn_snnetv2_tiny.py")
FAST_TIMING = ["--latency-warmup", "1", "--latency-runs", "3"]


def latency_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_latency_arguments(parser)
    return parser.parse_args(argv)


def read_report(report_dir):
    with open(os.path.join(report_dir, RESULTS_FILE)) as f:
        record = json.load(f)
    with open(os.path.join(report_dir, "stitch_report.csv")) as f:
        header = next(csv.reader(f))
    with open(os.path.join(report_dir, "stitch_report.md")) as f:
        markdown = f.read()
    return record, header, markdown


def assert_timed_report(report_dir, stitch_ids, device, batch, size):
    """Every stitch has a positive ``latency_ms``; the measurement is described; CSV/MD/plot show it; ``select``
    chooses by it."""
    record, header, markdown = read_report(report_dir)
    assert sorted(map(int, record["stitches"])) == sorted(stitch_ids)
    latencies = {int(k): row[LATENCY_COLUMN] for k, row in record["stitches"].items()}
    assert all(isinstance(ms, float) and ms > 0 for ms in latencies.values()), latencies
    info = record[LATENCY_KEY]
    assert info["device"] == device_name(device) and info["batch"] == batch and info["input_size"] == list(size)
    assert info["amp"] is False and info["runs"] == 3 and info["warmup"] == 1
    assert json.dumps(info, sort_keys=True) in record["run_key"]  # rows timed otherwise never mix in
    assert LATENCY_COLUMN in header and f"| {LATENCY_COLUMN} |" in markdown
    assert os.path.getsize(os.path.join(report_dir, LATENCY_PLOT)) > 0

    budget = sorted(latencies.values())[len(latencies) // 2]  # the median stitch's latency: some fit, some not
    args = [report_dir, "--max-latency-ms", str(budget), "--json"]
    source, rec = select.read_report(report_dir)
    choice = select.choose_stitch(rec, source, max_latency_ms=budget)
    assert choice.cost == LATENCY_COLUMN and choice.chosen[LATENCY_COLUMN] <= budget
    assert choice.latency == info
    assert select.main(args) == 0
    cheapest = min(latencies.values())
    assert select.main([report_dir, "--max-latency-ms", str(cheapest / 2)]) == 2  # nothing fits


def assert_untimed_report(report_dir):
    record, header, markdown = read_report(report_dir)
    assert LATENCY_KEY not in record and "latency" not in record["run_key"]
    assert all(LATENCY_COLUMN not in row for row in record["stitches"].values())
    assert LATENCY_COLUMN not in header and LATENCY_COLUMN not in markdown
    assert not os.path.exists(os.path.join(report_dir, LATENCY_PLOT))
    assert select.main([report_dir, "--max-latency-ms", "1000"]) == 2  # no latency column: a clear refusal


def assert_same_metrics(before, after):
    """``after`` (a report given the latency column) holds ``before``'s rows and metrics unchanged."""
    assert after["stitches"].keys() == before["stitches"].keys()
    for key, row in before["stitches"].items():
        assert {k: v for k, v in after["stitches"][key].items() if k != LATENCY_COLUMN} == row


# --- options -----------------------------------------------------------------------------------------
def test_latency_options_defaults_and_errors():
    cpu = torch.device("cpu")
    assert latency_options(latency_args(), cpu, 16, (128, 128), run_amp=True) is None
    options = latency_options(latency_args("--measure-latency"), cpu, 16, (128, 96), run_amp=True)
    assert (options.batch, options.size, options.amp, options.warmup, options.runs) == (1, (128, 96), False, 10, 50)
    options = latency_options(latency_args("--measure-latency", "--latency-batch", "4", "--latency-size", "64",
                                           "32"), cpu, 16, (128, 96), run_amp=False)
    assert (options.batch, options.size) == (4, (64, 32))
    assert options.run_key().startswith("|latency:") and options.info()["device"] == device_name(cpu)
    with pytest.raises(ValueError, match=r"multiples of the patch size 16, e\.g\. --latency-size 112 128"):
        latency_options(latency_args("--measure-latency", "--latency-size", "100", "128"), cpu, 16, (128, 128), False)
    with pytest.raises(ValueError, match="add --measure-latency"):
        latency_options(latency_args("--latency-batch", "2"), cpu, 16, (128, 128), False)
    with pytest.raises(ValueError, match="--latency-batch 0"):
        latency_options(latency_args("--measure-latency", "--latency-batch", "0"), cpu, 16, (128, 128), False)
    with pytest.raises(ValueError, match="CUDA autocast.*runs on cpu"):
        latency_options(latency_args("--measure-latency", "--latency-amp"), cpu, 16, (128, 128), False)


# --- detection ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def detector(tmp_path_factory):
    """The tiny SN-Net detector (random weights) saved as train_net.py saves it, and 2 synthetic val images."""
    root = tmp_path_factory.mktemp("coco")
    make_synthetic_coco(str(root), num_train=2, num_val=2, image_size=128, seed=0)
    cfg = LazyConfig.load(TINY)
    cfg.train.device = "cpu"
    torch.manual_seed(0)
    model = instantiate(cfg.model).eval()
    with torch.no_grad():
        for name, p in model.backbone.net.named_parameters():
            if name.endswith("lora_up"):  # non-zero LoRA: the deployed route merges it
                p.normal_(std=0.2)
    out = tmp_path_factory.mktemp("run")
    DetectionCheckpointer(model, str(out)).save("model_final")
    return {"root": str(root), "model": model, "weights": str(out / "model_final.pth")}


def run_detection(detector, output_dir, *flags):
    argv = ["--config-file", TINY, "--eval-only", *flags, f"datasets.root={detector['root']}", "train.device=cpu",
            f"train.output_dir={output_dir}", "dataloader.test.num_workers=0",
            f"train.init_checkpoint={detector['weights']}"]
    return train_net.main(train_net.build_argument_parser().parse_args(argv))


@torch.no_grad()
def test_the_timed_detector_is_the_stitch_inside_the_sn_net(detector):
    model = detector["model"]
    inputs = [{"image": torch.randint(0, 256, (3, 128, 128), generator=torch.Generator().manual_seed(1),
                                      dtype=torch.uint8), "height": 128, "width": 128}]
    predictor = model.roi_heads.box_predictor
    threshold, predictor.test_score_thresh = predictor.test_score_thresh, 0.0  # boxes to compare
    try:
        model.backbone.net.set_stitch(9)
        expected = model(inputs)[0]["instances"]
        deployed = deployed_detector(model, export_stitch(model.backbone.net.snnet, 9).eval())(inputs)[0]["instances"]
    finally:
        predictor.test_score_thresh = threshold
    assert len(expected) > 0
    torch.testing.assert_close(deployed.pred_boxes.tensor, expected.pred_boxes.tensor, rtol=0, atol=1e-3)
    torch.testing.assert_close(deployed.scores, expected.scores, rtol=0, atol=1e-4)


def test_detection_eval_only_measures_latency_per_stitch(detector, tmp_path, monkeypatch):
    stitches = [0, 5, 9, 13]
    report = str(tmp_path / "timed")
    record = run_detection(detector, tmp_path, "--stitch", ",".join(map(str, stitches)), "--report-dir", report,
                           "--measure-latency", "--latency-batch", "2", "--latency-size", "96", "128", *FAST_TIMING)
    assert record[LATENCY_KEY]["input_size"] == [96, 128]
    assert_timed_report(report, stitches, "cpu", 2, (96, 128))

    plain = str(tmp_path / "plain")
    run_detection(detector, tmp_path, "--stitch", "0,13", "--report-dir", plain)
    assert_untimed_report(plain)
    untimed = read_report(plain)[0]
    with monkeypatch.context() as patched:  # --measure-latency over it: timed, nothing evaluated again
        for name in ("evaluate_model", "evaluate_stitch_group"):
            patched.setattr(vitdet_evaluation, name, lambda *a, **k: pytest.fail("a stitch was evaluated again"))
        run_detection(detector, tmp_path, "--stitch", "13", "--report-dir", plain, "--measure-latency", *FAST_TIMING)
    assert_timed_report(plain, [0, 13], "cpu", 1, (128, 128))
    assert_same_metrics(untimed, read_report(plain)[0])
    with pytest.raises(RuntimeError, match=r"holds results of another run"):  # timed: other settings are refused
        run_detection(detector, tmp_path, "--stitch", "0", "--report-dir", plain, "--measure-latency",
                      "--latency-batch", "2", *FAST_TIMING)


def test_detection_latency_errors(detector, tmp_path):
    with pytest.raises(ValueError, match="multiples of the patch size 16"):
        run_detection(detector, tmp_path, "--stitch", "0", "--measure-latency", "--latency-size", "100", "128")
    with pytest.raises(ValueError, match="--measure-latency times the stitches of the per-stitch report"):
        run_detection(detector, tmp_path, "--export-stitch", "0", "--measure-latency")
    with pytest.raises(ValueError, match="--measure-latency act on a trained model: add --eval-only"):
        train_net.main(train_net.build_argument_parser().parse_args(
            ["--config-file", TINY, "--measure-latency", f"train.output_dir={tmp_path / 'train'}"]))


# --- depth -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def nyu_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("nyu_synth"))
    make_synthetic_nyu(root, num_train=8, num_test=2, size=(64, 80), seed=0)
    return root


def run_depth(nyu_root, output_dir, *flags, opts=()):
    """train.py on the tiny config at 64x80 (``test_dpt_train.cli_args``), 1 epoch when training."""
    return dpt_train.main(depth_cli_args(nyu_root, output_dir, *flags, opts=[
        "train.epochs=1", "train.ls_init_images=2", "train.loss_warmup_iters=2", *opts]))


def test_depth_training_and_eval_only_measure_latency_per_stitch(nyu_root, tmp_path, monkeypatch):
    out = tmp_path / "run"
    result = run_depth(nyu_root, out, "--stitch", "0,5", "--measure-latency", *FAST_TIMING)  # after training
    assert result["report"][LATENCY_KEY]["input_size"] == [64, 80]  # default: the evaluation (GFLOPs) size
    assert_timed_report(str(out / DEPTH_REPORT), [0, 5], "cpu", 1, (64, 80))

    for share in ("true", "false"):  # grouped and per-stitch evaluation of the checkpoint last_checkpoint names
        eval_dir = tmp_path / f"timed_{share}"
        run_depth(nyu_root, out, "--eval-only", "--stitch", "0,5,9,13", "--report-dir", str(eval_dir),
                  "--measure-latency", "--latency-batch", "2", "--latency-size", "32", "48", *FAST_TIMING,
                  opts=[f"test.share_prefixes={share}"])
        assert_timed_report(str(eval_dir), [0, 5, 9, 13], "cpu", 2, (32, 48))

    plain = tmp_path / "plain"
    run_depth(nyu_root, out, "--eval-only", "--stitch", "0,13", "--report-dir", str(plain))
    assert_untimed_report(str(plain))
    untimed = json.loads((plain / RESULTS_FILE).read_text())
    with monkeypatch.context() as patched:  # --measure-latency over it: timed, nothing evaluated again
        patched.setattr(dpt_evaluation, "evaluate", lambda *a, **k: pytest.fail("a stitch was evaluated again"))
        run_depth(nyu_root, out, "--eval-only", "--stitch", "0", "--report-dir", str(plain), "--measure-latency",
                  *FAST_TIMING)
    assert_timed_report(str(plain), [0, 13], "cpu", 1, (64, 80))
    assert_same_metrics(untimed, json.loads((plain / RESULTS_FILE).read_text()))
    with pytest.raises(RuntimeError, match=r"another model or setting \(latency .*batch.: 1.* there vs .*batch.: 2"):
        run_depth(nyu_root, out, "--eval-only", "--stitch", "0", "--report-dir", str(plain), "--measure-latency",
                  "--latency-batch", "2", *FAST_TIMING)  # a timed report: other latency settings are refused
    with pytest.raises(ValueError, match="multiples of the patch size 16, e.g. --latency-size 64 80"):
        run_depth(nyu_root, out, "--eval-only", "--stitch", "0", "--report-dir", str(tmp_path / "never"),
                  "--measure-latency", "--latency-size", "60", "72")
    assert not (tmp_path / "never").exists()
    with pytest.raises(ValueError, match="not none"):
        run_depth(nyu_root, tmp_path / "none", "--stitch", "none", "--measure-latency")
