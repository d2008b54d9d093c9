#!/usr/bin/env python
"""Train, evaluate and export SN-Netv2 + DPT for NYUv2 depth (paper Section 5.3).

Training (one process, or torchrun for DDP on GPUs/CPUs, one or more nodes):

    python projects/snnet_dpt/train.py --data-root data/nyu --layout sync \
        --pretrained ckpt/deit3_small.pth ckpt/deit3_large.pth --output-dir output/dpt_s_l
    torchrun --nproc_per_node 4 projects/snnet_dpt/train.py ...same arguments...

After training (or with ``--eval-only``) the stitches chosen by ``--stitch`` are evaluated into a per-stitch
report (``<output-dir>/stitch_eval``); ``--export-stitch ID`` writes a standalone DPT model of one stitch.
``--tiny`` swaps in 4/8-block anchors and a small head for CPU demos on the synthetic NYUv2
(``datasets/make_synthetic_nyu.py``).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
from typing import Any, Dict, List, Optional, Sequence

import torch
from torch.utils.data import DataLoader, DistributedSampler, Subset

from projects.snnet_dpt.distributed import DistContext, barrier, cleanup, init_distributed
from projects.snnet_dpt.engine import (
    CHECKPOINT_NAME, TrainRecipe, build_optimizer, build_scheduler, check_resumable, epoch_seed,
    evaluate_stitch_report, load_checkpoint, param_checksum, read_checkpoint_spec, save_checkpoint,
    train_one_epoch, wrap_ddp,
)
from projects.snnet_dpt.export import save_exported_stitch
from projects.snnet_dpt.head import DEFAULT_POST_PROCESS_CHANNELS
from projects.snnet_dpt.loss import SILogLoss
from projects.snnet_dpt.metrics import METRIC_NAMES
from projects.snnet_dpt.model import DPTDepthModel, ModelSpec, build_model, depth_flops_table
from projects.snnet_dpt.nyu import build_nyu_split
from projects.snnet_dpt.transforms import DepthDataset, TrainAugmentation
from snnet_core import ResourceConstrainedSampler, ls_init_stitching_layers, select_stitches
from snnet_core.report import RESULTS_FILE

logger = logging.getLogger("snnet_dpt")

TINY_ANCHORS = ({"embed_dim": 32, "depth": 4, "num_heads": 2}, {"embed_dim": 48, "depth": 8, "num_heads": 3})
TINY_HEAD = {"features": 32, "post_process_channels": (16, 32, 64, 128)}


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    data = p.add_argument_group("data")
    data.add_argument("--data-root", required=True, help="folder of the NYUv2 files (see datasets/prepare_nyu.md)")
    data.add_argument("--layout", choices=("mat", "sync"), default="sync",
                      help="mat: nyu_depth_v2_labeled.mat + splits.mat; sync: BTS-style folders and split files")
    data.add_argument("--train-list",
                      help="sync layout: train split file (default <root>/nyudepthv2_train_files_with_gt.txt)")
    data.add_argument("--test-list",
                      help="sync layout: test split file (default <root>/nyudepthv2_test_files_with_gt.txt)")
    data.add_argument("--eval-size", type=int, nargs=2, default=(480, 640), metavar=("H", "W"),
                      help="size of the test frames; FLOPs are counted at this size")
    data.add_argument("--crop-size", type=int, nargs=2, default=(416, 544), metavar=("H", "W"), help="training crop")
    data.add_argument("--workers", type=int, default=4, help="data loader processes per rank")

    model = p.add_argument_group("model")
    model.add_argument("--anchors", nargs=2, default=ModelSpec.anchors, metavar=("FAST", "SLOW"), help="timm names")
    model.add_argument("--pretrained", nargs=2, metavar=("FAST", "SLOW"),
                       help="local anchor checkpoints (timm .safetensors/.pth or official DeiT3 .pth)")
    model.add_argument("--anchor-overrides", nargs=2, type=json.loads, metavar=("JSON", "JSON"),
                       help='timm VisionTransformer arguments per anchor, e.g. \'{"depth": 4, "embed_dim": 32}\'')
    model.add_argument("--tiny", action="store_true",
                       help="tiny anchors (4 blocks/32 wide, 8 blocks/48 wide) and DPT head (32 features): CPU demos")
    model.add_argument("--lora-rank", type=int, default=4, help="LoRA SL rank (0: fully trained stitching layers)")
    model.add_argument("--out-indices", type=int, nargs=4, help="slow-anchor blocks of the 4 dense features")
    model.add_argument("--drop-path", type=float, nargs=2, default=(0.0, 0.0), metavar=("FAST", "SLOW"))
    model.add_argument("--head-features", type=int, help="DPT fusion channels (default 256)")
    model.add_argument("--post-process-channels", type=int, nargs=4,
                       help="DPT reassemble channels (default 96 192 384 768)")

    train = p.add_argument_group("training")
    train.add_argument("--epochs", type=int, default=24)
    train.add_argument("--batch-size", type=int, default=16, help="total over all processes")
    train.add_argument("--lr", type=float, default=2e-5, help="peak lr of head and stitching layers")
    train.add_argument("--backbone-lr-mult", type=float, default=0.1, help="lr multiplier of the anchors")
    train.add_argument("--weight-decay", type=float, default=0.01)
    train.add_argument("--clip-grad", type=float, default=1.0, help="max gradient norm (0: off)")
    train.add_argument("--loss-warmup-iters", type=int, default=100, help="iterations of the mean-only SI-log warm-up")
    train.add_argument("--ls-init-images", type=int, default=100, help="calibration images of the LS init (0: skip)")
    train.add_argument("--flops-step", type=float, default=10.0, help="ROS FLOPs bin width in GFLOPs")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    train.add_argument("--no-amp", action="store_true", help="fp32 on GPU too (AMP is never used on CPU)")

    run = p.add_argument_group("run")
    run.add_argument("--output-dir", default="output/snnet_dpt")
    run.add_argument("--resume", nargs="?", const="auto",
                     help="continue training from a checkpoint (default <output-dir>/checkpoint_last.pth); "
                          "with --eval-only / --export-stitch: the checkpoint to use")
    run.add_argument("--eval-only", action="store_true", help="evaluate (and export) a trained checkpoint")
    run.add_argument("--stitch", default="all", help="stitches to evaluate: all | ID[,ID...] | pareto | none")
    run.add_argument("--pareto-source",
                     help="results JSON for --stitch pareto (default <eval-dir>/stitch_results.json)")
    run.add_argument("--eval-dir", help="per-stitch report folder (default <output-dir>/stitch_eval)")
    run.add_argument("--eval-max-images", type=int, help="evaluate on the first N test frames only")
    run.add_argument("--eval-batch-size", type=int, default=2, help="per process")
    run.add_argument("--no-flip-eval", action="store_true", help="no flip averaging at evaluation")
    run.add_argument("--primary-metric", choices=METRIC_NAMES, default="a1", help="metric of the Pareto frontier")
    run.add_argument("--export-stitch", type=int, metavar="ID", help="write <output-dir>/stitch_<ID>_dpt.pth")
    args = p.parse_args(argv)
    args.eval_dir = args.eval_dir or os.path.join(args.output_dir, "stitch_eval")
    return args


def spec_from_args(args: argparse.Namespace) -> ModelSpec:
    overrides = args.anchor_overrides or (TINY_ANCHORS if args.tiny else ({}, {}))
    head = TINY_HEAD if args.tiny else {"features": 256, "post_process_channels": DEFAULT_POST_PROCESS_CHANNELS}
    return ModelSpec(
        anchors=tuple(args.anchors), img_size=tuple(args.eval_size), anchor_overrides=tuple(overrides),
        drop_path=tuple(args.drop_path), lora_rank=args.lora_rank,
        out_indices=tuple(args.out_indices) if args.out_indices else None,
        post_process_channels=tuple(args.post_process_channels or head["post_process_channels"]),
        features=args.head_features or head["features"],
    )


def recipe_from_args(args: argparse.Namespace, ctx: DistContext) -> TrainRecipe:
    if args.batch_size % ctx.world_size:
        raise ValueError(f"--batch-size {args.batch_size} (total) is not divisible by the {ctx.world_size} processes")
    return TrainRecipe(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                       backbone_lr_mult=args.backbone_lr_mult, weight_decay=args.weight_decay,
                       clip_grad=args.clip_grad, flops_step=args.flops_step, warmup_iters=args.loss_warmup_iters,
                       seed=args.seed, world_size=ctx.world_size)


def setup_logging(ctx: DistContext) -> None:
    logging.basicConfig(level=logging.INFO if ctx.is_main else logging.WARNING,
                        format=f"[%(asctime)s rank{ctx.rank}] %(name)s: %(message)s", datefmt="%H:%M:%S")


# --------------------------------------------------------------------------------------------------
def build_test_loader(args: argparse.Namespace, ctx: DistContext) -> DataLoader:
    """This rank's shard (every ``world_size``-th frame, no padding) of the test split."""
    frames = build_nyu_split(args.layout, args.data_root, "test", args.test_list)
    size = frames.read(0)[1].shape
    if tuple(size) != tuple(args.eval_size):
        raise ValueError(f"test frames are {size[0]}x{size[1]} but --eval-size is "
                         f"{args.eval_size[0]}x{args.eval_size[1]}")
    dataset = DepthDataset(frames)
    count = min(len(dataset), args.eval_max_images or len(dataset))
    shard = Subset(dataset, list(range(ctx.rank, count, ctx.world_size)))
    return DataLoader(shard, args.eval_batch_size, shuffle=False, num_workers=args.workers,
                      pin_memory=ctx.device.type == "cuda")


