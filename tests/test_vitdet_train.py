"""snnet_vitdet training and evaluation on a tiny synthetic COCO: loss goes down, train_net (LS init, ROS,
resume, per-stitch report), ground truth scores AP 100 through the report path, resumable report,
2-process gloo launch, clear errors."""
import glob
import itertools
import json
import logging
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch
import torch.nn as nn
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import LazyConfig, instantiate
from detectron2.data import DatasetCatalog, DatasetMapper, build_detection_test_loader
from detectron2.engine import SimpleTrainer
from detectron2.evaluation import COCOEvaluator
from detectron2.structures import BoxMode, Boxes, Instances, polygons_to_bitmask
from detectron2.utils.env import seed_all_rng
from detectron2.utils.events import EventStorage

from datasets.make_synthetic_coco import make_synthetic_coco
from projects.snnet_vitdet import train_net
from projects.snnet_vitdet.backbone import StitchedViTDetBackbone, ViTDetBackbone
from projects.snnet_vitdet.data import register_coco_json_datasets
from projects.snnet_vitdet.evaluation import detector_flops_table, stitch_report
from snnet_core import FlopsTable, ResourceConstrainedSampler, build_anchor
from snnet_core.d2.checkpoint import StrictDetectionCheckpointer
from snnet_core.d2.hooks import StitchSamplingHook
from tests.d2_app_checks import (
    FS_IDS, check_backbone_lora_rank_and_ls_init_off, check_snnetv1_space_trains_uniformly,
)

REPO = os.path.join(os.path.dirname(__file__), "..")
TINY = os.path.join(REPO, "projects", "snnet_vitdet", "configs", "synthetic", "mask_rcnn_snnetv2_tiny.py")


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("synthetic_coco"))
    make_synthetic_coco(root, num_train=16, num_val=6, image_size=128, max_objects=3, seed=0)
    return root


def tiny_opts(root, output_dir, *extra):
    """key=value overrides: tiny data, batch 2, single-process CPU."""
    return [f"datasets.root={root}", f"train.output_dir={output_dir}", "train.device=cpu",
            "dataloader.train.total_batch_size=2", "dataloader.train.num_workers=0",
            "dataloader.test.num_workers=0", "model.roi_heads.batch_size_per_image=32",
            "snnet.ls_init_images=4", "train.log_period=2", *extra]


def run_main(*argv):
    return train_net.main(train_net.build_argument_parser().parse_args(["--config-file", TINY, *argv]))


def cached_sampler(output_dir):
    """The ROS sampler a run in ``output_dir`` used, rebuilt from its cached FLOPs table."""
    with open(glob.glob(os.path.join(output_dir, "flops_cache", "*.json"))[0]) as f:
        return ResourceConstrainedSampler(FlopsTable.from_json(json.load(f)).gflops, 0.02, seed=0)


def checkpoints(output_dir):
    return sorted(name for name in os.listdir(output_dir) if name.endswith(".pth"))


def tiny_cfg(root, output_dir, *extra):
    cfg = LazyConfig.apply_overrides(LazyConfig.load(TINY), tiny_opts(root, output_dir, *extra))
    register_coco_json_datasets(cfg.datasets.coco_json)
    return cfg


# --- training ----------------------------------------------------------------------------------------
def test_a_few_iterations_lower_the_loss(synthetic, tmp_path):
    cfg = tiny_cfg(synthetic, tmp_path)
    seed_all_rng(0)  # weights, data order, augmentation
    model = instantiate(cfg.model)
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    batch = next(iter(instantiate(cfg.dataloader.train)))
    backbone = model.backbone.net

    def loss(stitch_id):
        backbone.set_stitch(stitch_id)
        torch.manual_seed(1)  # same anchor/proposal sampling every time
        with EventStorage(0), torch.no_grad():
            return sum(model(batch).values()).item()

    before = {s: loss(s) for s in (0, 1, 9)}
    model.train()
    trainer = SimpleTrainer(model, instantiate(cfg.dataloader.train), optimizer)
    table = detector_flops_table(model, (128, 128))
    sampler = ResourceConstrainedSampler(table.gflops, 0.02)
    trainer.register_hooks([StitchSamplingHook(backbone, sampler, str(tmp_path))])
    trainer.train(0, 40)
    after = {s: loss(s) for s in (0, 1, 9)}
    for stitch_id in before:
        assert after[stitch_id] < 0.85 * before[stitch_id], (stitch_id, before, after)


