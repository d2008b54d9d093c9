#!/usr/bin/env python
"""SN-Netv2 + ViTDet Mask R-CNN benchmarks with DeiT3-S/L shapes (random init: FLOPs and times do not
depend on the weights). Uses ``configs/COCO/mask_rcnn_snnetv2_deit3_s_l_100ep.py`` as is, without weights.

1. Per-stitch GFLOPs (fvcore, multiply-adds) of the whole detector at 1024x1024 (stitched ViT with window
   attention + SimpleFeaturePyramid + RPN + ROI heads at 1000 proposals / 100 detections), the head's
   share and the two anchors (the range of the paper's Figure 9 x-axis).
2. CPU latency of the detector (batch 1, eval, median of ``--repeats``) for ``--latency-stitches``
   stitches spread over the FLOPs range, at ``--latency-size`` (1024 is minutes per DeiT3-L run on CPU).
3. One training step (forward, backward, AdamW) of a stitch inside the SN-Net vs the same network trained
   alone (the exported stitch, LoRA merged, with the same Mask R-CNN), at ``--train-size``, as a ratio of
   medians; the two alternate (ABBA...) so that load drifts on a shared machine hit both alike.
4. Per-stitch COCO evaluation sharing route prefixes vs the per-stitch loop: backbone GFLOPs of all 134
   stitches at ``--flops-size`` with sharing / without, per group size; and wall time of
   ``evaluate_stitch_group`` (one pass, one COCOEvaluator per stitch) vs one ``inference_on_dataset`` per
   stitch, for ``--eval-stitches`` consecutive stitches of the trie order on ``--eval-images`` synthetic
   COCO-format images of ``--eval-size`` px (data loading, model, pycocotools evaluation all included).

    python benchmarks/bench_vitdet.py [--latency-stitches 5] [--latency-size 512] [--train-size 256] \
        [--repeats 4] [--eval-stitches 8] [--eval-images 4] [--eval-size 256] [--output-dir output/bench_vitdet]
"""
from __future__ import annotations

import argparse
import copy
import csv
import json
import os
import statistics
import sys
import time
from typing import Callable, Dict, List

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from detectron2.config import instantiate  # noqa: E402
from detectron2.data import DatasetCatalog, DatasetMapper, build_detection_test_loader  # noqa: E402
from detectron2.data import transforms as T  # noqa: E402
from detectron2.evaluation import COCOEvaluator  # noqa: E402
from detectron2.structures import BitMasks, Boxes, Instances  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402

from datasets.make_synthetic_coco import make_synthetic_coco  # noqa: E402
from projects.snnet_vitdet.backbone import StitchedViTDetBackbone  # noqa: E402
from projects.snnet_vitdet.data import register_coco_json_datasets  # noqa: E402
from projects.snnet_vitdet.evaluation import (  # noqa: E402
    detector_flops_table,
    evaluate_model,
    evaluate_stitch_group,
)
from snnet_core import export_stitch, prefix_sharing_cost  # noqa: E402
from snnet_core.io.config_io import load_config_file  # noqa: E402
from snnet_core.evaluation.prefix_trie import route_step_gflops, stitch_groups  # noqa: E402

CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                      "projects", "snnet_vitdet", "configs", "COCO", "mask_rcnn_snnetv2_deit3_s_l_100ep.py")


