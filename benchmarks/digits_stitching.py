"""Does stitching work? SN-Netv2 on real data at CPU scale (issue #5).

Two plain ViTs (timm ``VisionTransformer``, DeiT3 recipe, patch 2 on 8x8 images) are trained from scratch on
scikit-learn's ``load_digits`` (1797 real handwritten digits, shipped inside the package) on a fixed
stratified split. They are stitched with ``snnet_core`` and the paper's qualitative claims are tested:

1. the anchors learn (test accuracy, GFLOPs);
2. least-squares-initialised stitching layers beat default (Kaiming) ones at initialisation (SN-Netv1
   supplementary, Figure E; the paper's figure is after training, which ``v2-full-kaiming`` measures);
3. after brief SN-Netv2 training (two-way space, ROS, LoRA SL) every stitch works and the anchors keep
   their accuracy; table and accuracy-vs-GFLOPs plot with the Pareto frontier;
4. ablations with one budget: SN-Netv1 space (Fast-to-Slow only, uniform sampling, full stitching layers)
   vs v2; uniform sampling vs ROS (anchor accuracy, paper Figure 10); LoRA SL vs full layers;
5. a verdict per claim.

Run ``python benchmarks/digits_stitching.py`` (7 minutes on one thread of a shared 2-core machine, 17 when
it was heavily loaded; the numbers are the same). It writes ``benchmarks/results/digits/``. The fast version
is ``tests/test_digits_stitching.py``, which imports these functions with smaller settings.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import os
import time
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from tqdm import tqdm

from snnet_core import (ROUTE_TYPES, FlopsTable, ResourceConstrainedSampler, StitchedViT, StitchSpace,
                        UniformSampler, best_under_budget, build_anchor, build_flops_table, count_gflops,
                        evaluate_stitches, ls_init_stitching_layers, pareto_frontier)

IMG_SIZE = 8
NUM_CLASSES = 10
SPLIT_SEED = 0  # the train/test split never changes; seeds only change the training
ANCHOR_IDS = StitchSpace(1, 1).anchor_ids()  # (fast, slow): stitch ids are the same in every space
Accuracies = Dict[int, float]


# ------------------------------------------------------------------------------------------------------------
# configuration

@dataclasses.dataclass(frozen=True)
class AnchorConfig:
    """A DeiT3-style ViT anchor (timm ``deit3_small_patch16_224`` with these overrides)."""

    embed_dim: int
    depth: int
    num_heads: int
    drop_path_rate: float = 0.0
    patch_size: int = 2

    def describe(self) -> str:
        return (f"{self.depth} blocks x {self.embed_dim} wide, {self.num_heads} heads, patch {self.patch_size}, "
                f"drop path {self.drop_path_rate:g}")


@dataclasses.dataclass(frozen=True)
class StudyConfig:
    """Everything that sets the study's numbers; ``StudyConfig()`` is the benchmark, tests shrink it.

    Attributes:
        fast, slow: the anchors (fast no deeper than slow).
        anchor_epochs: epochs of from-scratch anchor training (AdamW, warm-up + cosine).
        anchor_lr: peak learning rate of anchor training.
        snnet_epochs: SN-Net training budget, in epochs of the train split (one stitch per iteration).
        snnet_lr: peak learning rate of SN-Net training (paper: 0.1x the anchors'; 0.2x here, where each
            stitch gets about a thousand times fewer iterations than on ImageNet).
        batch_size: images per iteration, for anchors and SN-Nets.
        lora_rank: rank of LoRA SL.
        ros_bins: number of FLOPs bins of ROS (the bin width is chosen to give this many).
        calib_images: train images solving the least-squares initialisation (paper: 100).
        test_size: fraction of the 1797 digits held out for test.
    """

    fast: AnchorConfig = AnchorConfig(embed_dim=16, depth=6, num_heads=2)
    slow: AnchorConfig = AnchorConfig(embed_dim=48, depth=12, num_heads=3, drop_path_rate=0.1)
    anchor_epochs: int = 30
    anchor_lr: float = 5e-3
    snnet_epochs: int = 15
    snnet_lr: float = 1e-3
    batch_size: int = 32
    lora_rank: int = 4
    ros_bins: int = 10
    calib_images: int = 100
    test_size: float = 0.25


@dataclasses.dataclass(frozen=True)
class Variant:
    """One SN-Net training recipe of the ablation."""

    name: str
    label: str
    route_types: Tuple[str, ...]
    sampler: str  # "ros" or "uniform"
    lora: bool  # LoRA SL (frozen LS weight + rank-r update) or fully trained stitching layers
    ls_init: bool  # least-squares or default (Kaiming) initialised stitching layers


V1_ROUTES = ("anchor", "FS")
VARIANTS: Dict[str, Variant] = {v.name: v for v in (
    Variant("v2", "SN-Netv2: two-way, ROS, LoRA SL", ROUTE_TYPES, "ros", True, True),
    Variant("v2-uniform", "two-way, uniform sampling, LoRA SL", ROUTE_TYPES, "uniform", True, True),
    Variant("v2-full", "two-way, ROS, full stitching layers", ROUTE_TYPES, "ros", False, True),
    Variant("v1", "SN-Netv1: FS only, uniform, full stitching layers", V1_ROUTES, "uniform", False, True),
    Variant("v2-full-kaiming", "two-way, ROS, full layers, Kaiming init", ROUTE_TYPES, "ros", False, False),
)}


# ------------------------------------------------------------------------------------------------------------
# data

@dataclasses.dataclass
class DigitsSplit:
    """Standardised 8x8 digits ``(N, 1, 8, 8)`` and labels ``(N,)`` of the fixed train/test split."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor

    def calibration_images(self, num_images: int, seed: int) -> torch.Tensor:
        """``num_images`` train images drawn at random (for the least-squares initialisation)."""
        generator = torch.Generator().manual_seed(seed)
        return self.train_x[torch.randperm(len(self.train_x), generator=generator)[:num_images]]


