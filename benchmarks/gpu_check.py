#!/usr/bin/env python
"""GPU check of both projects at their real sizes (DeiT3-S/L anchors, random weights, synthetic inputs), in a few
minutes on one GPU:

1. a few AMP training steps of each SN-Net as its project trains it: depth, ``projects/snnet_dpt/configs/
   dpt_snnetv2_deit3_s_l_nyu.py`` through ``training.train_one_epoch`` (per-GPU batch ``--depth-batch`` at the
   config's crop size); detection, ``projects/snnet_vitdet/configs/COCO/mask_rcnn_snnetv2_deit3_s_l_100ep.py``
   through detectron2's ``AMPTrainer`` (one image per GPU at the config's 1024x1024). The steps cycle through the
   large anchor, a mid-route stitch and the small anchor. Reported: median and slowest step time after the
   first step, peak GPU memory, and whether the loss stayed finite;
2. the latency of ``--stitches`` stitches deployed alone (``export_stitch``, the projects' ``time_*_stitches``
   on ``snnet_core.evaluation.latency``), batch 1 at the configs' evaluation sizes, AMP;
3. with two or more GPUs, a 2-process NCCL depth evaluation: each rank evaluates half of ``--nccl-images``
   synthetic 480x640 frames and ``evaluation.evaluate`` all-reduces the metrics, which must equal the
   one-process ``evaluation.evaluate_group`` on all frames; with one GPU the row says "skipped".

It prints one table and exits 1 if a loss was not finite or the NCCL check failed. Without CUDA it prints one
line saying so and exits 0 (the CPU paths of these functions are exercised by ``tests/test_gpu_check.py`` with the
tiny synthetic configs).

    python benchmarks/gpu_check.py [--steps 5] [--stitches 4] [--runs 20] [--depth-batch 4] [--nccl-images 4]
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import socket
import statistics
import sys
import tempfile
import time
import warnings
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated", category=FutureWarning)  # fvcore
warnings.filterwarnings("ignore", message=r"`torch\.cuda\.amp\.", category=FutureWarning)  # detectron2's AMPTrainer
from detectron2.config import LazyConfig, instantiate  # noqa: E402
from detectron2.engine import AMPTrainer, SimpleTrainer  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402

from benchmarks.bench_vitdet import synthetic_batch  # noqa: E402
from projects.snnet_dpt.evaluation import evaluate, evaluate_group, time_depth_stitches  # noqa: E402
from projects.snnet_dpt.loss import SILogLoss  # noqa: E402
from projects.snnet_dpt.model import DPTDepthModel, build_model  # noqa: E402
from projects.snnet_dpt.train import load_config, model_spec, recipe_from_config  # noqa: E402
from projects.snnet_dpt.training import build_optimizer, build_scheduler, train_one_epoch  # noqa: E402
from projects.snnet_vitdet.evaluation import stitched_detector_backbone, time_detector_stitches  # noqa: E402
from snnet_core.distributed import DistContext  # noqa: E402
from snnet_core.evaluation.latency_options import LatencyOptions  # noqa: E402
from snnet_core.model.stitch_space import StitchSpace  # noqa: E402

DEPTH_CONFIG = os.path.join(REPO, "projects", "snnet_dpt", "configs", "dpt_snnetv2_deit3_s_l_nyu.py")
DETECTION_CONFIG = os.path.join(REPO, "projects", "snnet_vitdet", "configs", "COCO",
                                "mask_rcnn_snnetv2_deit3_s_l_100ep.py")
NCCL_TOLERANCE = 1e-3  # relative: the ranks' per-image metrics are those of the one process, summed in another order


@dataclasses.dataclass
class StepCheck:
    """Training steps of one SN-Net: seconds per step after the first (median, slowest), peak GPU memory in GiB
    (``None`` on CPU), the last loss and whether every loss was finite."""

    median_s: float
    max_s: float
    peak_gib: Optional[float]
    loss: float
    finite: bool


class StitchCycle:
    """A stitch sampler (``sample(iteration)``, as ``ResourceConstrainedSampler``) cycling through ``stitches``."""

    def __init__(self, stitches: Sequence[int]):
        self.stitches = list(stitches)

    def sample(self, iteration: int) -> int:
        return self.stitches[iteration % len(self.stitches)]


def trained_stitches(space: StitchSpace) -> List[int]:
    """The large anchor (the peak memory), a mid-route stitch and the small anchor."""
    fast, slow = space.anchor_ids()
    return [slow, space.ids[len(space.ids) // 2], fast]


def timed_stitches(space: StitchSpace, count: int) -> List[int]:
    """Both anchors and ``count - 2`` stitches spread over the other ids."""
    anchors = list(space.anchor_ids())
    others = [i for i in space.ids if i not in anchors]
    inner = max(count - 2, 0)
    return anchors + list(dict.fromkeys(others[(len(others) - 1) * (k + 1) // (inner + 1)] for k in range(inner)))


def _peak_memory(device: torch.device) -> Optional[float]:
    return torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == "cuda" else None


def _reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def depth_model(config: str, device: torch.device) -> Tuple[DPTDepthModel, dict]:
    """The config's SN-Net DPT with random weights (no checkpoint read), on ``device``, and the resolved config."""
    cfg = load_config(config, [])
    torch.manual_seed(0)
    return build_model(model_spec(cfg), pretrained=(None, None)).to(device), cfg


