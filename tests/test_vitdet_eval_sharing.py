"""snnet_vitdet per-stitch evaluation sharing route prefixes: the same predictions as each stitch's own forward,
the same pycocotools numbers as the per-stitch loop (one pass per group instead of one per stitch), one and
two gloo processes agree, and a cached FLOPs table start traces nothing."""
import copy
import json
import os
import subprocess
import sys

import pytest
import torch
from detectron2.config import instantiate

from projects.snnet_vitdet import evaluation
from projects.snnet_vitdet.evaluation import detector_flops_table, stitch_predictions, stitch_report
from snnet_core import FlopsTable
from snnet_core.d2.checkpoint import StrictDetectionCheckpointer
from tests.test_core_report import progress_bars  # noqa: F401 (fixture)
from tests.test_vitdet_train import REPO, TINY, run_main, synthetic, tiny_cfg, tiny_opts  # noqa: F401 (fixture)

SELF_GT = "self_gt_val"
STITCHES = [0, 1, 2, 5, 9, 13]  # anchors, FS, SF and two-stitch routes
EVAL_OPTS = ("model.roi_heads.box_predictor.test_score_thresh=0.0",)  # a random model then detects something


def self_gt_opts(root, gt_file):
    """Evaluation on ``SELF_GT``: the val images annotated with stitch 0's confident detections."""
    return [*EVAL_OPTS, f"+datasets.coco_json.{SELF_GT}.json_file={gt_file}",  # +: a key the config lacks
            f"+datasets.coco_json.{SELF_GT}.image_root={root}/val", f"dataloader.test.dataset.names={SELF_GT}"]


@pytest.fixture(scope="module")
def setup(synthetic, tmp_path_factory):  # noqa: F811
    """A random-weight tiny SN-Net (saved) and ``SELF_GT``, on which stitch 0 scores AP 100 and the other
    stitches differently (so a stitch evaluated into another's evaluator shows)."""
    tmp = tmp_path_factory.mktemp("sharing")
    torch.manual_seed(0)
    cfg = tiny_cfg(synthetic, str(tmp), *EVAL_OPTS)
    model = instantiate(cfg.model).eval()
    StrictDetectionCheckpointer(model, save_dir=str(tmp)).save("random")
    with open(os.path.join(synthetic, "annotations", "instances_val.json")) as f:
        coco = json.load(f)
    evaluator = instantiate(cfg.dataloader.evaluator)
    evaluator.reset()
    model.backbone.net.set_stitch(0)
    with torch.no_grad():
        for inputs in instantiate(cfg.dataloader.test):
            evaluator.process(inputs, model(inputs))
    detections = [d for p in evaluator._predictions for d in p["instances"] if d["score"] >= 0.2]
    coco["annotations"] = [dict(id=i + 1, image_id=d["image_id"], category_id=d["category_id"] + 1, bbox=d["bbox"],
                                area=d["bbox"][2] * d["bbox"][3], segmentation=d["segmentation"], iscrowd=0)
                           for i, d in enumerate(detections)]  # contiguous class c is category c + 1
    gt_file = str(tmp / "self_gt.json")
    with open(gt_file, "w") as f:
        json.dump(coco, f)
    cfg = tiny_cfg(synthetic, str(tmp), *self_gt_opts(synthetic, gt_file))
    return cfg, model, str(tmp / "random.pth"), gt_file


class CountingLoader:
    """A data loader that counts the passes over it."""

    def __init__(self, loader):
        self.loader, self.passes = loader, 0

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        self.passes += 1
        return iter(self.loader)


def test_shared_prefix_predictions_equal_each_stitch_forward(setup):
    cfg, model, _, _ = setup
    backbone = model.backbone.net
    items = [inputs[0] for _, inputs in zip(range(2), instantiate(cfg.dataloader.test))]  # a batch of two sizes
    assert items[0]["image"].shape != items[1]["image"].shape
    with torch.no_grad():
        shared = list(stitch_predictions(model, items, backbone.space.ids))
        assert sorted(s for s, _ in shared) == backbone.space.ids
        for stitch_id, outputs in shared:
            backbone.set_stitch(stitch_id)
            for got, want in zip(outputs, model(items)):
                got, want = got["instances"], want["instances"]
                assert len(want) > 0 and got.image_size == want.image_size
                for field in ("pred_boxes", "scores", "pred_classes", "pred_masks"):
                    a, b = got.get(field), want.get(field)
                    a, b = (a.tensor, b.tensor) if field == "pred_boxes" else (a, b)
                    assert torch.equal(a, b), (stitch_id, field)


def test_grouped_report_equals_the_per_stitch_loop(setup, tmp_path):
    cfg, model, _, _ = setup
    backbone = model.backbone.net
    flops = FlopsTable({i: float(i) for i in backbone.space.ids}, {i: 1.0 for i in backbone.space.ids}, (128, 128))
    evaluator = instantiate(cfg.dataloader.evaluator)
    reports = {}
    for name, group_size in (("loop", None), ("grouped", 4)):
        loader = CountingLoader(instantiate(cfg.dataloader.test))
        record = stitch_report(model, backbone.set_stitch, loader, evaluator, STITCHES, backbone.space, flops,
                               str(tmp_path / name), "run", group_size=group_size)
        reports[name] = (record["stitches"], loader.passes)
    (loop, loop_passes), (grouped, grouped_passes) = reports["loop"], reports["grouped"]
    assert (loop_passes, grouped_passes) == (len(STITCHES), 2)
    assert grouped == loop  # every metric of every stitch, exactly
    assert loop["0"]["bbox_AP"] == pytest.approx(100.0) and loop["0"]["segm_AP"] == pytest.approx(100.0)
    aps = [loop[str(s)]["bbox_AP"] for s in STITCHES]
    assert len(set(aps)) >= 4, aps  # stitches score differently: one evaluated into another's evaluator shows