def load_digits_split(test_size: float = 0.25) -> DigitsSplit:
    """scikit-learn's digits, stratified split (fixed seed), standardised with the train mean and std."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = digits.images.astype(np.float32)[:, None] / 16.0
    x_tr, x_te, y_tr, y_te = train_test_split(x, digits.target, test_size=test_size, stratify=digits.target,
                                              random_state=SPLIT_SEED)
    mean, std = x_tr.mean(), x_tr.std()
    return DigitsSplit(torch.from_numpy((x_tr - mean) / std), torch.from_numpy(y_tr).long(),
                       torch.from_numpy((x_te - mean) / std), torch.from_numpy(y_te).long())


# ------------------------------------------------------------------------------------------------------------
# training and scoring

def build_digits_anchor(cfg: AnchorConfig) -> VisionTransformer:
    """A from-scratch DeiT3-style ViT for 1-channel 8x8 digits (average-pooled tokens, no cls token)."""
    return build_anchor("deit3_small_patch16_224", img_size=IMG_SIZE, num_classes=NUM_CLASSES,
                        class_token=False, drop_path_rate=cfg.drop_path_rate, patch_size=cfg.patch_size,
                        in_chans=1, embed_dim=cfg.embed_dim, depth=cfg.depth, num_heads=cfg.num_heads)


def minibatches(num_items: int, batch_size: int, epochs: int, seed: int) -> Iterator[torch.Tensor]:
    """Index batches of a fresh random permutation per epoch (the last short batch is kept)."""
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        yield from torch.randperm(num_items, generator=generator).split(batch_size)


def fit(params: Sequence[nn.Parameter], logits_fn: Callable[[torch.Tensor, int], torch.Tensor], data: DigitsSplit,
        epochs: int, lr: float, batch_size: int, seed: int, desc: str,
        after_epoch: Optional[Callable[[], float]] = None) -> List[float]:
    """Minimise label-smoothed cross-entropy with AdamW (10% warm-up, cosine decay).

    Args:
        logits_fn: ``(images, iteration) -> logits``; the iteration lets an SN-Net pick its stitch.
        after_epoch: called after every epoch (e.g. test accuracy); its values are returned.
    """
    steps_per_epoch = math.ceil(len(data.train_x) / batch_size)
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.05)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=epochs * steps_per_epoch,
                                                   pct_start=0.1)
    history = []
    batches = minibatches(len(data.train_x), batch_size, epochs, seed)
    for step, idx in enumerate(tqdm(batches, total=epochs * steps_per_epoch, desc=desc, leave=False)):
        loss = F.cross_entropy(logits_fn(data.train_x[idx], step), data.train_y[idx], label_smoothing=0.1)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if after_epoch is not None and (step + 1) % steps_per_epoch == 0:
            history.append(after_epoch())
    return history


@torch.no_grad()
def accuracy(logits_fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> float:
    """Top-1 accuracy of ``logits_fn`` on ``(x, y)``."""
    return float((logits_fn(x).argmax(dim=1) == y).float().mean())


def train_anchor(cfg: AnchorConfig, study: StudyConfig, data: DigitsSplit, seed: int,
                 desc: str) -> Tuple[VisionTransformer, List[float]]:
    """Train one anchor from scratch; returns it (eval mode) and its test accuracy after every epoch."""
    torch.manual_seed(seed)
    model = build_digits_anchor(cfg).train()

    def test_accuracy() -> float:
        model.eval()
        acc = accuracy(model, data.test_x, data.test_y)
        model.train()
        return acc

    history = fit(list(model.parameters()), lambda x, _: model(x), data, study.anchor_epochs, study.anchor_lr,
                  study.batch_size, seed, desc, after_epoch=test_accuracy)
    return model.eval(), history


def train_anchors(study: StudyConfig, data: DigitsSplit, seed: int) -> Tuple[Tuple[VisionTransformer, ...], dict]:
    """Train the fast and the slow anchor; returns them and a summary row per anchor."""
    anchors, rows = [], {}
    for name, cfg in (("fast", study.fast), ("slow", study.slow)):
        model, history = train_anchor(cfg, study, data, seed, f"train {name} anchor")
        gflops = count_gflops(model, (data.test_x[:1],))
        last = history[-5:]
        rows[name] = {"config": cfg.describe(), "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
                      "gflops": gflops, "acc": history[-1], "acc_last5_min": min(last),
                      "acc_last5_max": max(last), "history": history}
        anchors.append(model)
    return tuple(anchors), rows


def flops_table(anchors: Sequence[VisionTransformer]) -> FlopsTable:
    """GFLOPs and parameters of every stitch of the two-way space, classifier included."""
    return build_flops_table(StitchedViT(*anchors), (IMG_SIZE, IMG_SIZE), mode="classify")


def build_snnet(anchors: Sequence[VisionTransformer], study: StudyConfig, variant: Variant, data: DigitsSplit,
                seed: int) -> StitchedViT:
    """SN-Net over copies of the anchors, stitching layers LS- or Kaiming-initialised as ``variant`` says."""
    torch.manual_seed(seed)
    fast, slow = (copy.deepcopy(a) for a in anchors)
    net = StitchedViT(fast, slow, lora_rank=study.lora_rank if variant.lora else 0,
                      route_types=variant.route_types)
    if variant.ls_init:
        calibration = data.calibration_images(study.calib_images, seed)
        ls_init_stitching_layers(net, [calibration], num_images=study.calib_images, progress=False)
    return net.eval()


def stitch_accuracies(net: StitchedViT, data: DigitsSplit) -> Accuracies:
    """Test accuracy of every stitch of ``net``'s space."""
    net.eval()
    return {sid: accuracy(lambda x: net.classify(x, sid), data.test_x, data.test_y) for sid in net.space.ids}