def test_train_net_ls_init_ros_resume_and_stitch_report(synthetic, tmp_path, monkeypatch):
    calls = []
    real_ls_init = train_net.ls_init_detector
    monkeypatch.setattr(train_net, "ls_init_detector", lambda *a: calls.append(a[2]) or real_ls_init(*a))
    out = str(tmp_path / "run")
    keep_one = "train.checkpointer.max_to_keep=1"
    run_main(*tiny_opts(synthetic, out, "train.max_iter=4", "train.checkpointer.period=2", keep_one))
    assert calls == [4]  # LS init on 4 images before the first iteration
    assert checkpoints(out) == ["model_0000003.pth", "model_final.pth"]  # model_0000001.pth: beyond max_to_keep
    with open(os.path.join(out, "stitch_schedule_from_0.json")) as f:
        schedule = json.load(f)
    assert schedule["ranks_agree"] and len(schedule["stitches"]) == 4
    assert os.path.isfile(os.path.join(out, "model_final.pth")) and os.path.isfile(os.path.join(out, "metrics.json"))

    run_main("--resume", *tiny_opts(synthetic, out, "train.max_iter=6", "train.checkpointer.period=2", keep_one))
    assert calls == [4]  # resumed: no second LS init
    # the resumed run prunes the interrupted run's periodic checkpoints too (the directory's, not its own)
    assert checkpoints(out) == ["model_0000005.pth", "model_final.pth"]
    with open(os.path.join(out, "stitch_schedule_from_4.json")) as f:
        resumed = json.load(f)
    sampler = cached_sampler(out)
    assert resumed["stitches"] == [sampler.sample(i) for i in (4, 5)]
    assert schedule["stitches"] == [sampler.sample(i) for i in range(4)]

    weights = os.path.join(out, "model_final.pth")
    trained = f"train.init_checkpoint={weights}"
    record = run_main("--eval-only", "--stitch", "0,1,13", *tiny_opts(synthetic, out, trained))
    report = os.path.join(out, "stitch_report_synthetic_shapes_val")
    for name in ("stitch_results.json", "stitch_report.csv", "stitch_report.md", "stitch_report.png",
                 "stitch_report.json", "stitch_report_segm.png"):
        assert os.path.isfile(os.path.join(report, name)), name
    rows = record["stitches"]
    assert sorted(rows) == ["0", "1", "13"] and "@iter5|synthetic_shapes_val|128x128" in record["run_key"]
    for row in rows.values():
        assert {"bbox_AP", "bbox_AP50", "bbox_AP75", "bbox_APs", "bbox_APm", "bbox_APl", "segm_AP", "segm_APl",
                "gflops", "params_m"} <= set(row)
    assert rows["1"]["gflops"] > rows["13"]["gflops"] > rows["0"]["gflops"] > 0
    with open(os.path.join(report, "stitch_report.json")) as f:
        assert {"on_frontier_bbox", "on_frontier_segm"} <= set(json.load(f)["stitches"][0])
    # pareto: the frontier of a results file (AP made finite: 6 iterations from scratch may detect nothing)
    with open(os.path.join(report, "stitch_results.json")) as f:
        results = json.load(f)
    for stitch, ap in (("0", 10.0), ("1", 30.0), ("13", 5.0)):  # 13 costs more than 0 and scores less
        results["stitches"][stitch]["bbox_AP"] = ap
    source = os.path.join(str(tmp_path), "results.json")
    with open(source, "w") as f:
        json.dump(results, f)
    record = run_main("--eval-only", "--stitch", "pareto", "--pareto-from", source,
                      "--report-dir", os.path.join(str(tmp_path), "pareto"), *tiny_opts(synthetic, out, trained))
    assert sorted(record["stitches"]) == ["0", "1"]