def depth_train_steps(model: DPTDepthModel, cfg: dict, device: torch.device, steps: int, batch: int,
                      amp: bool) -> StepCheck:
    """``steps`` iterations of ``training.train_one_epoch`` (the project's AMP, clipping, optimizer groups and
    OneCycle) on random ``batch x 3 x crop`` images and depths in (0.5, 10) m."""
    recipe = recipe_from_config(cfg)
    height, width = cfg["dataloader"]["augmentation"]["crop_size"]
    generator = torch.Generator().manual_seed(0)
    loader = [(torch.randn(batch, 3, height, width, generator=generator),
               torch.rand(batch, 1, height, width, generator=generator) * 9.5 + 0.5) for _ in range(steps)]
    optimizer = build_optimizer(model, recipe)
    scheduler = build_scheduler(optimizer, recipe, total_steps=steps)
    scaler = torch.amp.GradScaler(device.type, enabled=amp)
    sampler = StitchCycle(trained_stitches(model.backbone.space))
    loss_fn = SILogLoss(warmup_iters=recipe.warmup_iters)
    _reset_peak_memory(device)
    with EventStorage(0) as storage:
        try:
            train_one_epoch(model, model, loader, optimizer, scheduler, scaler, sampler, loss_fn, recipe,
                            DistContext(device=device), 0, 0, amp)
            loss, finite = storage.history("total_loss").latest(), True
        except FloatingPointError:  # train_one_epoch's refusal of a non-finite loss
            loss, finite = float("nan"), False
        history = storage.histories().get("time")  # none if the first step's loss was not finite
        times = [t for t, _ in history.values()[1:]] if history else []
    times = times or [float("nan")]
    return StepCheck(statistics.median(times), max(times), _peak_memory(device), loss, finite)


def detection_model(config: str, device: torch.device):
    """The config's SN-Net Mask R-CNN with random weights (the anchors' ``pretrained`` files not read), on
    ``device``, and the config."""
    cfg = LazyConfig.load(config)
    for anchor in ("fast", "slow"):
        cfg.model.backbone.net[anchor].pretrained = None
    torch.manual_seed(0)
    return instantiate(cfg.model).to(device), cfg


