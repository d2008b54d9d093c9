"""train_net.py's conventions shared with the depth project: what the console shows and what only log.txt gets,
``--eval-only`` on the checkpoint ``last_checkpoint`` names at the eval input size recorded at training, and
``--overwrite``."""
import itertools
import json
import logging
import os
import re
import subprocess
import sys

import pytest
import torch
from detectron2.config import instantiate

from projects.snnet_vitdet import data, train_net
from snnet_core.d2.checkpoint import StrictDetectionCheckpointer
from snnet_core.training.train_log import route_loss_name
from tests.test_vitdet_train import REPO, TINY, run_main, synthetic, tiny_cfg, tiny_opts  # noqa: F401 (fixture)

COCO_TABLE_LINES = ("Average Precision", "copypaste", "Evaluation results for bbox", "Per-category segm AP",
                    "Running per image evaluation")


def save_checkpoint(cfg, out, **extras):
    """The tiny detector (seeded random weights) as ``out/model_final.pth`` with ``last_checkpoint`` naming it."""
    torch.manual_seed(0)
    os.makedirs(out, exist_ok=True)
    StrictDetectionCheckpointer(instantiate(cfg.model), str(out), extras=extras).save("model_final", iteration=3)
    return os.path.join(str(out), "model_final.pth")


class Records(logging.Handler):
    """Collects the messages of one logger (train_net's loggers do not propagate to pytest's root handler)."""

    def __init__(self, name):
        super().__init__()
        self.logger, self.messages = logging.getLogger(name), []

    def emit(self, record):
        self.messages.append((record.levelname, record.getMessage()))

    def __enter__(self):
        self.logger.addHandler(self)
        return self.messages

    def __exit__(self, *exc):
        self.logger.removeHandler(self)