def test_a_warm_flops_cache_trains_the_same_weights_as_a_cold_one(synthetic, tmp_path):
    """Counting the FLOPs table draws random numbers (merged stitching layers); reading it from flops_cache/ does
    not: --overwrite, which keeps the cache, must reproduce the run it replaces."""
    cold, warm = tmp_path / "cold", tmp_path / "warm"
    run_main(*tiny_opts(synthetic, str(cold), "train.max_iter=2"))
    shutil.copytree(cold / "flops_cache", warm / "flops_cache")
    run_main(*tiny_opts(synthetic, str(warm), "train.max_iter=2"))
    weights = [torch.load(out / "model_final.pth", map_location="cpu", weights_only=True)["model"]
               for out in (cold, warm)]
    differ = [k for k in weights[0] if not torch.equal(weights[0][k], weights[1][k])]
    assert not differ, f"{len(differ)} of {len(weights[0])} tensors differ, e.g. {differ[:3]}"


def test_more_processes_than_visible_gpus_are_refused_before_any_starts(monkeypatch, tmp_path):
    def no_launch(*args, **kwargs):
        pytest.fail("processes were launched")

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.setattr("detectron2.engine.launch", no_launch)
    monkeypatch.setattr(train_net, "launch", no_launch, raising=False)
    with pytest.raises(ValueError, match=r"4 GPUs asked, 0 visible: use --num-gpus 1 on CPU, or pass "
                                         r"train\.device=cpu to start 4 CPU processes"):
        train_net.cli(["--num-gpus", "4", "--config-file", TINY, f"train.output_dir={tmp_path / 'run'}",
                       "train.device=cuda"])
    assert not (tmp_path / "run").exists()


def test_two_process_gloo_launch_trains_the_same_stitches(synthetic, tmp_path):
    out = str(tmp_path / "ddp")
    env = dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()), HF_HUB_OFFLINE="1")
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "projects", "snnet_vitdet", "train_net.py"), "--num-gpus", "2",
         "--config-file", TINY, *tiny_opts(synthetic, out, "train.max_iter=5", "dataloader.train.total_batch_size=4")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=400,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(os.path.join(out, "stitch_schedule_from_0.json")) as f:
        schedule = json.load(f)
    assert schedule["num_ranks"] == 2 and schedule["ranks_agree"]
    assert schedule["stitches"] == [cached_sampler(out).sample(i) for i in range(5)]
    assert len(set(schedule["stitches"])) > 1


def test_ranks_drawing_different_stitches_is_an_error(monkeypatch, tmp_path):
    hook = StitchSamplingHook(None, None, str(tmp_path))
    hook.trainer = type("Trainer", (), {"iter": 9, "max_iter": 10})()
    hook.start_iter, hook.history = 8, [3, 5]
    monkeypatch.setattr("snnet_core.d2.hooks.comm.all_gather", lambda h: [[3, 5], [3, 6]])
    with pytest.raises(RuntimeError, match="ranks trained different stitches from iteration 9"):
        hook.after_train()


def test_do_test_evaluates_baselines_and_chosen_stitches(synthetic, tmp_path):
    cfg = tiny_cfg(synthetic, tmp_path)
    model = instantiate(cfg.model)
    metrics = train_net.do_test(cfg, model, stitch_ids=[0, 13])  # EvalHook during SN-Net training
    assert sorted(metrics) == ["stitch0", "stitch13"] and model.backbone.net.stitch_id == 1
    assert {"bbox_AP", "segm_AP", "segm_APm"} <= set(metrics["stitch13"])
    vit = build_anchor("deit3_small_patch16_224", img_size=128, class_token=False, embed_dim=128, depth=2,
                       num_heads=2)
    model.backbone.net = ViTDetBackbone(vit, window_size=4, num_global=1)  # an anchor baseline
    assert {"bbox_AP", "segm_AP"} <= set(train_net.do_test(cfg, model))


# --- evaluation: ground truth through the report path ------------------------------------------------
class GroundTruthPredictor(nn.Module):
    """Returns each image's annotations as predictions (score 1), in the model's output format."""

    def __init__(self, dataset_name):
        super().__init__()
        self.records = {r["image_id"]: r for r in DatasetCatalog.get(dataset_name)}

    def forward(self, inputs):
        outputs = []
        for item in inputs:
            record = self.records[item["image_id"]]
            h, w = record["height"], record["width"]
            annos = record["annotations"]
            instances = Instances((h, w))
            boxes = [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in annos]
            instances.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
            instances.scores = torch.ones(len(annos))
            instances.pred_classes = torch.tensor([a["category_id"] for a in annos], dtype=torch.int64)
            instances.pred_masks = torch.stack([torch.from_numpy(polygons_to_bitmask(a["segmentation"], h, w))
                                                for a in annos])
            outputs.append({"instances": instances})
        return outputs