def detection_train_steps(model: torch.nn.Module, cfg, device: torch.device, steps: int, amp: bool) -> StepCheck:
    """``steps`` iterations of detectron2's ``AMPTrainer`` (``SimpleTrainer`` without ``amp``) with the config's
    optimizer (layer decay) on one synthetic image with three boxes and masks at the backbone's padded size."""
    cfg.optimizer.params.model = model
    batch = synthetic_batch(cfg.model.backbone.square_pad)
    batch[0]["instances"].gt_classes %= cfg.model.roi_heads.num_classes  # its classes 1, 5, 17 fit COCO's 80
    trainer = (AMPTrainer if amp else SimpleTrainer)(model.train(), itertools.repeat(batch),
                                                     instantiate(cfg.optimizer))
    backbone = stitched_detector_backbone(model)
    times, finite = [], True
    _reset_peak_memory(device)
    with EventStorage(0) as trainer.storage:
        for step, stitch in zip(range(steps), itertools.cycle(trained_stitches(backbone.space))):
            backbone.set_stitch(stitch)
            trainer.iter = trainer.storage.iter = step
            start = time.perf_counter()
            try:
                trainer.run_step()
            except FloatingPointError:  # detectron2's refusal of a non-finite loss
                finite = False
                break
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - start)
        loss = trainer.storage.history("total_loss").latest() if finite else float("nan")
    times = times[1:] or [float("nan")]
    return StepCheck(statistics.median(times), max(times), _peak_memory(device), loss, finite)


def depth_latencies(model: DPTDepthModel, cfg: dict, stitches: Sequence[int], device: torch.device, amp: bool,
                    runs: int, warmup: int) -> Dict[int, float]:
    """Median ms of each stitch deployed alone (exported under the DPT head), batch 1 at ``dataloader.eval_size``."""
    size = tuple(cfg["dataloader"]["eval_size"])
    return time_depth_stitches(model, stitches, LatencyOptions(1, size, amp, warmup, runs, device))


def detection_latencies(model: torch.nn.Module, cfg, stitches: Sequence[int], device: torch.device, amp: bool,
                        runs: int, warmup: int) -> Dict[int, float]:
    """Median ms of each stitch deployed as a detector, batch 1 at the backbone's padded size."""
    size = cfg.model.backbone.square_pad
    return time_detector_stitches(model, stitches, LatencyOptions(1, (size, size), amp, warmup, runs, device))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _merge_worker(rank: int, world_size: int, port: int, config: str, device_type: str, images: int,
                  result_path: str) -> None:
    """One rank of ``merge_check``: its shard of the frames evaluated with the metrics all-reduced; rank 0 also
    evaluates every frame in one process and writes the comparison."""
    device = torch.device(f"cuda:{rank}" if device_type == "cuda" else "cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", init_method=f"tcp://127.0.0.1:{port}",
                            rank=rank, world_size=world_size)
    try:
        model, cfg = depth_model(config, device)  # the same seed: the same random weights on every rank
        height, width = cfg["dataloader"]["eval_size"]
        generator = torch.Generator().manual_seed(1)
        frames = [(torch.randn(1, 3, height, width, generator=generator),
                   torch.rand(1, 1, height, width, generator=generator) * 9.5 + 0.5) for _ in range(images)]
        stitches = trained_stitches(model.backbone.space)
        merged = {}
        for sid in stitches:
            model.backbone.set_stitch(sid)
            merged[sid] = evaluate(model, frames[rank::world_size], DistContext(rank, world_size, rank, device), False)
        if rank == 0:
            single = evaluate_group(model, frames, stitches, DistContext(device=device), flip=False)
            worst = max(abs(merged[s][k] - single[s][k]) / max(abs(single[s][k]), 1e-6)
                        for s in stitches for k in single[s])
            with open(result_path, "w") as f:
                json.dump({"worst_relative_difference": worst, "stitches": stitches}, f)
    finally:
        dist.destroy_process_group()


