#!/usr/bin/env python
"""SN-Netv2 + DPT benchmarks with DeiT3-S/L shapes (random init: FLOPs and times do not depend on weights).

1. Per-stitch GFLOPs (fvcore, multiply-adds) of DeiT3-S/L + DPT at 480x640, with the DPT head's share, and
   the anchors' backbone GFLOPs at 512x512 beside the paper's Table 1 (SETR on ADE20K: 32 / 363 G), which
   checks the counting convention.
2. CPU latency (batch 1, 480x640, exported stitch with LoRA merged, median of ``--repeats``) beside GFLOPs
   for ``--latency-stitches`` stitches spread over the FLOPs range (``all``: every stitch; slow on CPU).
3. Training step time of a stitch inside the SN-Net (ROS-sampled stitches; LoRA stitching layers, AdamW
   over the whole SN-Net) vs the same network trained alone (the exported stitch + DPT head), as a ratio.
4. The ``--stitch all`` evaluation (``evaluate_stitch_report``, flip TTA, report files written) of one group
   of ``--eval-stitches`` stitches on ``--eval-images`` fixed random 480x640 frames: mean wall time stitch by
   stitch / as one group sharing route prefixes over ``--eval-repeats`` runs each (A B B A), and this process's
   CPU time (steadier on a shared machine). The group is the one (of the engine's route-order groups of that
   size) whose FLOPs ratio is closest to that of all 134 stitches in groups of ``--group-size``; both predicted
   ratios are printed beside the measured ones.

    python benchmarks/bench_dpt.py [--latency-stitches 8] [--repeats 3] [--train-size 224 288] \
        [--eval-stitches 4] [--eval-images 1] [--eval-repeats 2] [--group-size 17] \
        [--sections [latency] [train] [eval]] [--output-dir output/bench_dpt]
"""
from __future__ import annotations

import argparse
import csv
import os
import shutil
import statistics
import sys
import time
from typing import Callable, Dict, List, Sequence, Tuple

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from projects.snnet_dpt.evaluation import evaluate_stitch_report  # noqa: E402
from projects.snnet_dpt.training import build_optimizer  # noqa: E402
from snnet_core.evaluation.prefix_trie import route_step_gflops, stitch_groups  # noqa: E402
from projects.snnet_dpt.export import export_depth_model  # noqa: E402
from projects.snnet_dpt.loss import SILogLoss  # noqa: E402
from projects.snnet_dpt.model import DPTDepthModel, ModelSpec, build_model, depth_flops_table  # noqa: E402
from projects.snnet_dpt.train import DEFAULT_CONFIG, load_config, recipe_from_config  # noqa: E402
from snnet_core import (ResourceConstrainedSampler, build_flops_table, count_gflops,  # noqa: E402
                        prefix_sharing_cost)
from snnet_core.io.atomic_io import write_atomic  # noqa: E402
from snnet_core.distributed import DistContext  # noqa: E402

PAPER_SETR_512 = {"DeiT3-S": 32.0, "DeiT3-L": 363.0}  # Table 1 FLOPs (G), SETR naive head, 512x512