def make_sampler(net: StitchedViT, table: FlopsTable, variant: Variant, num_bins: int, seed: int) -> UniformSampler:
    """ROS with a bin width giving about ``num_bins`` FLOPs bins, or uniform sampling."""
    gflops = {sid: table.gflops[sid] for sid in net.space.ids}
    if variant.sampler == "uniform":
        return UniformSampler(list(gflops), seed)
    step = (max(gflops.values()) - min(gflops.values())) / (num_bins - 1)
    return ResourceConstrainedSampler(gflops, step, seed)


def train_snnet(net: StitchedViT, sampler: UniformSampler, study: StudyConfig, data: DigitsSplit, seed: int,
                desc: str) -> None:
    """SN-Net training: one sampled stitch per iteration, anchors and stitching layers all trainable."""
    torch.manual_seed(seed)
    net.train()
    params = [p for p in net.parameters() if p.requires_grad]
    fit(params, lambda x, step: net.classify(x, sampler.sample(step)), data, study.snnet_epochs, study.snnet_lr,
        study.batch_size, seed, desc)
    net.eval()


# ------------------------------------------------------------------------------------------------------------
# summaries

def summarize(acc: Accuracies, space: StitchSpace, gflops: Dict[int, float], num_budgets: int = 50) -> dict:
    """Anchors, mean/min over the stitched (non-anchor) networks, Pareto frontier and budget curve.

    ``budget_curve`` is the accuracy of the best stitch under a FLOPs budget, averaged over budgets evenly
    spaced from the fast to the slow anchor (the FLOPs range of every space): the area under the frontier.
    """
    fast_id, slow_id = ANCHOR_IDS
    stitched = [acc[sid] for sid in space.ids if sid not in ANCHOR_IDS]
    costs = {sid: gflops[sid] for sid in space.ids}
    budgets = np.linspace(costs[fast_id], costs[slow_id], num_budgets)
    return {
        "num_stitches": len(space),
        "fast": acc[fast_id],
        "slow": acc[slow_id],
        "mean": float(np.mean(stitched)),
        "min": float(np.min(stitched)),
        "below_fast": sum(a < acc[fast_id] for a in stitched),
        "frontier_size": len(pareto_frontier(costs, acc)),
        "budget_curve": float(np.mean([acc[best_under_budget(costs, acc, b)] for b in budgets])),
    }