@pytest.fixture
def report_setup(synthetic, tmp_path):
    register_coco_json_datasets({"synthetic_shapes_val": {
        "json_file": os.path.join(synthetic, "annotations", "instances_val.json"),
        "image_root": os.path.join(synthetic, "val")}})
    loader = build_detection_test_loader(dataset=DatasetCatalog.get("synthetic_shapes_val"),
                                         mapper=DatasetMapper(is_train=False, augmentations=[], image_format="RGB"))
    evaluator = COCOEvaluator("synthetic_shapes_val", tasks=("bbox", "segm"), use_fast_impl=False)
    anchors = [build_anchor("deit3_small_patch16_224", img_size=64, class_token=False, embed_dim=d, depth=n,
                            num_heads=2) for d, n in ((16, 2), (32, 4))]
    backbone = StitchedViTDetBackbone(*anchors, lora_rank=2, window_size=2, num_global=1)
    ids = backbone.space.ids
    flops = FlopsTable({i: float(i) for i in ids}, {i: 1.0 for i in ids}, (64, 64))
    return GroundTruthPredictor("synthetic_shapes_val"), backbone, loader, evaluator, flops, str(tmp_path / "report")


def test_ground_truth_as_prediction_scores_ap_100(report_setup):
    predictor, backbone, loader, evaluator, flops, out = report_setup
    record = stitch_report(predictor, backbone.set_stitch, loader, evaluator, [0, 1], backbone.space, flops, out, "gt")
    for row in record["stitches"].values():
        for task in ("bbox", "segm"):
            for metric in ("AP", "AP50", "AP75", "APs"):
                assert row[f"{task}_{metric}"] == pytest.approx(100.0), (task, metric)


def test_test_images_holding_nan_are_not_run_and_named_once_per_report(report_setup, caplog):
    predictor, backbone, loader, evaluator, flops, out = report_setup
    batches = [[dict(d) for d in batch] for batch in loader]
    bad = batches[1][0]
    bad["image"] = bad["image"].float()
    bad["image"][0, 3, 4] = float("nan")  # a float image file or a corrupt decode
    seen = []
    run = predictor.forward
    predictor.forward = lambda inputs: (seen.extend(d["file_name"] for d in inputs), run(inputs))[1]
    with caplog.at_level(logging.WARNING, logger="projects.snnet_vitdet.evaluation"):
        record = stitch_report(predictor, backbone.set_stitch, batches, evaluator, [0, 1], backbone.space, flops, out,
                               "gt")
    warnings = [r.getMessage() for r in caplog.records if "test image(s)" in r.getMessage()]
    assert warnings == [f"1 test image(s) hold NaN or inf values and are left out of the evaluation: "
                        f"{bad['file_name']}. COCO still counts their annotations: every stitch's AP is that of "
                        "finding nothing in them. They come from a float image file or a corrupt decode: repair or "
                        "remove them"]  # once for the two stitches
    assert bad["file_name"] not in seen and len(seen) == 2 * (sum(map(len, batches)) - 1)
    for row in record["stitches"].values():
        assert 0 < row["bbox_AP"] < 100  # its objects count as missed


def test_report_is_written_interrupted_and_resumed(report_setup):
    predictor, backbone, loader, evaluator, flops, out = report_setup
    seen = []

    def interrupted(stitch_id):
        if len(seen) == 2:
            raise KeyboardInterrupt
        seen.append(stitch_id)
        return backbone.set_stitch(stitch_id)

    with pytest.raises(KeyboardInterrupt):
        stitch_report(predictor, interrupted, loader, evaluator, [0, 1, 2], backbone.space, flops, out, "run")
    with open(os.path.join(out, "stitch_results.json")) as f:
        assert sorted(json.load(f)["stitches"]) == ["0", "1"]
    seen.clear()
    killed = [os.path.join(out, name + ".k1ll3d.tmp") for name in ("stitch_report.json", "stitch_report_segm.png",
                                                                    "stitch_report.csv", "stitch_report.png")]
    for path in killed:  # left by writes killed in the interrupted run's report (a --report-dir of its own)
        open(path, "wb").close()
    record = stitch_report(predictor, lambda s: seen.append(s) or backbone.set_stitch(s), loader, evaluator,
                           [0, 1, 2], backbone.space, flops, out, "run")
    assert seen == [2] and sorted(record["stitches"]) == ["0", "1", "2"]
    assert not [p for p in killed if os.path.exists(p)]
    with open(os.path.join(out, "stitch_report.csv")) as f:
        lines = f.read().splitlines()
    assert len(lines) == 4 and "bbox_AP" in lines[0] and "on_frontier" in lines[0]
    with pytest.raises(RuntimeError, match="holds results of another run"):
        stitch_report(predictor, backbone.set_stitch, loader, evaluator, [0], backbone.space, flops, out, "other")