@pytest.mark.parametrize("mode", ["snnet.eval_share_prefixes=True", "snnet.eval_share_prefixes=False"])
def test_eval_console_has_a_line_per_stitch_and_log_txt_everything(synthetic, tmp_path, mode):  # noqa: F811
    out = tmp_path / "run"
    # score threshold 0: the random detector predicts, so pycocotools evaluates and detectron2 prints its tables
    opts = tiny_opts(synthetic, str(out), "model.roi_heads.box_predictor.test_score_thresh=0.0", mode)
    save_checkpoint(tiny_cfg(synthetic, str(out)), out, eval_size=[128, 128])
    stitches = [0, 13, 1]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONPATH=REPO)
    proc = subprocess.run([sys.executable, os.path.join(REPO, "projects", "snnet_vitdet", "train_net.py"),
                           "--config-file", TINY, "--eval-only", "--stitch", ",".join(map(str, stitches)), *opts],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    console = proc.stdout + proc.stderr
    with open(out / "log.txt") as f:
        log = f.read()

    per_stitch = re.findall(r"snnet_core.evaluation.report\]: stitch +(\d+) ", console)
    assert sorted(map(int, per_stitch)) == sorted(stitches)  # one line per stitch
    assert "Pareto frontier on bbox_AP" in console and "per-stitch report of 3 stitches" in console
    assert f"evaluating {out / 'model_final.pth'}, the checkpoint {out / 'last_checkpoint'} names" in console
    for line in COCO_TABLE_LINES:  # detectron2's and pycocotools' output of each stitch: log.txt only
        assert line not in console, line
        assert line in log, line
    # run-long: the environment report (detectron2._C line) and the model's module tree in log.txt only
    for text in ("Environment info", "detectron2._C", "ViTDetAttention(", "Contents of args.config_file"):
        assert text in log, text
    assert "Environment info" not in console and "ViTDetAttention(" not in console
    for notice in ("not built correctly", "pkg_resources is deprecated", "torch.meshgrid: in an upcoming release",
                   "No CUDA runtime is found", "is_fx_tracing will return true", "Command line arguments:"):
        assert notice not in console, notice
    assert "Command line arguments: Namespace(" in log
    # APl is NaN for every stitch (no large objects in the 128x128 images): one line says so, and why
    (nan_line,) = [line for line in console.splitlines() if "null" in line]
    assert "bbox_APl, segm_APl for all 3 evaluated stitches" in nan_line and "area > 96x96 px" in nan_line
    assert "evaluating 3 stitches x 6 images" in console  # the bar counts images x stitches
    assert console.count("detectron2 runs without its compiled ops") == 1
    assert re.search(r"model: GeneralizedRCNN with a StitchedViTDetBackbone \(14 stitches\), [\d.]+M parameters",
                     console)
    assert console.count("Full config saved to") == 1  # default_setup reused the filtered loggers
    assert len(proc.stdout.splitlines()) < 60, proc.stdout  # before: ~120 lines per stitch


def test_eval_input_size_comes_from_the_checkpoint_unless_the_command_line_sets_it(synthetic, tmp_path):  # noqa: F811
    cfg = tiny_cfg(synthetic, str(tmp_path))
    recorded = save_checkpoint(cfg, tmp_path / "recorded", eval_size=[96, 96])
    plain = save_checkpoint(cfg, tmp_path / "plain")
    runs = itertools.count()

    def evaluate(weights, *extra):
        report = str(tmp_path / f"report_{next(runs)}")
        with Records("snnet_core.io.run_dir") as messages:  # snnet_core.io.run_dir.eval_size_for_checkpoint
            record = run_main("--eval-only", "--stitch", "0", "--report-dir", report,
                              *tiny_opts(synthetic, str(tmp_path), f"train.init_checkpoint={weights}", *extra))
        return record["run_key"].rsplit("|", 1)[1], messages

    size, messages = evaluate(recorded)
    assert size == "96x96" and any("the snnet.flops_input_size" in m and "96x96" in m for _, m in messages)
    size, messages = evaluate(recorded, "snnet.flops_input_size=[112,112]")
    assert size == "112x112"
    assert [m for level, m in messages if level == "WARNING"] == [
        f"evaluating at 112x112 (snnet.flops_input_size on the command line), not at 96x96, the size "
        f"{recorded} was trained at"]
    size, messages = evaluate(plain)  # a checkpoint without the entry: the config's
    assert size == "128x128" and not any(level == "WARNING" for level, _ in messages)


def test_eval_input_size_sets_the_gflops_size_the_test_resize_and_the_square_padding(synthetic, tmp_path):  # noqa: F811
    from detectron2.structures import ImageList

    cfg = tiny_cfg(synthetic, str(tmp_path))
    model = instantiate(cfg.model)
    assert model.backbone.padding_constraints["square_size"] == 128  # the tiny config trains at 128x128
    train_net.set_eval_input_size(cfg, model, (96, 160))
    assert list(cfg.snnet.flops_input_size) == [96, 160]
    resize = instantiate(cfg.dataloader.test.mapper.augmentations[0])
    assert (resize.short_edge_length, resize.max_size) == ((96, 96), 160)
    # the square follows: a 96x160 test image is padded to 160x160, not cut to 128 columns
    assert cfg.model.backbone.square_pad == model.backbone.padding_constraints["square_size"] == 160
    image = torch.rand(3, 96, 160)
    padded = ImageList.from_tensors([image], padding_constraints=model.backbone.padding_constraints).tensor
    assert padded.shape[-2:] == (160, 160) and torch.equal(padded[0, :, :96, :160], image)


def test_training_writes_route_losses_and_the_eval_size_and_overwrite_replaces_a_run(synthetic, tmp_path):  # noqa: F811
    out = tmp_path / "run"
    (out / "stitch_report_old").mkdir(parents=True)
    (out / "flops_cache").mkdir()
    old = {"last_checkpoint": "model_0000099.pth", "model_0000099.pth": "old weights", "metrics.json":
           '{"iteration": 99}\n', "log.txt": "old log\n", "stitch_report_old/stitch_results.json": "{}",
           "flops_cache/kept.json": "{}"}
    for name, text in old.items():
        (out / name).write_text(text)
    opts = tiny_opts(synthetic, str(out), "train.max_iter=3", "train.log_period=1")
    with pytest.raises(ValueError, match="--overwrite replaces the training run .* does not go with --eval-only"):
        run_main("--eval-only", "--overwrite", *opts)
    with pytest.raises(ValueError, match="--resume continues .* --overwrite replaces it: give one"):
        run_main("--resume", "--overwrite", *opts)
    assert (out / "model_0000099.pth").read_text() == "old weights"

    run_main("--overwrite", *opts)
    assert not (out / "model_0000099.pth").exists() and not (out / "stitch_report_old").exists()
    assert (out / "flops_cache" / "kept.json").exists() and (out / "last_checkpoint").read_text() == "model_final.pth"
    with open(out / "log.txt") as f:
        assert "old log" not in f.read()
    checkpoint = torch.load(out / "model_final.pth", map_location="cpu", weights_only=True)
    assert checkpoint["eval_size"] == [128, 128] and checkpoint["iteration"] == 2

    with open(out / "metrics.json") as f:
        lines = [json.loads(line) for line in f]
    with open(out / "stitch_schedule_from_0.json") as f:
        schedule = json.load(f)["stitches"]
    space = instantiate(tiny_cfg(synthetic, str(out)).model.backbone.net).space
    assert [line["iteration"] for line in lines] == [0, 1, 2] and not any("stitch_id" in line for line in lines)
    for line, stitch in zip(lines, schedule):  # each iteration's loss under its stitch's route type / anchor
        assert [k for k in line if k.startswith("route_loss/")] == [route_loss_name(space[stitch])]
    assert lines[0][route_loss_name(space[schedule[0]])] == pytest.approx(lines[0]["total_loss"])

    run_main("--overwrite", *opts, "train.max_iter=2")  # again in this process: log.txt holds the second run only
    with open(out / "log.txt") as f:
        log = f.read()
    assert log.count("Full config saved to") == 1 and "Starting training from iteration 0" in log


def test_a_declared_coco_file_is_read_once_per_process(synthetic, tmp_path, monkeypatch):  # noqa: F811
    reads = []
    real = data.load_checked_coco_json
    monkeypatch.setattr(data, "load_checked_coco_json", lambda *args: reads.append(args[2]) or real(*args))
    cfg = tiny_cfg(synthetic, str(tmp_path))
    data.register_coco_json_datasets({"read_once_train": dict(cfg.datasets.coco_json.synthetic_shapes_train)})
    cfg.dataloader.train.dataset.names = "read_once_train"
    train_net.build_train_loader(cfg, seed=0, start_iter=0)  # a training start: the training and LS init loaders
    train_net.build_calibration_loader(cfg)
    assert reads == ["read_once_train"]