def merge_check(config: str, device_type: str, images: int, world_size: int = 2) -> Tuple[bool, str]:
    """``world_size`` processes (NCCL on GPUs, gloo on CPU) evaluate shards of ``images`` synthetic frames; their
    all-reduced metrics must match the one-process grouped evaluation. Returns ``(passed, description)``."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "merge.json")
        mp.spawn(_merge_worker, args=(world_size, _free_port(), config, device_type, images, path), nprocs=world_size)
        with open(path) as f:
            result = json.load(f)
    worst = result["worst_relative_difference"]
    return worst <= NCCL_TOLERANCE, (f"{world_size} ranks x {images // world_size} frames vs 1 process, stitches "
                                     f"{result['stitches']}: worst relative difference {worst:.1e}")


def format_table(rows: Sequence[Tuple[str, str, str]]) -> str:
    header = ("check", "what", "result")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(3)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *rows]]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


def step_row(name: str, what: str, check: StepCheck) -> Tuple[str, str, str]:
    memory = "n/a" if check.peak_gib is None else f"{check.peak_gib:.1f} GiB"
    loss = f"loss {check.loss:.4g} finite" if check.finite else "loss NOT FINITE"
    return (name, what, f"step {check.median_s:.3f} s (slowest {check.max_s:.3f} s), peak {memory}, {loss}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=5, help="training steps per project (the first is not timed)")
    parser.add_argument("--stitches", type=int, default=4, help="stitches timed per project (both anchors included)")
    parser.add_argument("--runs", type=int, default=20, help="timed forwards per stitch (after 5 warm-up ones)")
    parser.add_argument("--depth-batch", type=int, default=4,
                        help="depth training images per GPU (the config's 16 over 4 GPUs)")
    parser.add_argument("--nccl-images", type=int, default=4, help="480x640 frames of the 2-process evaluation")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device visible (torch.cuda.is_available() is False): nothing to check here")
        return 0
    device, amp, start = torch.device("cuda", 0), True, time.perf_counter()
    print(f"gpu_check on {torch.cuda.get_device_name(device)} ({torch.cuda.device_count()} visible), torch "
          f"{torch.__version__}")
    rows: List[Tuple[str, str, str]] = []
    failed = False

    model, cfg = depth_model(DEPTH_CONFIG, device)
    crop = "x".join(map(str, cfg["dataloader"]["augmentation"]["crop_size"]))
    check = depth_train_steps(model, cfg, device, args.steps, args.depth_batch, amp)
    rows.append(step_row("depth train", f"{args.steps} AMP steps, batch {args.depth_batch} at {crop}", check))
    failed |= not check.finite
    space = model.backbone.space
    for sid, ms in depth_latencies(model, cfg, timed_stitches(space, args.stitches), device, amp, args.runs,
                                   5).items():
        rows.append(("depth latency", f"stitch {sid} {space[sid].route}", f"{ms:.1f} ms"))
    del model
    torch.cuda.empty_cache()

    model, cfg = detection_model(DETECTION_CONFIG, device)
    size = cfg.model.backbone.square_pad
    check = detection_train_steps(model, cfg, device, args.steps, amp)
    rows.append(step_row("detection train", f"{args.steps} AMP steps, batch 1 at {size}x{size}", check))
    failed |= not check.finite
    space = stitched_detector_backbone(model).space
    for sid, ms in detection_latencies(model, cfg, timed_stitches(space, args.stitches), device, amp, args.runs,
                                       5).items():
        rows.append(("detection latency", f"stitch {sid} {space[sid].route}", f"{ms:.1f} ms"))
    del model
    torch.cuda.empty_cache()

    if torch.cuda.device_count() >= 2:
        passed, what = merge_check(DEPTH_CONFIG, "cuda", args.nccl_images)
        rows.append(("NCCL depth eval", what, "pass" if passed else "FAIL"))
        failed |= not passed
    else:
        rows.append(("NCCL depth eval", "2 processes", "skipped (one GPU)"))
    print(format_table(rows))
    print(f"{'FAILED' if failed else 'passed'} in {time.perf_counter() - start:.0f} s")
    return int(failed)


if __name__ == "__main__":
    sys.exit(main())