def score_at_init(anchors: Sequence[VisionTransformer], study: StudyConfig, data: DigitsSplit, table: FlopsTable,
                  seed: int) -> Dict[str, dict]:
    """Every stitch of the two-way space before any SN-Net training, LS- vs Kaiming-initialised layers."""
    out = {}
    for name, ls_init in (("ls", True), ("kaiming", False)):
        variant = dataclasses.replace(VARIANTS["v2"], ls_init=ls_init)
        net = build_snnet(anchors, study, variant, data, seed)
        acc = stitch_accuracies(net, data)
        out[name] = dict(summarize(acc, net.space, table.gflops), per_stitch=acc)
    return out


def run_variant(anchors: Sequence[VisionTransformer], study: StudyConfig, variant: Variant, data: DigitsSplit,
                table: FlopsTable, seed: int, report_dir: Optional[str] = None) -> dict:
    """Build, train and score one ablation variant; optionally write its per-stitch report and plot."""
    net = build_snnet(anchors, study, variant, data, seed)
    sampler = make_sampler(net, table, variant, study.ros_bins, seed)
    probs = sampler.probabilities()
    start = time.perf_counter()
    train_snnet(net, sampler, study, data, seed, f"train {variant.name} (seed {seed})")
    acc = stitch_accuracies(net, data)
    if report_dir is not None:
        write_stitch_report(net, acc, table, os.path.join(report_dir, variant.name),
                            f"{variant.label} on digits (seed {seed})", f"digits-{variant.name}-seed{seed}")
    return dict(summarize(acc, net.space, table.gflops), per_stitch=acc,
                anchor_prob=sum(probs[sid] for sid in ANCHOR_IDS), train_s=time.perf_counter() - start)


def write_stitch_report(net: StitchedViT, acc: Accuracies, table: FlopsTable, output_dir: str, title: str,
                        run_key: str) -> None:
    """Per-stitch table and accuracy-vs-GFLOPs plot (``snnet_core.evaluate_stitches``), written afresh."""
    os.makedirs(output_dir, exist_ok=True)
    stale = os.path.join(output_dir, "stitch_results.json")
    if os.path.exists(stale):
        os.remove(stale)
    evaluate_stitches(lambda sid: {"acc": acc[sid]}, net.space.ids, net.space, table, output_dir,
                      primary_metric="acc", run_key=run_key, title=title, progress=False)


# ------------------------------------------------------------------------------------------------------------
# verdicts

def paired(runs: Dict[str, List[dict]], a: str, b: str, key: Callable[[dict], float]) -> Tuple[float, int, int]:
    """Mean over seeds of ``key(a) - key(b)`` and on how many seeds it is positive."""
    diffs = [key(ra) - key(rb) for ra, rb in zip(runs[a], runs[b])]
    return float(np.mean(diffs)), sum(d > 0 for d in diffs), len(diffs)