# --- clear errors ------------------------------------------------------------------------------------
def test_bad_dataset_paths_are_clear_errors(synthetic, tmp_path):
    with pytest.raises(FileNotFoundError, match="annotation file '/nonexistent/annotations/instances_val.json'"):
        run_main(*tiny_opts("/nonexistent", tmp_path))
    with pytest.raises(FileNotFoundError, match=r"DETECTRON2_DATASETS"):
        run_main(*tiny_opts(synthetic, tmp_path, "dataloader.test.dataset.names=coco_2017_val"))
    with pytest.raises(KeyError, match="'no_such_set' is not registered"):
        run_main(*tiny_opts(synthetic, tmp_path, "dataloader.train.dataset.names=no_such_set"))


def test_checkpoint_of_another_architecture_and_unknown_stitch_are_clear_errors(synthetic, tmp_path):
    cfg = tiny_cfg(synthetic, tmp_path)
    DetectionCheckpointer(instantiate(cfg.model), save_dir=str(tmp_path)).save("tiny")
    weights = os.path.join(str(tmp_path), "tiny.pth")
    saved = f"train.init_checkpoint={weights}"
    with pytest.raises(RuntimeError, match="another architecture.*mis-shaped.*lora"):
        run_main("--eval-only", *tiny_opts(synthetic, tmp_path, saved,
                                           "model.backbone.net.lora_rank=4"))
    with pytest.raises(RuntimeError, match="another architecture.*missing"):
        run_main("--eval-only", *tiny_opts(synthetic, tmp_path, saved,
                                           "model.backbone.net.slow.depth=10"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        run_main("--eval-only", *tiny_opts(synthetic, tmp_path, "train.init_checkpoint=/nonexistent/model.pth"))
    with pytest.raises(KeyError, match="unknown stitch id 99.*ids 0..13"):
        run_main("--eval-only", "--stitch", "0,99", *tiny_opts(synthetic, tmp_path, saved))
    with pytest.raises(FileNotFoundError, match="--stitch pareto needs"):
        run_main("--eval-only", "--stitch", "pareto", *tiny_opts(synthetic, tmp_path, saved))


def test_training_over_an_existing_run_is_refused_and_leaves_it_untouched(synthetic, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    files = {"last_checkpoint": b"model_final.pth", "model_final.pth": b"weights",
             "metrics.json": b'{"iteration": 0}\n', "log.txt": b"first run\n"}
    for name, content in files.items():
        (run / name).write_bytes(content)
    with pytest.raises(FileExistsError, match=r"already holds a training run \(last_checkpoint, metrics.json, "
                                              r"model_final.pth\): pass --resume .* another train.output_dir"):
        run_main(*tiny_opts(synthetic, str(run)))
    assert {p.name: p.read_bytes() for p in run.iterdir()} == files


def test_a_directory_a_training_run_holds_is_refused_naming_it(synthetic, tmp_path):
    from snnet_core.io.run_dir import RunDirInUseError
    from tests.test_core_run_dir import hold_in_child

    child = hold_in_child(tmp_path / "run")
    try:
        for flags in ((), ("--eval-only", "--stitch", "0")):
            with pytest.raises(RunDirInUseError, match=rf"in use by another run, the process pid {child.pid} on "):
                run_main(*flags, *tiny_opts(synthetic, str(tmp_path / "run")))
    finally:
        child.kill()
        child.wait()
    assert set(os.listdir(tmp_path / "run")) == {"run.lock", "run.lock.json"}  # the refused runs wrote nothing


def test_flags_after_the_overrides_are_a_clear_error(synthetic, tmp_path):
    with pytest.raises(ValueError, match=r"\['--eval-only'\] come after the key=value overrides: put flags before"):
        run_main(*tiny_opts(synthetic, tmp_path), "--eval-only")


def test_coco_json_problems_are_clear_errors(synthetic, tmp_path):
    with open(os.path.join(synthetic, "annotations", "instances_train.json")) as f:
        coco = json.load(f)
    bad = {
        "truncated": (json.dumps(coco)[:500], r"truncated.json' is not valid JSON .* truncated or corrupt"),
        "repeated": (json.dumps(dict(coco, images=coco["images"] + coco["images"][:2])),
                     r"repeated.json' lists 2 image id\(s\) more than once \(e.g. \[1, 2\]\)"),
        "undeclared": (json.dumps(dict(coco, categories=coco["categories"][:2])),
                       r"undeclared.json' has annotations of category ids \[3, 4, 5\]"),
        # detectron2 drops such boxes without a word
        "nan_box": (json.dumps(dict(coco, annotations=[dict(a, bbox=[float("nan")] + a["bbox"][1:]) if i in (0, 5)
                                                       else a for i, a in enumerate(coco["annotations"])])),
                    rf"nan_box.json' has 2 annotation\(s\) whose bbox is not 4 finite numbers .*images "
                    rf"{re.escape(str(sorted({coco['annotations'][i]['image_id'] for i in (0, 5)})))}"),
        "negative_box": (json.dumps(dict(coco, annotations=[dict(coco["annotations"][0], bbox=[1, 2, -3, 4])])),
                         r"negative_box.json' has 1 annotation\(s\) .*negative sizes"),
    }
    for name, (text, message) in bad.items():
        path = tmp_path / f"{name}.json"
        path.write_text(text)
        register_coco_json_datasets({f"bad_{name}": {"json_file": str(path), "image_root": synthetic + "/train"}})
        with pytest.raises(ValueError, match=message):
            DatasetCatalog.get(f"bad_{name}")
    assert [c["id"] for c in coco["categories"]] == [1, 2, 3, 4, 5] and coco["images"][0]["id"] == 1  # as named above


def test_a_training_set_without_usable_annotations_names_its_file_before_building_the_model(synthetic, tmp_path,
                                                                                          monkeypatch):
    with open(os.path.join(synthetic, "annotations", "instances_train.json")) as f:
        coco = json.load(f)
    crowd = tmp_path / "crowd.json"  # every annotation crowd: detectron2 drops every image, "No valid data found"
    crowd.write_text(json.dumps(dict(coco, annotations=[dict(a, iscrowd=1) for a in coco["annotations"][:3]])))
    monkeypatch.setattr(train_net.DetectionApp, "build_model", lambda self, cfg: pytest.fail("the model was built"))
    with pytest.raises(ValueError, match=rf"'.*crowd.json' has no image to train on: of its {len(coco['images'])} "
                                         rf"images, \d+ have no annotations and \d+ only crowd ones"):
        run_main(*tiny_opts(synthetic, str(tmp_path / "run"),
                            f"datasets.coco_json.synthetic_shapes_train.json_file={crowd}"))


def test_an_unreadable_image_during_ls_init_names_it_and_its_annotation_file(synthetic, tmp_path):
    root = tmp_path / "coco"
    shutil.copytree(synthetic, root)
    for image in (root / "train").iterdir():  # whichever images LS init reads first
        image.write_bytes(b"\x89PNG cut short")
    with pytest.raises(OSError, match=r"image '.*train/.*' \(image id \d+, listed in '.*instances_train.json'\) could "
                                      r"not be read \(UnidentifiedImageError: .*restore the file"):
        run_main(*tiny_opts(str(root), str(tmp_path / "run"), "train.max_iter=1"))


def test_an_unreadable_image_during_training_names_it_and_its_annotation_file(synthetic, tmp_path):
    root = tmp_path / "coco"
    shutil.copytree(synthetic, root)
    for image in (root / "train").iterdir():  # whichever images the first batch holds
        image.write_bytes(b"\x89PNG cut short")
    cfg = tiny_cfg(str(root), str(tmp_path / "run"))
    mapper = cfg.dataloader.train.mapper._target_
    loader = train_net.build_train_loader(cfg, seed=0, start_iter=0)
    with pytest.raises(OSError, match=r"image '.*coco/train/.*' \(image id \d+, listed in '.*coco/annotations/"
                                      r"instances_train.json'\) could not be read \(UnidentifiedImageError: .*restore "
                                      r"the file or remove the image from the annotation file"):
        next(iter(loader))
    assert cfg.dataloader.train.mapper._target_ == mapper  # the config itself is left as it was


def test_more_categories_than_classes_is_an_error(synthetic, tmp_path):
    cfg = tiny_cfg(synthetic, tmp_path, "model.roi_heads.num_classes=3")  # the synthetic set has 5
    with pytest.raises(ValueError, match=r"'synthetic_shapes_train' has 5 categories .*num_classes=3: set "
                                         r"model.roi_heads.num_classes=5"):
        train_net.build_train_loader(cfg, seed=0, start_iter=0)
    with pytest.raises(ValueError, match=r"'synthetic_shapes_val' has 5 categories"):
        train_net.do_test(cfg, instantiate(cfg.model), stitch_ids=[0])


def test_eval_of_a_truncated_checkpoint_names_the_file(synthetic, tmp_path):
    cfg = tiny_cfg(synthetic, tmp_path)
    StrictDetectionCheckpointer(instantiate(cfg.model), save_dir=str(tmp_path)).save("tiny")
    path = tmp_path / "tiny.pth"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(RuntimeError, match=r"checkpoint .*tiny.pth is truncated or corrupt"):
        run_main("--eval-only", *tiny_opts(synthetic, tmp_path, f"train.init_checkpoint={path}"))


def test_train_loader_resumes_at_any_iteration_with_the_same_batches(synthetic, tmp_path):
    cfg = tiny_cfg(synthetic, tmp_path)

    def batches(start_iter, count, num_workers=0):
        cfg.dataloader.train.num_workers = num_workers
        loader = train_net.build_train_loader(cfg, seed=3, start_iter=start_iter)
        return [[(d["file_name"], d["image"], d["instances"].gt_boxes.tensor) for d in batch]
                for batch in itertools.islice(loader, count)]

    def same(a, b):
        return all(x[0] == y[0] and torch.equal(x[1], y[1]) and torch.equal(x[2], y[2])
                   for p, q in zip(a, b) for x, y in zip(p, q))

    torch.manual_seed(0)
    uninterrupted = batches(0, 12)  # 1.5 epochs of 16 images in batches of 2
    assert len({d[0] for d in itertools.chain(*uninterrupted)}) == 16  # a shuffled stream over the 16 images
    torch.manual_seed(1)  # the global RNGs play no part
    assert same(batches(5, 7), uninterrupted[5:]) and same(batches(9, 3), uninterrupted[9:])
    assert same(batches(5, 4, num_workers=2), uninterrupted[5:9])


def test_backbone_lora_rank_is_checked_and_it_and_ls_init_images_0_reach_training(synthetic, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(train_net, "ls_init_detector", lambda *a: calls.append(a))
    out = str(tmp_path / "run")
    check_backbone_lora_rank_and_ls_init_off(lambda *opts: run_main(*tiny_opts(synthetic, out, *opts)), out,
                                             "model.backbone.net.backbone_lora_rank", "backbone.net.snnet.anchors.")
    assert calls == []  # no LS solve: the stitching layers keep PyTorch's default init


def test_snnetv1_space_trains_uniformly_and_eval_only_and_resume_keep_the_recorded_space(synthetic, tmp_path,
                                                                                       monkeypatch):
    out = str(tmp_path / "v1")
    v1 = check_snnetv1_space_trains_uniformly(lambda *opts: run_main(*tiny_opts(synthetic, out, *opts)), out,
                                              "model.backbone.net.", 3, ["SF"], "ROS")
    with monkeypatch.context() as m:  # another sampler: refused before any work
        m.setattr(train_net.DetectionApp, "build_model", lambda *a: pytest.fail("the model was built"))
        with pytest.raises(ValueError, match=r"--resume: .* stitch space or sampler: snnet.sampling=ros \(trained "
                                             r"with uniform\)\. Resume with the values it was trained with"):
            run_main("--resume", *tiny_opts(synthetic, out, "train.max_iter=4", v1[0], v1[2]))
    # --eval-only under the tiny config (all five route types): the space the checkpoint was trained in
    record = run_main("--eval-only", "--stitch", "all", *tiny_opts(synthetic, out, v1[2]))
    assert sorted(map(int, record["stitches"])) == FS_IDS