def median_seconds(fns: Sequence[Callable[[], None]], repeats: int) -> List[float]:
    """Median time of each function; one warm-up call each, then the calls interleaved (A B A B ...) so
    that a change of machine load affects all of them alike."""
    for fn in fns:
        fn()
    times: List[List[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, t in zip(fns, times):
            start = time.perf_counter()
            fn()
            t.append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def spread(ids_by_cost: List[int], count: int) -> List[int]:
    """``count`` ids evenly spaced over a cost-sorted list (both ends included)."""
    if count >= len(ids_by_cost):
        return ids_by_cost
    step = (len(ids_by_cost) - 1) / (count - 1)
    return sorted({ids_by_cost[round(i * step)] for i in range(count)}, key=ids_by_cost.index)


def flops_section(model: DPTDepthModel, output_dir: str):
    print("\n[1] GFLOPs of DeiT3-S/L + DPT at 480x640 (fvcore multiply-adds, LoRA merged)")
    table = depth_flops_table(model, (480, 640), cache_dir=output_dir)
    space = model.backbone.space
    ids = sorted(space.ids, key=lambda i: (table.gflops[i], i))
    path = os.path.join(output_dir, "dpt_gflops_480x640.csv")

    def write_csv(f) -> None:
        writer = csv.writer(f)
        writer.writerow(["id", "type", "route", "gflops", "backbone_gflops", "params_m"])
        for i in ids:
            writer.writerow([i, space[i].kind, space[i].route, f"{table.gflops[i]:.2f}",
                             f"{table.gflops[i] - table.head_gflops:.2f}", f"{table.params_m[i]:.1f}"])

    write_atomic(path, write_csv)
    g = [table.gflops[i] for i in ids]
    print(f"{len(ids)} stitches: {min(g):.1f} - {max(g):.1f} GFLOPs (DPT head {table.head_gflops:.1f} G, "
          f"{table.head_params_m:.1f} M params, in every stitch); table: {path}")
    print(f"DeiT3-S + DPT {table.gflops[0]:.1f} G ({table.params_m[0]:.1f} M params), "
          f"DeiT3-L + DPT {table.gflops[1]:.1f} G ({table.params_m[1]:.1f} M params)")
    print("GFLOPs quantiles (min, 25%, 50%, 75%, max): "
          + ", ".join(f"{g[round(q * (len(g) - 1))]:.1f}" for q in (0, 0.25, 0.5, 0.75, 1)))
    backbone_512 = build_flops_table(model.backbone, (512, 512), mode="features")
    for name, sid in (("DeiT3-S", 0), ("DeiT3-L", 1)):
        print(f"{name} backbone at 512x512: {backbone_512.gflops[sid]:.1f} G (paper Table 1, SETR: "
              f"{PAPER_SETR_512[name]:.0f} G)")
    return table, ids


@torch.no_grad()
def latency_section(model: DPTDepthModel, table, ids: List[int], count: int, repeats: int) -> None:
    chosen = ids if count <= 0 else spread(ids, count)
    print(f"\n[2] CPU latency, batch 1, 480x640, {torch.get_num_threads()} threads, exported stitches, median of "
          f"{repeats} ({len(chosen)} of {len(ids)} stitches)")
    print(f"{'id':>4} {'type':<6} {'route':<32} {'GFLOPs':>8} {'ms':>9} {'GFLOP/s':>8}")
    x = torch.randn(1, 3, 480, 640)
    for sid in chosen:
        exported = export_depth_model(model, sid).eval()
        seconds, = median_seconds([lambda: exported(x)], repeats)
        stitch = model.backbone.space[sid]
        print(f"{sid:>4} {stitch.kind:<6} {stitch.route:<32} {table.gflops[sid]:>8.1f} {seconds * 1e3:>9.0f} "
              f"{table.gflops[sid] / seconds:>8.1f}")


def train_step(model: DPTDepthModel, optimizer: torch.optim.Optimizer, images, depths, loss_fn) -> None:
    optimizer.zero_grad(set_to_none=True)
    loss_fn(model(images), depths, 10 ** 6).backward()
    optimizer.step()


def training_section(model: DPTDepthModel, table, size, batch: int, samples: int, repeats: int) -> None:
    print(f"\n[3] training step, batch {batch} at {size[0]}x{size[1]}, {torch.get_num_threads()} threads: "
          f"stitch inside the SN-Net vs the same network alone (median of {repeats})")
    print(f"{'id':>4} {'type':<6} {'route':<32} {'GFLOPs@480x640':>14} {'SN-Net s':>9} {'alone s':>8} {'ratio':>6}")
    sampler = ResourceConstrainedSampler(table.gflops, step=10.0, seed=0)
    stitches = []
    iteration = 0
    while len(stitches) < samples:  # distinct ROS draws, in draw order
        sid = sampler.sample(iteration)
        iteration += 1
        if sid not in stitches:
            stitches.append(sid)
    torch.manual_seed(0)
    images = torch.randn(batch, 3, *size)
    depths = torch.rand(batch, 1, *size) * 9 + 0.5
    loss_fn = SILogLoss()
    recipe = recipe_from_config(load_config(DEFAULT_CONFIG, []))  # the paper recipe's optimizer groups
    snnet_model = model.train()
    snnet_opt = build_optimizer(snnet_model, recipe)
    ratios = []
    for sid in stitches:
        snnet_model.backbone.set_stitch(sid)
        alone_model = export_depth_model(model, sid).train()
        alone_opt = torch.optim.AdamW(alone_model.parameters(), lr=recipe.lr)
        inside, alone = median_seconds([lambda: train_step(snnet_model, snnet_opt, images, depths, loss_fn),
                                        lambda: train_step(alone_model, alone_opt, images, depths, loss_fn)], repeats)
        ratios.append(inside / alone)
        stitch = model.backbone.space[sid]
        print(f"{sid:>4} {stitch.kind:<6} {stitch.route:<32} {table.gflops[sid]:>14.1f} {inside:>9.2f} "
              f"{alone:>8.2f} {ratios[-1]:>6.3f}")
    print(f"median ratio SN-Net / alone: {statistics.median(ratios):.3f}")


class _StageProbe(torch.nn.Module):
    """``forward(tokens)``: the head's reassembly of one stage on a fixed grid, for an fvcore trace."""

    def __init__(self, model: DPTDepthModel, stage: int, grid: Tuple[int, int]):
        super().__init__()
        self.head, self.stage, self.grid = model.head, stage, grid

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head.reassemble_stage(self.stage, tokens, self.grid, 1)


def predicted_ratio(model: DPTDepthModel, step_cost: Callable[[str], float], head_gflops: float,
                    stage_gflops: Sequence[float], groups: Sequence[Sequence[int]]) -> float:
    """Backbone + head GFLOPs of evaluating ``groups`` with shared route prefixes / stitch by stitch: the grouped
    evaluation runs each trie node once per group and reassembles each distinct dense feature of a group once
    (``stage_gflops`` per stage), the rest of the head once per stitch; dense-feature projections are left out."""
    snnet = model.backbone
    shared = naive = 0.0
    for group in groups:
        backbone_shared, backbone_naive = prefix_sharing_cost(snnet, step_cost, group)
        features = {(id(plan.embed), tuple(plan.layer_names[:position + 1]), tap.stage)
                    for plan in map(snnet.plan, group) for position, taps in plan.taps.items() for tap in taps}
        shared += backbone_shared + (head_gflops - sum(stage_gflops)) * len(group) + sum(
            stage_gflops[stage] for *_, stage in features)
        naive += backbone_naive + head_gflops * len(group)
    return shared / naive


def evaluation_section(model: DPTDepthModel, table, count: int, images: int, group_size: int, repeats: int,
                       output_dir: str) -> None:
    snnet = model.backbone
    step_cost = route_step_gflops(snnet, (480, 640))
    grid = (480 // snnet.patch_size, 640 // snnet.patch_size)
    tokens = torch.zeros(1, 1 + grid[0] * grid[1], model.head.in_channels)
    stage_gflops = [count_gflops(_StageProbe(model, stage, grid), (tokens,))
                    for stage in range(len(model.head.reassemble))]
    everything = predicted_ratio(model, step_cost, table.head_gflops, stage_gflops,
                                 stitch_groups(snnet, snnet.space.ids, group_size))
    candidates = [g for g in stitch_groups(snnet, snnet.space.ids, count) if len(g) == count]
    predicted = {tuple(g): predicted_ratio(model, step_cost, table.head_gflops, stage_gflops, [g])
                 for g in candidates}
    chosen = list(min(predicted, key=lambda g: abs(predicted[g] - everything)))
    print(f"\n[4] --stitch all evaluation (evaluate_stitch_report, flip TTA, batch 1), {images} random 480x640 frames, "
          f"{torch.get_num_threads()} threads: the group of {count} stitches (route order, as the engine groups them) "
          f"whose FLOPs ratio is closest to that of all {len(snnet.space)}: {chosen}")
    generator = torch.Generator().manual_seed(0)
    loader = [(torch.randn(1, 3, 480, 640, generator=generator),
               torch.rand(1, 1, 480, 640, generator=generator) * 9 + 0.5) for _ in range(images)]
    modes = {"stitch by stitch": None, "shared prefixes": len(chosen)}
    clocks = {"wall": time.perf_counter, "CPU": time.process_time}  # CPU: this process, less sensitive to others
    seconds: Dict[Tuple[str, str], List[float]] = {(mode, clock): [] for mode in modes for clock in clocks}
    rows = {}
    for repeat in range(repeats):  # A B B A ...: a drift of the machine's load affects both modes alike
        for mode in (list(modes) if repeat % 2 == 0 else list(modes)[::-1]):
            eval_dir = os.path.join(output_dir, "eval_" + ("each" if modes[mode] is None else "grouped"))
            shutil.rmtree(eval_dir, ignore_errors=True)
            start = {clock: read() for clock, read in clocks.items()}
            record = evaluate_stitch_report(model, loader, chosen, table, eval_dir, "bench", DistContext(), flip=True,
                                            group_size=modes[mode])
            for clock, read in clocks.items():
                seconds[mode, clock].append(read() - start[clock])
            rows[mode] = record["stitches"]
    for clock in clocks:
        shared, each = (statistics.mean(seconds[mode, clock]) for mode in ("shared prefixes", "stitch by stitch"))
        runs = "; ".join(f"{mode} {', '.join(f'{t:.1f}' for t in seconds[mode, clock])}" for mode in modes)
        print(f"{clock} time: {shared:.1f} s with shared prefixes / {each:.1f} s stitch by stitch = "
              f"{shared / each:.3f} (runs: {runs})")
    print(f"FLOPs predict {predicted[tuple(chosen)]:.3f} for this group (target <= 0.5); same rows in both modes: "
          f"{rows['shared prefixes'] == rows['stitch by stitch']}")
    print(f"FLOPs predict {everything:.3f} for all {len(snnet.space)} stitches in groups of {group_size}, "
          f"{predicted_ratio(model, step_cost, table.head_gflops, stage_gflops, [snnet.space.ids]):.3f} as one group "
          f"(backbone prefixes and the head's reassembly ({sum(stage_gflops):.1f} G) of a shared feature run once, "
          f"the rest of the DPT head ({table.head_gflops - sum(stage_gflops):.1f} G) once per stitch; range over the "
          f"groups of {count}: {min(predicted.values()):.3f} - {max(predicted.values()):.3f})")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--latency-stitches", type=int, default=8, help="stitches to time (0: all 134)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--train-size", type=int, nargs=2, default=(224, 288), metavar=("H", "W"))
    p.add_argument("--train-batch", type=int, default=2)
    p.add_argument("--train-stitches", type=int, default=3, help="ROS-sampled stitches to time in training")
    p.add_argument("--eval-stitches", type=int, default=4, help="stitches of the timed --stitch all evaluation")
    p.add_argument("--eval-images", type=int, default=1, help="480x640 frames of the --stitch all evaluation")
    p.add_argument("--eval-repeats", type=int, default=2, help="timed runs of each mode, in the order A B B A ...")
    p.add_argument("--group-size", type=int, default=17, help="test.stitch_group_size of the FLOPs prediction")
    p.add_argument("--output-dir", default="output/bench_dpt")
    p.add_argument("--sections", nargs="*", choices=("latency", "train", "eval"), default=("latency", "train", "eval"),
                   help="timed sections to run after the FLOPs table (none: the FLOPs table only)")
    args = p.parse_args()
    os.makedirs(args.output_dir, exist_ok=True)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}")
    torch.manual_seed(0)
    model = build_model(ModelSpec(lora_rank=4)).eval()  # DeiT3-S/L, DPT head, random init
    table, ids = flops_section(model, args.output_dir)
    if "latency" in args.sections:
        latency_section(model, table, ids, args.latency_stitches, args.repeats)
    if "train" in args.sections:
        training_section(model, table, tuple(args.train_size), args.train_batch, args.train_stitches, args.repeats)
    if "eval" in args.sections:
        evaluation_section(model, table, args.eval_stitches, args.eval_images, args.group_size, args.eval_repeats,
                           args.output_dir)
    print(f"\nload average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