def same_flops_gain(run: dict, baseline: dict, gflops: Dict[int, float], tolerance: float = 0.01) -> float:
    """How much better ``run``'s best stitched network is than ``baseline``'s at the baseline's stitch FLOPs.

    For every stitched (non-anchor) network of ``baseline``: the best stitched network of each run within its
    FLOPs (+``tolerance``, as two-stitching-layer routes cost a few more FLOPs); the mean difference.
    """
    def best(acc: Accuracies, budget: float) -> float:
        return max(a for sid, a in acc.items() if sid not in ANCHOR_IDS and gflops[sid] <= budget)

    budgets = [gflops[sid] * (1 + tolerance) for sid in baseline["per_stitch"] if sid not in ANCHOR_IDS]
    return float(np.mean([best(run["per_stitch"], b) - best(baseline["per_stitch"], b) for b in budgets]))


def direction_gaps(acc: Accuracies, space: StitchSpace, gflops: Dict[int, float]) -> List[float]:
    """Slow-to-Fast minus Fast-to-Slow accuracy for each pair of SF/FS stitches with the same blocks, by FLOPs."""
    sf = {space[sid].num_blocks(): sid for sid in space.ids if space[sid].kind == "SF"}
    pairs = [(fs, sf[space[fs].num_blocks()]) for fs in space.ids
             if space[fs].kind == "FS" and space[fs].num_blocks() in sf]
    return [acc[s] - acc[f] for f, s in sorted(pairs, key=lambda p: gflops[p[0]])]