def ls_init(model: DPTDepthModel, frames, args: argparse.Namespace, ctx: DistContext) -> None:
    """LS init of every stitching layer from the first ``--ls-init-images`` training frames (full frames)."""
    loader = DataLoader(DepthDataset(frames), batch_size=max(1, args.batch_size // ctx.world_size),
                        shuffle=False, num_workers=args.workers)
    errors = ls_init_stitching_layers(model.backbone, (images.to(ctx.device) for images, _ in loader),
                                      num_images=args.ls_init_images)
    logger.info("LS init: mean squared error per stitching layer %s",
                {k: round(v, 5) for k, v in sorted(errors.items())})


def train(model: DPTDepthModel, spec: ModelSpec, args: argparse.Namespace, ctx: DistContext, flops,
          resume_path: Optional[str]) -> Dict[str, Any]:
    """Train (or continue training) and return ``{"checkpoint", "iteration"}`` of the last checkpoint."""
    recipe = recipe_from_args(args, ctx)
    frames = build_nyu_split(args.layout, args.data_root, "train", args.train_list)
    train_set = DepthDataset(frames, TrainAugmentation(args.crop_size), recipe.seed)
    data_sampler = DistributedSampler(train_set, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True,
                                      seed=recipe.seed, drop_last=True)
    loader = DataLoader(train_set, recipe.batch_size // ctx.world_size, sampler=data_sampler, drop_last=True,
                        num_workers=args.workers, pin_memory=ctx.device.type == "cuda")
    if len(loader) == 0:
        raise ValueError(f"the {len(train_set)} training frames give no full batch of {recipe.batch_size}")
    amp = ctx.device.type == "cuda" and not args.no_amp
    optimizer = build_optimizer(model, recipe)
    scheduler = build_scheduler(optimizer, recipe.epochs * len(loader))
    scaler = torch.amp.GradScaler(ctx.device.type, enabled=amp)
    sampler = ResourceConstrainedSampler(flops.gflops, recipe.flops_step, recipe.seed)
    logger.info("ROS: %d stitches in %d FLOPs bins of %g GFLOPs", len(flops.gflops), len(sampler.bins),
                recipe.flops_step)
    start_epoch, iteration = 0, 0
    if resume_path:
        state = load_checkpoint(resume_path, model, ctx.device)
        check_resumable(state, spec, recipe)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        sampler.load_state_dict(state["sampler"])
        start_epoch, iteration = int(state["epoch"]), int(state["iteration"])
        logger.info("resumed from %s after epoch %d (iteration %d)", resume_path, start_epoch, iteration)
    elif args.ls_init_images > 0 and ctx.is_main:  # DDP then broadcasts rank 0's weights
        ls_init(model, frames, args, ctx)
    ddp_model = wrap_ddp(model, ctx)
    loss_fn = SILogLoss(warmup_iters=recipe.warmup_iters)
    checkpoint = os.path.join(args.output_dir, CHECKPOINT_NAME)
    log_path = os.path.join(args.output_dir, f"train_log.rank{ctx.rank}.jsonl")
    for epoch in range(start_epoch, recipe.epochs):
        data_sampler.set_epoch(epoch)
        train_set.set_epoch(epoch)
        torch.manual_seed(epoch_seed(recipe.seed, epoch, ctx.rank))
        stats = train_one_epoch(model, ddp_model, loader, optimizer, scheduler, scaler, sampler, loss_fn, recipe,
                                ctx, epoch, iteration, log_path, amp)
        iteration = stats["iteration"]
        with open(log_path, "a") as log:
            log.write(json.dumps({"epoch": epoch, "iter": iteration, "event": "epoch_end",
                                  "mean_loss": stats["mean_loss"], "param_checksum": param_checksum(model)}) + "\n")
        logger.info("epoch %d/%d: mean loss %.4f (iteration %d)", epoch + 1, recipe.epochs, stats["mean_loss"],
                    iteration)
        if ctx.is_main:
            save_checkpoint(checkpoint, model, spec, recipe, optimizer, scheduler, scaler, sampler, epoch + 1,
                            iteration)
        barrier(ctx)
    return {"checkpoint": checkpoint, "iteration": iteration}


def run(args: argparse.Namespace, ctx: DistContext) -> Dict[str, Any]:
    os.makedirs(args.output_dir, exist_ok=True)
    training = not args.eval_only
    default_ckpt = os.path.join(args.output_dir, CHECKPOINT_NAME)
    checkpoint = default_ckpt if args.resume in (None, "auto") else args.resume
    resume_path = checkpoint if training and args.resume else None
    spec = spec_from_args(args) if training else read_checkpoint_spec(checkpoint)
    torch.manual_seed(args.seed)
    fresh = training and not resume_path
    model = build_model(spec, args.pretrained if fresh and args.pretrained else (None, None)).to(ctx.device)
    if fresh and not args.pretrained:
        logger.warning("no --pretrained checkpoints: the anchors start from random weights")
    space = model.backbone.space
    stitch_ids: List[int] = []
    if args.stitch != "none":  # resolved up front: a bad selection fails before training
        pareto_source = args.pareto_source or os.path.join(args.eval_dir, RESULTS_FILE)
        stitch_ids = select_stitches(args.stitch, space, pareto_source=pareto_source)
    if args.export_stitch is not None:
        space[args.export_stitch]  # raises a KeyError naming the valid ids before any training
    if ctx.is_main:  # rank 0 counts (and caches) the FLOPs table, the others read the cache
        flops = depth_flops_table(model, tuple(args.eval_size), cache_dir=args.output_dir)
    barrier(ctx)
    if not ctx.is_main:
        flops = depth_flops_table(model, tuple(args.eval_size), cache_dir=args.output_dir)
    logger.info("%d stitches, %.1f-%.1f GFLOPs at %dx%d (DPT head %.1f GFLOPs)", len(space), min(flops.gflops.values()),
                max(flops.gflops.values()), *args.eval_size, flops.head_gflops)
    if training:
        result = train(model, spec, args, ctx, flops, resume_path)
    else:
        state = load_checkpoint(checkpoint, model, ctx.device)
        result = {"checkpoint": checkpoint, "iteration": int(state["iteration"])}
    if stitch_ids:
        flip = not args.no_flip_eval
        run_key = (f"{os.path.abspath(result['checkpoint'])}@iter{result['iteration']}|flip={flip}"
                   f"|max_images={args.eval_max_images}")
        amp = ctx.device.type == "cuda" and not args.no_amp
        result["report"] = evaluate_stitch_report(model, build_test_loader(args, ctx), stitch_ids, flops, args.eval_dir,
                                                  run_key, ctx, args.primary_metric, flip, amp)
    if args.export_stitch is not None and ctx.is_main:
        path = os.path.join(args.output_dir, f"stitch_{args.export_stitch}_dpt.pth")
        save_exported_stitch(path, model, spec, args.export_stitch)
        logger.info("exported stitch %d (%s) to %s", args.export_stitch, space[args.export_stitch].route, path)
        result["export"] = path
    return result


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    args = parse_args(argv)
    ctx = init_distributed(args.device)
    setup_logging(ctx)
    try:
        return run(args, ctx)
    finally:
        cleanup(ctx)


if __name__ == "__main__":
    main()