def median_seconds(fn: Callable[[], None], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def spread(ids_by_cost: List[int], count: int) -> List[int]:
    """``count`` ids evenly spaced over a cost-sorted list (both ends included)."""
    if count >= len(ids_by_cost):
        return ids_by_cost
    step = (len(ids_by_cost) - 1) / (count - 1)
    return sorted({ids_by_cost[round(i * step)] for i in range(count)}, key=ids_by_cost.index)


def build_detector(image_size: int, num_classes: int = 80) -> torch.nn.Module:
    cfg = load_config_file(CONFIG)
    cfg.model.roi_heads.num_classes = num_classes
    for vit in (cfg.model.backbone.net.fast, cfg.model.backbone.net.slow):
        vit.pretrained = None  # random weights; the position tables stay at 224, as in the recipe
    cfg.model.backbone.net.img_size = image_size  # global rel-pos tables for this input size
    cfg.model.backbone.square_pad = image_size
    return instantiate(cfg.model)


class ExportedViTDetBackbone(torch.nn.Module):
    """An exported stitch as the ViTDet backbone (the network trained alone)."""

    def __init__(self, like: StitchedViTDetBackbone, stitch_id: int):
        super().__init__()
        self.stitch = export_stitch(like.snnet, stitch_id)
        self._shape = like.output_shape()

    def output_shape(self):
        return self._shape

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        return {"last_feat": self.stitch(x).feature_maps()[0]}


def flops_section(model, output_dir: str, size: int):
    print(f"\n[1] GFLOPs of DeiT3-S/L + Mask R-CNN (ViTDet) at {size}x{size} (fvcore multiply-adds, LoRA merged)")
    start = time.perf_counter()
    table = detector_flops_table(model, (size, size), cache_dir=output_dir)
    space = model.backbone.net.space
    ids = sorted(space.ids, key=lambda i: (table.gflops[i], i))
    with open(os.path.join(output_dir, f"vitdet_gflops_{size}.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "type", "route", "gflops", "params_m"])
        for i in ids:
            writer.writerow([i, space[i].kind, space[i].route, f"{table.gflops[i]:.1f}", f"{table.params_m[i]:.1f}"])
    g = [table.gflops[i] for i in ids]
    print(f"  {len(ids)} stitches, {g[0]:.0f} - {g[-1]:.0f} GFLOPs (median {statistics.median(g):.0f}); "
          f"counted in {time.perf_counter() - start:.0f}s")
    print(f"  head (pyramid + RPN + ROI heads): {table.head_gflops:.0f} GFLOPs, {table.head_params_m:.1f}M params")
    for name, sid in (("DeiT3-S", 0), ("DeiT3-L", 1)):
        backbone_gflops = table.gflops[sid] - table.head_gflops
        print(f"  {name} anchor: {table.gflops[sid]:.0f} GFLOPs ({backbone_gflops:.0f} backbone), "
              f"{table.params_m[sid]:.1f}M params")
    return table


def latency_section(table, count: int, size: int, repeats: int) -> List[dict]:
    print(f"\n[2] CPU latency, batch 1, {size}x{size}, {torch.get_num_threads()} thread(s), median of {repeats}")
    model = build_detector(size).eval()
    backbone = model.backbone.net
    ids = spread(sorted(backbone.space.ids, key=lambda i: (table.gflops[i], i)), count)
    inputs = [{"image": torch.randint(0, 255, (3, size, size), dtype=torch.uint8), "height": size, "width": size}]
    rows = []
    for sid in ids:
        backbone.set_stitch(sid)
        with torch.no_grad():
            seconds = median_seconds(lambda: model(inputs), repeats)
        route = backbone.space[sid].route
        rows.append({"id": sid, "route": route, "gflops_1024": table.gflops[sid], "seconds": seconds})
        print(f"  stitch {sid:3d} {route:28s} {table.gflops[sid]:7.0f} GFLOPs@1024  {seconds:6.2f} s")
    return rows


def synthetic_batch(size: int) -> List[dict]:
    """One image with three boxes/masks (training targets do not change the cost much)."""
    instances = Instances((size, size))
    boxes = torch.tensor([[10, 10, size / 2, size / 2], [size / 3, size / 4, size - 5, size - 20],
                          [5, size / 2, size / 3, size - 1]])
    instances.gt_boxes = Boxes(boxes)
    instances.gt_classes = torch.tensor([1, 5, 17])
    masks = torch.zeros(3, size, size, dtype=torch.bool)
    for m, (x0, y0, x1, y1) in zip(masks, boxes.int().tolist()):
        m[y0:y1, x0:x1] = True
    instances.gt_masks = BitMasks(masks)
    return [{"image": torch.randint(0, 255, (3, size, size), dtype=torch.uint8), "instances": instances,
             "height": size, "width": size}]


def train_step(model, batch) -> Callable[[], None]:
    """One training step of ``model`` on ``batch`` (forward, backward, AdamW), the same draws every call."""
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step():
        torch.manual_seed(0)
        with EventStorage(0):
            loss = sum(model(batch).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return step


def alternating_medians(fns: Dict[str, Callable[[], None]], repeats: int) -> Dict[str, float]:
    """Median seconds of each function over ``repeats`` runs after a warm-up, run in alternating order
    (A B, B A, A B, ...) so that a load change on a shared machine affects both alike."""
    names = list(fns)
    for name in names:
        fns[name]()
    times = {name: [] for name in names}
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            start = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def training_section(table, size: int, repeats: int) -> dict:
    print(f"\n[3] one training step at {size}x{size}: stitch inside the SN-Net vs the same network alone "
          f"(median of {repeats}, alternating)")
    model = build_detector(size)
    backbone = model.backbone.net
    ids = sorted(backbone.space.ids, key=lambda i: (table.gflops[i], i))
    sid = ids[len(ids) // 2]  # a mid-FLOPs stitch
    backbone.set_stitch(sid)
    batch = synthetic_batch(size)
    alone = copy.deepcopy(model)
    alone.backbone.net = ExportedViTDetBackbone(backbone, sid)
    seconds = alternating_medians({"snnet": train_step(model, batch), "alone": train_step(alone, batch)}, repeats)
    snnet_s, alone_s = seconds["snnet"], seconds["alone"]
    print(f"  stitch {sid} ({backbone.space[sid].route}): SN-Net {snnet_s:.2f} s, alone {alone_s:.2f} s, "
          f"ratio {snnet_s / alone_s:.2f}")
    return {"id": sid, "route": backbone.space[sid].route, "snnet_s": snnet_s, "alone_s": alone_s,
            "ratio": snnet_s / alone_s}


def backbone_step_gflops(backbone: StitchedViTDetBackbone, size: int) -> Callable[[str], float]:
    """``cost(route step name)`` at ``size``x``size`` (``route_step_gflops``), windowed and global blocks apart."""
    snnet = backbone.snnet
    return route_step_gflops(snnet, (size, size), lambda a, i: snnet.anchors[a].blocks[i].attn.window_size)

def synthetic_test_loader(root: str, num_images: int, size: int):
    """``num_images`` synthetic COCO-format shapes of ``size`` px (``datasets/make_synthetic_coco.py``, seed 0),
    registered as ``bench_shapes_val``, through the test-time resize to ``size``."""
    make_synthetic_coco(root, num_train=1, num_val=num_images, image_size=size, max_objects=3, seed=0)
    register_coco_json_datasets({"bench_shapes_val": {"json_file": os.path.join(root, "annotations",
                                                                                "instances_val.json"),
                                                      "image_root": os.path.join(root, "val")}})
    mapper = DatasetMapper(is_train=False, augmentations=[T.ResizeShortestEdge(size, size)], image_format="RGB")
    return build_detection_test_loader(dataset=DatasetCatalog.get("bench_shapes_val"), mapper=mapper)


def sharing_section(output_dir: str, flops_size: int, num_stitches: int, num_images: int, size: int) -> dict:
    print("\n[4] per-stitch evaluation sharing route prefixes (DeiT3-S/L + Mask R-CNN, random weights)")
    model = build_detector(flops_size).eval()
    backbone = model.backbone.net
    cost = backbone_step_gflops(backbone, flops_size)
    ids = backbone.space.ids
    by_group = {}
    for group_size in (1, 4, 8, 16, 32, len(ids)):
        groups = stitch_groups(backbone.snnet, ids, group_size)
        shared = sum(prefix_sharing_cost(backbone.snnet, cost, g)[0] for g in groups)
        by_group[group_size] = shared / prefix_sharing_cost(backbone.snnet, cost, ids)[1]
    print(f"  backbone GFLOPs of all {len(ids)} stitches at {flops_size}x{flops_size}, shared / stitch by stitch, "
          "by group size: " + ", ".join(f"{g}: {r:.3f}" for g, r in by_group.items()))

    model = build_detector(size, num_classes=5).eval()  # the synthetic shapes' 5 classes
    model.roi_heads.box_predictor.test_score_thresh = 0.0  # random weights: keep the full detection budget
    backbone = model.backbone.net
    subset = stitch_groups(backbone.snnet, ids, num_stitches)[len(ids) // num_stitches // 2]  # one group mid-trie
    loader = synthetic_test_loader(os.path.join(output_dir, "synthetic_coco"), num_images, size)
    evaluator = COCOEvaluator("bench_shapes_val", tasks=("bbox", "segm"), use_fast_impl=False)
    shared, naive = prefix_sharing_cost(backbone.snnet, backbone_step_gflops(backbone, size), subset)
    predicted = shared / naive

    def loop():
        for sid in subset:
            backbone.set_stitch(sid)
            evaluate_model(model, loader, evaluator)

    seconds = alternating_medians({"shared": lambda: evaluate_stitch_group(model, loader, evaluator, subset),
                                   "loop": loop}, 1)
    ratio = seconds["shared"] / seconds["loop"]
    print(f"  wall time, stitches {subset} on {num_images} images of {size}x{size} (batch 1; loading, model, "
          f"pycocotools): shared {seconds['shared']:.1f} s, per-stitch loop {seconds['loop']:.1f} s, "
          f"ratio {ratio:.2f} (backbone GFLOPs ratio of these stitches {predicted:.2f})")
    return {"gflops_ratio_by_group_size": by_group, "stitches": subset, "images": num_images, "size": size,
            "shared_s": seconds["shared"], "loop_s": seconds["loop"], "wall_ratio": ratio,
            "backbone_gflops_ratio": predicted}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flops-size", type=int, default=1024)
    parser.add_argument("--latency-stitches", type=int, default=5)
    parser.add_argument("--latency-size", type=int, default=512)
    parser.add_argument("--train-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--eval-stitches", type=int, default=8)
    parser.add_argument("--eval-images", type=int, default=4)
    parser.add_argument("--eval-size", type=int, default=256)
    parser.add_argument("--sections", default="1,2,3,4", help="which sections to run, e.g. 3,4")
    parser.add_argument("--output-dir", default="output/bench_vitdet")
    args = parser.parse_args()
    os.makedirs(args.output_dir, exist_ok=True)
    torch.manual_seed(0)
    sections = {int(s) for s in args.sections.split(",")}
    table = flops_section(build_detector(args.flops_size), args.output_dir, args.flops_size)  # cached after a run
    results = {"gflops": {"size": args.flops_size, "min": min(table.gflops.values()), "max": max(table.gflops.values()),
                          "head": table.head_gflops, "anchors": [table.gflops[0], table.gflops[1]]}}
    if 2 in sections:
        results["latency"] = latency_section(table, args.latency_stitches, args.latency_size, args.repeats)
    if 3 in sections:
        results["training_step"] = training_section(table, args.train_size, args.repeats)
    if 4 in sections:
        results["shared_prefix_evaluation"] = sharing_section(args.output_dir, args.flops_size, args.eval_stitches,
                                                              args.eval_images, args.eval_size)
    with open(os.path.join(args.output_dir, "bench_vitdet.json"), "w") as f:
        json.dump(results, f, indent=1)
    print(f"\nresults in {args.output_dir}/bench_vitdet.json")


if __name__ == "__main__":
    main()
