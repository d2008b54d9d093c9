"""projects/snnet_setr/train_net.py end to end on the tiny synthetic ADE20K (files written by
datasets/make_synthetic_segmentation.py): training lowers the loss, the per-stitch report's mIoU is the confusion
matrix of the saved predictions, two gloo processes give the one-process report, bad data fails before training."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from detectron2.config import instantiate
from detectron2.data import DatasetCatalog
from PIL import Image

from datasets.make_synthetic_segmentation import make_synthetic_segmentation
from projects.snnet_setr import train_net
from snnet_core.d2.checkpoint import StrictDetectionCheckpointer
from snnet_core.io.config_io import apply_overrides, load_config_file
from tests.d2_app_checks import (
    FS_IDS, check_backbone_lora_rank_and_ls_init_off, check_snnetv1_space_trains_uniformly,
)

REPO = os.path.join(os.path.dirname(__file__), "..")
TINY = os.path.join(REPO, "projects", "snnet_setr", "configs", "synthetic", "setr_snnetv2_tiny.py")
DATASET = "synthetic_ade20k_sem_seg"  # the tiny config's datasets.sem_seg entry
STITCHES = (0, 1, 5, 9)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """The synthetic ADE20K in its real layout: 8 training and 3 validation images, 64 pixels high."""
    return make_synthetic_segmentation(str(tmp_path_factory.mktemp("synthetic_ade20k")), "ade20k", num_train=8,
                                       num_val=3, image_size=64, seed=0)


def tiny_opts(root, output_dir, *extra):
    """key=value overrides: the synthetic set at ``root``, batch 2, single-process CPU, a short schedule."""
    return [f"datasets.sem_seg.{DATASET}.root={root}", f"train.output_dir={output_dir}", "train.device=cpu",
            "dataloader.train.total_batch_size=2", "snnet.ls_init_images=2", "train.log_period=1", *extra]


def run_main(*argv):
    return train_net.main(train_net.build_argument_parser().parse_args(["--config-file", TINY, *argv]))


def tiny_cfg(root, output_dir, *extra):
    return apply_overrides(load_config_file(TINY), tiny_opts(root, output_dir, *extra), TINY)


def losses(output_dir):
    with open(os.path.join(output_dir, "metrics.json")) as f:
        return [json.loads(line)["total_loss"] for line in f if "total_loss" in line]


@pytest.fixture(scope="module")
def trained(synthetic, tmp_path_factory):
    """A 30-iteration training of the tiny config (LS init, ROS): its output directory."""
    out = str(tmp_path_factory.mktemp("setr_run"))
    run_main(*tiny_opts(synthetic, out, "train.max_iter=30", "train.checkpointer.period=30"))
    return out


def test_training_lowers_the_loss(trained):
    curve = losses(trained)
    assert len(curve) == 30
    assert np.mean(curve[-5:]) < 0.8 * np.mean(curve[:5]), curve
    with open(os.path.join(trained, "stitch_schedule_from_0.json")) as f:
        assert len(set(json.load(f)["stitches"])) > 3  # ROS drew many stitches


def test_the_runs_config_yaml_is_read_as_data_and_builds_the_model(trained):
    cfg = load_config_file(os.path.join(trained, "config.yaml"))  # YAML: only CONFIG_MODULES' callables
    assert type(instantiate(cfg.model)).__name__ == "StitchedSETR"


def confusion_miou(predictions, labels, num_classes, ignore=255):
    """mIoU / mAcc / aAcc (percent) of class maps against label maps, by a confusion matrix over the classes present
    in the labels (detectron2's SemSegEvaluator's definitions)."""
    matrix = np.zeros((num_classes, num_classes), np.int64)
    for pred, gt in zip(predictions, labels):
        keep = gt != ignore
        matrix += np.bincount(gt[keep] * num_classes + pred[keep], minlength=num_classes ** 2).reshape(matrix.shape)
    tp, gt_count, pred_count = np.diag(matrix), matrix.sum(1), matrix.sum(0)
    present = gt_count > 0
    iou = tp[present] / (gt_count + pred_count - tp)[present]
    return {"mIoU": 100 * iou.mean(), "mAcc": 100 * (tp[present] / gt_count[present]).mean(),
            "aAcc": 100 * tp.sum() / matrix.sum()}


def test_report_metrics_are_the_confusion_matrix_of_saved_predictions(synthetic, trained, tmp_path):
    weights = os.path.join(trained, "model_final.pth")
    record = run_main("--eval-only", "--stitch", ",".join(map(str, STITCHES)),
                      *tiny_opts(synthetic, trained, f"train.init_checkpoint={weights}"))
    report = os.path.join(trained, f"stitch_report_{DATASET}_val")
    for name in ("stitch_results.json", "stitch_report.csv", "stitch_report.md", "stitch_report.png"):
        assert os.path.isfile(os.path.join(report, name)), name
    assert sorted(map(int, record["stitches"])) == sorted(STITCHES)

    cfg = tiny_cfg(synthetic, trained)
    model = instantiate(cfg.model).eval()
    StrictDetectionCheckpointer(model).load(weights)
    items = DatasetCatalog.get(f"{DATASET}_val")
    loader = instantiate(cfg.dataloader.test)
    num_classes = int(cfg.model.decode_head.num_classes)
    for stitch_id in (0, 5):
        model.set_stitch(stitch_id)
        saved = []
        with torch.no_grad():
            for (inputs,), item in zip(loader, items):
                path = tmp_path / f"stitch{stitch_id}_{len(saved)}.npy"
                np.save(path, model([inputs])[0]["sem_seg"].argmax(0).numpy())
                saved.append((path, item["sem_seg_file_name"]))
        predictions = [np.load(p) for p, _ in saved]
        labels = [np.asarray(Image.open(label), dtype=np.int64) for _, label in saved]
        expected = confusion_miou(predictions, labels, num_classes)
        row = record["stitches"][str(stitch_id)]
        for metric, value in expected.items():
            assert row[metric] == pytest.approx(value, abs=1e-6), (stitch_id, metric)


def test_two_gloo_processes_give_the_one_process_report(synthetic, trained, tmp_path):
    weights = os.path.join(trained, "model_final.pth")
    argv = ["--eval-only", "--stitch", ",".join(map(str, STITCHES))]
    opts = tiny_opts(synthetic, trained, f"train.init_checkpoint={weights}", "snnet.eval_group_size=2")
    one = run_main(*argv, "--report-dir", str(tmp_path / "one"), *opts)
    env = dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()), HF_HUB_OFFLINE="1")
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "projects", "snnet_setr", "train_net.py"), "--num-gpus", "2",
         "--config-file", TINY, *argv, "--report-dir", str(tmp_path / "two"), *opts],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(tmp_path / "two" / "stitch_results.json") as f:
        two = json.load(f)
    assert two["stitches"] == one["stitches"] and two["run_key"] == one["run_key"]


@pytest.mark.parametrize("fault, message", [
    ("label_value", r"label map .*\.png holds values \[200\] outside the \d+ classes"),
    ("size", r"label map .*\.png is \d+x\d+ but its image .*\.jpg is \d+x\d+"),
    ("missing", r"label map .*\.png has no image in .*images/training"),
])
def test_bad_training_data_fails_before_the_model_is_built_naming_the_file(synthetic, tmp_path, monkeypatch, fault,
                                                                          message):
    import shutil

    root = tmp_path / "ade"
    shutil.copytree(synthetic, root)
    label = sorted((root / "annotations_detectron2" / "training").iterdir())[0]
    if fault == "label_value":
        labels = np.asarray(Image.open(label)).copy()
        labels[0, 0] = 200
        Image.fromarray(labels).save(label)
    elif fault == "size":
        Image.fromarray(np.asarray(Image.open(label))[:-8]).save(label)
    else:
        image = root / "images" / "training" / (label.stem + ".jpg")
        image.unlink()
    monkeypatch.setattr(train_net.SegmentationApp, "build_model", lambda *a: pytest.fail("the model was built"))
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        run_main(*tiny_opts(str(root), str(tmp_path / "run"), "train.max_iter=1"))
    assert not os.path.exists(tmp_path / "run" / "log.txt")


def test_backbone_lora_rank_is_checked_and_it_and_ls_init_images_0_reach_training(synthetic, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(train_net, "ls_init_setr", lambda *a: calls.append(a))
    out = str(tmp_path / "run")
    check_backbone_lora_rank_and_ls_init_off(lambda *opts: run_main(*tiny_opts(synthetic, out, *opts)), out,
                                             "model.backbone.backbone_lora_rank", "backbone.anchors.")
    assert calls == []  # no LS solve: the stitching layers keep PyTorch's default init


def test_snnetv1_space_trains_uniformly_and_eval_only_and_resume_keep_the_recorded_space(synthetic, tmp_path,
                                                                                       monkeypatch):
    out = str(tmp_path / "v1")
    v1 = check_snnetv1_space_trains_uniformly(lambda *opts: run_main(*tiny_opts(synthetic, out, *opts)), out,
                                              "model.backbone.", 4, ["anchor", "XY"], "random")
    with monkeypatch.context() as m:  # another space or sampler: refused before any work
        m.setattr(train_net.SegmentationApp, "build_model", lambda *a: pytest.fail("the model was built"))
        with pytest.raises(ValueError, match=r"--resume: .*model_final.pth was trained with another stitch space or "
                                             r"sampler: model.backbone.route_types=\['anchor', 'FS', 'SF', 'FSF', "
                                             r"'SFS'\] \(trained with \['anchor', 'FS'\]\); snnet.sampling=ros"):
            run_main("--resume", *tiny_opts(synthetic, out, "train.max_iter=6"))
    # --eval-only under the tiny config (all five route types): the space the checkpoint was trained in
    record = run_main("--eval-only", "--stitch", "all", *tiny_opts(synthetic, out, v1[2]))
    assert sorted(map(int, record["stitches"])) == FS_IDS
    with pytest.raises(ValueError, match=r"trained without route types \['SF'\]"):
        run_main("--eval-only", *tiny_opts(synthetic, out, v1[2], "model.backbone.route_types=[anchor,FS,SF]"))