@pytest.mark.parametrize("group_size, per_batch", [(2, [2] * 6 + [1] * 6), (None, [1] * 18)])
def test_the_report_bar_counts_images_x_stitches_and_moves_per_batch(setup, tmp_path, progress_bars, group_size,
                                                                       per_batch):  # noqa: F811
    cfg, model, _, _ = setup
    backbone = model.backbone.net
    flops = FlopsTable({i: float(i) for i in backbone.space.ids}, {i: 1.0 for i in backbone.space.ids}, (128, 128))
    loader = instantiate(cfg.dataloader.test)  # 6 images, one per batch
    stitch_report(model, backbone.set_stitch, loader, instantiate(cfg.dataloader.evaluator), [0, 13, 1],
                  backbone.space, flops, str(tmp_path), "run", group_size=group_size)
    (bar,) = progress_bars
    assert bar.desc.startswith("evaluating 3 stitches x 6 images")
    assert (bar.total, bar.updates) == (18, per_batch)  # grouped: stitches 0 and 13 in one pass, then 1


def test_interrupted_grouped_report_keeps_finished_groups(setup, tmp_path, monkeypatch):
    cfg, model, _, _ = setup
    backbone = model.backbone.net
    flops = FlopsTable({i: float(i) for i in backbone.space.ids}, {i: 1.0 for i in backbone.space.ids}, (128, 128))
    evaluator, loader = instantiate(cfg.dataloader.evaluator), instantiate(cfg.dataloader.test)
    real, groups = evaluation.evaluate_stitch_group, []

    def interrupted(model, data_loader, evaluator, stitch_ids, *rest):
        if len(groups) == 1:
            raise KeyboardInterrupt
        groups.append(list(stitch_ids))
        return real(model, data_loader, evaluator, stitch_ids, *rest)

    monkeypatch.setattr(evaluation, "evaluate_stitch_group", interrupted)
    out = str(tmp_path / "report")
    with pytest.raises(KeyboardInterrupt):
        stitch_report(model, None, loader, evaluator, STITCHES, backbone.space, flops, out, "run", group_size=3)
    with open(os.path.join(out, "stitch_results.json")) as f:
        assert sorted(json.load(f)["stitches"], key=int) == sorted(map(str, groups[0]), key=int)
    groups.clear()
    monkeypatch.setattr(evaluation, "evaluate_stitch_group", lambda *a: groups.append(a[3]) or real(*a))
    record = stitch_report(model, None, loader, evaluator, STITCHES, backbone.space, flops, out, "run", group_size=3)
    assert len(groups) == 1 and sorted(record["stitches"], key=int) == list(map(str, STITCHES))


def test_two_gloo_processes_give_the_one_process_report(setup, synthetic, tmp_path):  # noqa: F811
    _, _, weights, gt_file = setup
    argv = ["--eval-only", "--stitch", ",".join(map(str, STITCHES))]
    opts = [f"train.init_checkpoint={weights}", "snnet.eval_group_size=4"]
    opts += self_gt_opts(synthetic, gt_file)
    one = run_main(*argv, "--report-dir", str(tmp_path / "one"), *tiny_opts(synthetic, str(tmp_path), *opts))
    env = dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()), HF_HUB_OFFLINE="1")
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "projects", "snnet_vitdet", "train_net.py"), "--num-gpus", "2",
         "--config-file", TINY, *argv, "--report-dir", str(tmp_path / "two"), *tiny_opts(synthetic, str(tmp_path), *opts)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=400,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "6 stitches in 2 groups of up to 4 sharing route prefixes" in proc.stdout + proc.stderr
    with open(tmp_path / "two" / "stitch_results.json") as f:
        two = json.load(f)
    assert two["stitches"] == one["stitches"] and two["run_key"] == one["run_key"]
    assert one["stitches"]["0"]["bbox_AP"] == pytest.approx(100.0)


def test_cached_flops_table_start_traces_nothing(setup, tmp_path, monkeypatch):
    _, model, _, _ = setup
    model = copy.deepcopy(model)
    cache = str(tmp_path / "cache")
    first = detector_flops_table(model, (128, 128), cache)
    assert first.head_gflops > 0

    def no_tracing(*args, **kwargs):
        raise AssertionError("a cached start traced the model")

    monkeypatch.setattr(evaluation, "count_gflops", no_tracing)
    monkeypatch.setattr("snnet_core.model.flops.flop_counter", no_tracing)
    second = detector_flops_table(model, (128, 128), cache)
    assert second.to_json() == first.to_json()
    model.roi_heads.box_predictor.test_topk_per_image = 10  # another head: its cost is counted again
    with pytest.raises(AssertionError, match="traced"):
        detector_flops_table(model, (128, 128), cache)
    with pytest.raises(AssertionError, match="traced"):
        detector_flops_table(model, (128, 96), cache)  # another input size


def test_damaged_head_cost_cache_is_recounted_with_a_warning(setup, tmp_path, caplog):
    _, model, _, _ = setup
    cache = str(tmp_path / "cache")
    first = detector_flops_table(model, (128, 128), cache)
    (path,) = [os.path.join(cache, n) for n in os.listdir(cache) if n.startswith("head_cost_")]
    with open(path, "w") as f:
        f.write("{not json")
    evaluation.logger.addHandler(caplog.handler)  # train_net's setup_logger stops propagation to the root
    try:
        assert detector_flops_table(model, (128, 128), cache).to_json() == first.to_json()
    finally:
        evaluation.logger.removeHandler(caplog.handler)
    assert f"head cost cache {path}: it is unreadable" in caplog.text
    with open(path) as f:
        assert json.load(f)["gflops"] == pytest.approx(first.head_gflops)