def verdicts(anchor_rows: dict, init: Dict[str, dict], runs: Dict[str, List[dict]], gflops: Dict[int, float],
             space: StitchSpace) -> List[dict]:
    """One verdict per claim: ``{"claim", "holds", "evidence"}``; accuracies in percent."""
    pct = 100.0
    out = []

    def add(claim: str, holds: bool, evidence: str) -> None:
        out.append({"claim": claim, "holds": bool(holds), "evidence": evidence})

    fast, slow = anchor_rows["fast"]["acc"], anchor_rows["slow"]["acc"]
    add("Anchors learn the task from scratch (chance is 10%) and the slow anchor is the stronger one",
        min(fast, slow) > 0.5 and slow > fast,
        f"fast {fast * pct:.1f}%, slow {slow * pct:.1f}% test accuracy")
    ls, km = init["ls"], init["kaiming"]
    add("LS-initialised stitching layers beat Kaiming-initialised ones at initialisation (no training)",
        ls["mean"] - km["mean"] > 0.1,
        f"mean over {ls['num_stitches'] - 2} stitches {ls['mean'] * pct:.1f}% (LS) vs {km['mean'] * pct:.1f}% "
        f"(Kaiming); min {ls['min'] * pct:.1f}% vs {km['min'] * pct:.1f}%")
    gaps = direction_gaps(ls["per_stitch"], space, gflops)
    low, high = gaps[: len(gaps) // 2], gaps[len(gaps) - len(gaps) // 2:]
    gap_text = ("SF minus FS accuracy at the same blocks, by increasing FLOPs: "
                + ", ".join(f"{g * pct:+.1f}" for g in gaps) + " points")
    add("At LS init, Slow-to-Fast beats Fast-to-Slow in the lower half of the FLOPs (paper Figure 13)",
        min(low) > 0, gap_text)
    add("At LS init, Fast-to-Slow beats Slow-to-Fast in the upper half of the FLOPs (paper Figure 13)",
        max(high) < 0, gap_text)
    d, wins, n = paired(runs, "v2-full", "v2-full-kaiming", lambda r: r["mean"])
    add("LS init still beats Kaiming init after SN-Net training (SN-Netv1 supp. Figure E, full layers)",
        wins == n and d > 0, f"mean stitch accuracy +{d * pct:.2f} points, LS better on {wins}/{n} seeds")
    v2 = runs["v2"]
    worst_min = min(r["min"] for r in v2)
    worst_drop = max(max(anchor_rows["fast"]["acc"] - r["fast"], anchor_rows["slow"]["acc"] - r["slow"]) for r in v2)
    add("After SN-Netv2 training every stitch works and the anchors keep their accuracy (drop <= 3 points)",
        worst_min > 0.5 and worst_drop <= 0.03,
        f"worst stitch over seeds {worst_min * pct:.1f}%, largest anchor drop {worst_drop * pct:.1f} points, "
        f"mean stitch {np.mean([r['mean'] for r in v2]) * pct:.1f}%")
    gains = [same_flops_gain(a, b, gflops) for a, b in zip(v2, runs["v1"])]
    add("The two-way space (v2) finds better stitched networks than SN-Netv1 at the same FLOPs and budget",
        all(g > 0 for g in gains),
        f"best stitched network within each v1 stitch's FLOPs: {np.mean(gains) * pct:+.2f} points for v2, better "
        f"on {sum(g > 0 for g in gains)}/{len(gains)} seeds; {v2[0]['num_stitches']} vs "
        f"{runs['v1'][0]['num_stitches']} stitches")
    d, wins, n = paired(runs, "v2", "v1", lambda r: r["budget_curve"])
    add("The two-way space (v2) gives a better Pareto frontier, anchors included, than SN-Netv1",
        wins == n and d > 0,
        f"best-under-budget accuracy averaged over 50 budgets: {d * pct:+.2f} points for v2, better on {wins}/{n} "
        f"seeds; stitches below the fast anchor {np.mean([r['below_fast'] for r in v2]):.1f}/"
        f"{v2[0]['num_stitches'] - 2} (v2) vs {np.mean([r['below_fast'] for r in runs['v1']]):.1f}/"
        f"{runs['v1'][0]['num_stitches'] - 2} (v1)")
    d, wins, n = paired(runs, "v2", "v2-uniform", lambda r: (r["fast"] + r["slow"]) / 2)
    df, fast_wins, _ = paired(runs, "v2", "v2-uniform", lambda r: r["fast"])
    add("ROS trains the anchors better than uniform sampling in the two-way space (paper Figure 10)",
        wins == n and d > 0,
        f"mean anchor accuracy {d * pct:+.2f} points with ROS, better on {wins}/{n} seeds (fast anchor "
        f"{df * pct:+.2f}, better on {fast_wins}/{n}); anchors drawn with p={v2[0]['anchor_prob']:.3f} (ROS) vs "
        f"{runs['v2-uniform'][0]['anchor_prob']:.3f}")
    d, wins, n = paired(runs, "v2", "v2-full", lambda r: r["mean"])
    add("LoRA SL performs comparably to fully trained stitching layers (|mean difference| <= 1 point)",
        abs(d) <= 0.01, f"mean stitch accuracy {d * pct:+.2f} points with LoRA SL, LoRA better on {wins}/{n} seeds")
    return out


# ------------------------------------------------------------------------------------------------------------
# report

def mean_std(values: Sequence[float]) -> str:
    """Accuracies in percent as ``mean ± std`` (a single value as is)."""
    return f"{np.mean(values) * 100:.1f} ± {np.std(values) * 100:.1f}" if len(values) > 1 else f"{values[0] * 100:.1f}"


def markdown_tables(study: StudyConfig, anchor_rows: dict, init: Dict[str, dict], runs: Dict[str, List[dict]],
                    seeds: Sequence[int]) -> str:
    """The measured tables (anchors, init, trained variants) and verdicts as Markdown."""
    lines = ["| anchor | config | params (M) | MFLOPs | test acc (%) | acc over last 5 epochs (%) |",
             "|---|---|---|---|---|---|"]
    for name, r in anchor_rows.items():
        lines.append(f"| {name} | {r['config']} | {r['params_m']:.3f} | {r['gflops'] * 1e3:.2f} | {r['acc'] * 100:.1f} | "
                     f"{r['acc_last5_min'] * 100:.1f}-{r['acc_last5_max'] * 100:.1f} |")
    lines += ["", f"Stitched networks: mean/min over the non-anchor stitches; anchors after SN-Net training; "
                  f"SN-Net rows are mean ± std over seeds {list(seeds)} ({study.snnet_epochs} epochs each).", "",
              "| model | stitches | fast acc | slow acc | mean stitch acc | min stitch acc | "
              "stitches below fast anchor | budget-curve acc |", "|---|---|---|---|---|---|---|---|"]
    for name, r in (("at init, LS-initialised layers", init["ls"]),
                    ("at init, Kaiming-initialised layers", init["kaiming"])):
        lines.append(f"| {name} | {r['num_stitches']} | {r['fast'] * 100:.1f} | {r['slow'] * 100:.1f} | "
                     f"{r['mean'] * 100:.1f} | {r['min'] * 100:.1f} | {r['below_fast']} | "
                     f"{r['budget_curve'] * 100:.1f} |")
    for name, rs in runs.items():
        accs = " | ".join(mean_std([r[k] for r in rs]) for k in ("fast", "slow", "mean", "min"))
        lines.append(f"| trained: {VARIANTS[name].label} (`{name}`) | {rs[0]['num_stitches']} | {accs} | "
                     f"{np.mean([r['below_fast'] for r in rs]):.1f} | {mean_std([r['budget_curve'] for r in rs])} |")
    return "\n".join(lines)


def per_stitch_markdown(study: StudyConfig, init: Dict[str, dict], runs: Dict[str, List[dict]],
                        gflops: Dict[int, float]) -> str:
    """Every stitch of the two-way space (first seed): accuracy at init (LS, Kaiming), after v2 and v1 training."""
    space = StitchSpace(study.fast.depth, study.slow.depth)
    v2, v1 = runs["v2"][0]["per_stitch"], runs["v1"][0]["per_stitch"]
    lines = ["| id | type | route | MFLOPs | init, LS (%) | init, Kaiming (%) | trained v2 (%) | trained v1 (%) |",
             "|---|---|---|---|---|---|---|---|"]
    for sid in sorted(space.ids, key=lambda i: (gflops[i], i)):
        cells = [init["ls"]["per_stitch"][sid], init["kaiming"]["per_stitch"][sid], v2[sid], v1.get(sid)]
        accs = " | ".join("" if a is None else f"{a * 100:.1f}" for a in cells)
        lines.append(f"| {sid} | {space[sid].kind} | `{space[sid].route}` | {gflops[sid] * 1e3:.2f} | {accs} |")
    return "\n".join(lines)


def verdict_lines(items: Sequence[dict]) -> str:
    return "\n".join(f"- **{'holds' if v['holds'] else 'does not hold'}**: {v['claim']}. {v['evidence']}."
                     for v in items)


# ------------------------------------------------------------------------------------------------------------
# the study

def run_study(study: StudyConfig, seeds: Sequence[int], output_dir: str) -> dict:
    """Train anchors (first seed), score stitches at init, train every variant per seed, judge the claims."""
    start = time.perf_counter()
    data = load_digits_split(study.test_size)
    anchors, anchor_rows = train_anchors(study, data, seeds[0])
    space, table = StitchSpace(study.fast.depth, study.slow.depth), flops_table(anchors)
    init = score_at_init(anchors, study, data, table, seeds[0])
    runs: Dict[str, List[dict]] = {name: [] for name in VARIANTS}
    for seed in seeds:
        for name in VARIANTS:
            report_dir = output_dir if seed == seeds[0] else None
            runs[name].append(run_variant(anchors, study, VARIANTS[name], data, table, seed, report_dir))
    result = {"config": dataclasses.asdict(study), "seeds": list(seeds), "train_size": len(data.train_x),
              "test_size": len(data.test_x), "anchors": anchor_rows, "init": init, "runs": runs,
              "gflops": table.gflops, "verdicts": verdicts(anchor_rows, init, runs, table.gflops, space),
              "runtime_s": time.perf_counter() - start}
    write_summary(result, study, output_dir)
    return result


def write_summary(result: dict, study: StudyConfig, output_dir: str) -> None:
    """``summary.json`` (everything, per-stitch accuracies included) and ``summary.md`` (tables, verdicts)."""
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, "summary.json"), "w") as f:
        json.dump(result, f, indent=1)
    text = "\n\n".join([
        markdown_tables(study, result["anchors"], result["init"], result["runs"], result["seeds"]),
        verdict_lines(result["verdicts"]),
        f"Per stitch (seed {result['seeds'][0]}; the v1 space holds the anchors and the FS routes):",
        per_stitch_markdown(study, result["init"], result["runs"], result["gflops"]),
        f"Runtime {result['runtime_s'] / 60:.1f} min.\n"])
    with open(os.path.join(output_dir, "summary.md"), "w") as f:
        f.write(text)
    print(text)


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output-dir", default=os.path.join(os.path.dirname(__file__), "results", "digits"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                        help="SN-Net training seeds (the anchors are trained once, with the first)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.threads)
    run_study(StudyConfig(), args.seeds, args.output_dir)


if __name__ == "__main__":
    main()
