"""Does one trained SN-Net fill the accuracy-FLOPs frontier between its anchors? (issues #5, #13)

The paper's central result: after one training, the stitches of two anchors fill the range between them, a
frontier from the small anchor's accuracy and cost to the large one's. This study tests it on real data at
CPU scale. Two plain ViTs (timm ``VisionTransformer``, DeiT3 blocks, patch 2 on 8x8 images) are trained from
scratch, to convergence, on scikit-learn's ``load_digits`` (1797 real handwritten digits shipped inside the
package) with additive Gaussian pixel noise at train and test alike: on clean digits even a tiny ViT reaches
94-97% and leaves no gap to fill, with noise the small anchor saturates well below the large one. Training
images get fresh noise at every draw; each test digit is scored under ``test_draws`` fixed noise draws.

The anchors are then stitched with ``snnet_core`` and trained as one SN-Net with a fixed budget of iterations
per arm (every arm starts from the same anchors, three seeds):

- ``v2``: SN-Netv2 (two-way space, ROS, LoRA SL);
- ``v2-uniform``: the same with uniform sampling (paper Figure 10: ROS trains the anchors better);
- ``v1``: SN-Netv1 (Fast-to-Slow space, uniform sampling, fully trained stitching layers; paper Figures 4 and
  10a: the two-way space gives the better frontier).

Measured per arm and seed: every stitch's test accuracy (``snnet_core.classify_stitches``), the number of
iterations each stitch was trained, the share of stitched networks whose accuracy lies between the anchors',
how many Pareto-frontier stitches lie above the line joining the anchors, and the area under the
accuracy-budget curve (best network under a FLOPs budget, averaged over budgets from the small to the large
anchor) against what the two separately trained anchors alone give. Verdicts are printed with their numbers.

Run ``python benchmarks/digits_stitching.py`` (19 minutes on one thread of a shared 2-core machine). It writes
``benchmarks/results/digits/{summary.json,summary.md,frontier.png}``. The fast version is
``tests/test_digits_stitching.py``, which runs these functions with tiny settings.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import math
import os
import time
from collections import Counter
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from tqdm import tqdm

from snnet_core import (ROUTE_TYPES, FlopsTable, ResourceConstrainedSampler, StitchedViT, StitchSpace,
                        UniformSampler, best_under_budget, build_anchor, build_flops_table, classify_stitches,
                        count_gflops, ls_init_stitching_layers, pareto_frontier)
from snnet_core.io.atomic_io import write_atomic, write_json_atomic

IMG_SIZE = 8
NUM_CLASSES = 10
SPLIT_SEED = 0  # the train/test split and the test noise never change; seeds only change the training
TEST_NOISE_SEED = 10_000
ANCHOR_IDS = StitchSpace(1, 1).anchor_ids()  # (fast, slow): stitch ids are the same in every space
NUM_BUDGETS = 50
Accuracies = Dict[int, float]

# thresholds of the verdicts, fixed before the runs
MIN_ANCHOR_GAP = 0.05  # the anchors must differ by at least 5 points on the test set
CONVERGED_DRIFT = 0.005  # converged: mean test accuracy of the last 10% of epochs within 0.5 point of the 10% before
MIN_SHARE_BETWEEN = 0.5  # "the stitches fill the range": at least half lie between the anchors


# ------------------------------------------------------------------------------------------------------------
# configuration

@dataclasses.dataclass(frozen=True)
class AnchorConfig:
    """A DeiT3-style ViT anchor (timm ``deit3_small_patch16_224`` with these overrides) and its training length."""

    embed_dim: int
    depth: int
    num_heads: int
    epochs: int
    patch_size: int = 2

    def describe(self) -> str:
        return f"{self.depth} blocks x {self.embed_dim} wide, {self.num_heads} heads, patch {self.patch_size}"


@dataclasses.dataclass(frozen=True)
class StudyConfig:
    """Everything that sets the study's numbers; ``StudyConfig()`` is the benchmark, the test shrinks it.

    Attributes:
        fast, slow: the anchors (fast no deeper than slow, same patch size).
        noise_std: standard deviation of the additive Gaussian pixel noise (pixels in [0, 1]).
        test_draws: fixed noise draws per test digit (the test set has ``test_draws`` x 450 images).
        anchor_lr: peak learning rate of anchor training (AdamW, 10% warm-up, cosine decay).
        snnet_iterations: SN-Net training budget of every arm, in iterations of one sampled stitch each.
        snnet_lr: peak learning rate of SN-Net training (paper: 0.1x the anchors').
        snnet_evals: times every stitch is scored during SN-Net training (its learning curve).
        batch_size: images per iteration, for anchors and SN-Nets.
        lora_rank: rank of LoRA SL.
        ros_step: ROS bin width ``t`` as a fraction of the two-way space's FLOPs range (0.1 puts each group of
            stitches with the same number of slow blocks in a bin of its own: 5 bins here).
        calib_images: noisy train images solving the least-squares initialisation (paper: 100).
        test_size: fraction of the 1797 digits held out for test.
    """

    fast: AnchorConfig = AnchorConfig(embed_dim=6, depth=4, num_heads=2, epochs=200)
    slow: AnchorConfig = AnchorConfig(embed_dim=64, depth=4, num_heads=4, epochs=100)
    noise_std: float = 0.3
    test_draws: int = 2
    anchor_lr: float = 5e-3
    snnet_iterations: int = 5000
    snnet_lr: float = 5e-4
    snnet_evals: int = 4
    batch_size: int = 64
    lora_rank: int = 4
    ros_step: float = 0.1
    calib_images: int = 100
    test_size: float = 0.25


@dataclasses.dataclass(frozen=True)
class Arm:
    """One SN-Net training recipe; every arm gets the same number of iterations."""

    label: str
    route_types: Tuple[str, ...]
    sampler: str  # "ros" or "uniform"
    lora: bool  # LoRA SL (frozen LS weight + rank-r update) or fully trained stitching layers


ARMS: Dict[str, Arm] = {
    "v2": Arm("SN-Netv2: two-way space, ROS, LoRA SL", ROUTE_TYPES, "ros", True),
    "v2-uniform": Arm("two-way space, uniform sampling, LoRA SL", ROUTE_TYPES, "uniform", True),
    "v1": Arm("SN-Netv1: Fast-to-Slow space, uniform sampling, full stitching layers", ("anchor", "FS"),
              "uniform", False),
}


# ------------------------------------------------------------------------------------------------------------
# data

@dataclasses.dataclass
class NoisyDigits:
    """The fixed split of scikit-learn's digits with additive Gaussian pixel noise.

    Attributes:
        train_x: clean train digits ``(N, 1, 8, 8)``, pixels in [0, 1]; noise is drawn afresh per use.
        train_y: their labels.
        test_x: ``test_draws`` fixed noisy copies of every test digit, standardised, ``(draws * M, 1, 8, 8)``.
        test_y: their labels.
        noise_std: the noise level.
        mean, std: standardisation of the clean train pixels.
    """

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    noise_std: float
    mean: float
    std: float

    def noisy(self, clean: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """``clean`` digits plus a fresh noise draw, standardised."""
        noise = torch.randn(clean.shape, generator=generator) * self.noise_std
        return (clean + noise - self.mean) / self.std

    def batches(self, batch_size: int, iterations: int, seed: int) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        """``iterations`` noisy train batches: a fresh permutation per epoch, fresh noise per batch."""
        generator = torch.Generator().manual_seed(seed)
        step = 0
        while True:
            for idx in torch.randperm(len(self.train_x), generator=generator).split(batch_size):
                if step == iterations:
                    return
                yield self.noisy(self.train_x[idx], generator), self.train_y[idx]
                step += 1

    def steps_per_epoch(self, batch_size: int) -> int:
        return math.ceil(len(self.train_x) / batch_size)

    def calibration_images(self, num_images: int, seed: int) -> torch.Tensor:
        """``num_images`` noisy train images drawn at random (for the least-squares initialisation)."""
        generator = torch.Generator().manual_seed(seed)
        idx = torch.randperm(len(self.train_x), generator=generator)[:num_images]
        return self.noisy(self.train_x[idx], generator)


def load_noisy_digits(noise_std: float, test_draws: int, test_size: float = 0.25) -> NoisyDigits:
    """scikit-learn's digits, stratified split (fixed seed), test set with ``test_draws`` fixed noise draws."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = torch.from_numpy(digits.images.astype(np.float32)[:, None] / 16.0)
    y = torch.from_numpy(digits.target).long()
    tr, te = train_test_split(np.arange(len(y)), test_size=test_size, stratify=digits.target,
                              random_state=SPLIT_SEED)
    train_x = x[tr]
    data = NoisyDigits(train_x, y[tr], torch.empty(0), torch.empty(0), noise_std, float(train_x.mean()),
                       float(train_x.std()))
    generator = torch.Generator().manual_seed(TEST_NOISE_SEED)
    data.test_x = torch.cat([data.noisy(x[te], generator) for _ in range(test_draws)])
    data.test_y = y[te].repeat(test_draws)
    return data


# ------------------------------------------------------------------------------------------------------------
# training and scoring

def build_digits_anchor(cfg: AnchorConfig) -> VisionTransformer:
    """A from-scratch DeiT3-style ViT for 1-channel 8x8 digits (average-pooled tokens, no cls token)."""
    return build_anchor("deit3_small_patch16_224", img_size=IMG_SIZE, num_classes=NUM_CLASSES,
                        class_token=False, patch_size=cfg.patch_size, in_chans=1, embed_dim=cfg.embed_dim,
                        depth=cfg.depth, num_heads=cfg.num_heads)


def fit(params: Sequence[nn.Parameter], logits_fn: Callable[[torch.Tensor, int], torch.Tensor], data: NoisyDigits,
        iterations: int, lr: float, batch_size: int, seed: int, desc: str, eval_every: int = 0,
        evaluate: Optional[Callable[[], dict]] = None) -> List[dict]:
    """Minimise label-smoothed cross-entropy with AdamW (weight decay 0.05, 10% warm-up, cosine decay).

    Args:
        logits_fn: ``(images, iteration) -> logits``; the iteration lets an SN-Net pick its stitch.
        eval_every: call ``evaluate`` every this many iterations (0: never).
        evaluate: returns a dict of scores; the mean train loss since the last call and the iteration are
            added to it.

    Returns:
        the dicts ``evaluate`` returned, in order.
    """
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.05)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=iterations, pct_start=0.1)
    history, losses = [], []
    for step, (x, y) in enumerate(tqdm(data.batches(batch_size, iterations, seed), total=iterations, desc=desc,
                                       leave=False)):
        loss = F.cross_entropy(logits_fn(x, step), y, label_smoothing=0.1)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(float(loss.detach()))
        if evaluate is not None and eval_every and (step + 1) % eval_every == 0:
            history.append(dict(evaluate(), iteration=step + 1, train_loss=float(np.mean(losses))))
            losses = []
    return history


@torch.no_grad()
def accuracy(model: nn.Module, data: NoisyDigits) -> float:
    """Test accuracy of a plain model (eval mode)."""
    model.eval()
    return float((model(data.test_x).argmax(dim=1) == data.test_y).float().mean())


def train_anchors(study: StudyConfig, data: NoisyDigits, seed: int) -> Tuple[Tuple[VisionTransformer, ...], dict]:
    """Train the fast and the slow anchor from scratch; returns them (eval mode) and a summary per anchor
    (accuracy, cost, and its learning curve: test accuracy and mean train loss after every epoch)."""
    anchors, rows = [], {}
    steps = data.steps_per_epoch(study.batch_size)
    for name, cfg in (("fast", study.fast), ("slow", study.slow)):
        torch.manual_seed(seed)
        model = build_digits_anchor(cfg).train()

        def evaluate() -> dict:
            acc = accuracy(model, data)
            model.train()
            return {"acc": acc}

        curve = fit(list(model.parameters()), lambda x, _: model(x), data, cfg.epochs * steps, study.anchor_lr,
                    study.batch_size, seed, f"train {name} anchor", eval_every=steps, evaluate=evaluate)
        accs = [c["acc"] for c in curve]
        tenth = max(1, len(accs) // 10)
        rows[name] = {"config": cfg.describe(), "epochs": cfg.epochs, "iterations": cfg.epochs * steps,
                      "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
                      "gflops": count_gflops(model.eval(), (data.test_x[:1],)), "acc": accs[-1],
                      "tail_drift": float(np.mean(accs[-tenth:]) - np.mean(accs[-2 * tenth:-tenth])), "curve": curve}
        anchors.append(model.eval())
    return tuple(anchors), rows


def flops_table(anchors: Sequence[VisionTransformer]) -> FlopsTable:
    """GFLOPs and parameters of every stitch of the two-way space, classifier included."""
    return build_flops_table(StitchedViT(*anchors), (IMG_SIZE, IMG_SIZE), mode="classify")


def build_snnet(anchors: Sequence[VisionTransformer], study: StudyConfig, arm: Arm, data: NoisyDigits, seed: int,
                ls_init: bool = True) -> StitchedViT:
    """SN-Net over copies of the anchors; stitching layers least-squares or (``ls_init=False``) Kaiming init."""
    torch.manual_seed(seed)
    fast, slow = (copy.deepcopy(a) for a in anchors)
    net = StitchedViT(fast, slow, lora_rank=study.lora_rank if arm.lora else 0, route_types=arm.route_types)
    if ls_init:
        calibration = data.calibration_images(study.calib_images, seed)
        ls_init_stitching_layers(net, [calibration], num_images=study.calib_images, progress=False)
    return net.eval()


@torch.no_grad()
def stitch_accuracies(net: StitchedViT, data: NoisyDigits, batch_size: int = 1024) -> Accuracies:
    """Test accuracy of every stitch of ``net``'s space, shared route prefixes run once per batch."""
    net.eval()
    correct: Counter = Counter()
    for x, y in zip(data.test_x.split(batch_size), data.test_y.split(batch_size)):
        for sid, logits in classify_stitches(net, x):
            correct[sid] += int((logits.argmax(dim=1) == y).sum())
    return {sid: correct[sid] / len(data.test_y) for sid in net.space.ids}


def make_sampler(net: StitchedViT, table: FlopsTable, arm: Arm, study: StudyConfig, seed: int) -> UniformSampler:
    """ROS with bins of width ``t`` = ``ros_step`` x the two-way space's FLOPs range, or uniform sampling."""
    gflops = {sid: table.gflops[sid] for sid in net.space.ids}
    if arm.sampler == "uniform":
        return UniformSampler(list(gflops), seed)
    step = (max(table.gflops.values()) - min(table.gflops.values())) * study.ros_step
    return ResourceConstrainedSampler(gflops, step, seed)


def draw_counts(sampler: UniformSampler, iterations: int) -> Dict[int, int]:
    """How many of ``iterations`` training iterations each stitch gets (draws are a function of the iteration)."""
    counts = Counter(sampler.sample(step) for step in range(iterations))
    return {sid: counts[sid] for sid in sampler.stitch_ids}


def train_snnet(net: StitchedViT, sampler: UniformSampler, study: StudyConfig, data: NoisyDigits, seed: int,
                desc: str) -> List[dict]:
    """SN-Net training, one sampled stitch per iteration, anchors and stitching layers all trainable.

    Returns the learning curve: every stitch's test accuracy ``snnet_evals`` times during training.
    """
    torch.manual_seed(seed)
    net.train()

    def evaluate() -> dict:
        acc = stitch_accuracies(net, data)
        net.train()
        return {"per_stitch": acc}

    params = [p for p in net.parameters() if p.requires_grad]
    return fit(params, lambda x, step: net.classify(x, sampler.sample(step)), data, study.snnet_iterations,
               study.snnet_lr, study.batch_size, seed, desc,
               eval_every=max(1, study.snnet_iterations // study.snnet_evals), evaluate=evaluate)


# ------------------------------------------------------------------------------------------------------------
# frontier measures

def budget_curve(acc: Accuracies, gflops: Dict[int, float], lo: float, hi: float) -> float:
    """Accuracy of the best network under a FLOPs budget, averaged over ``NUM_BUDGETS`` budgets evenly spaced
    from ``lo`` to ``hi``: the normalised area under the accuracy-budget curve."""
    costs = {sid: gflops[sid] for sid in acc}
    return float(np.mean([acc[best_under_budget(costs, acc, b)] for b in np.linspace(lo, hi, NUM_BUDGETS)]))


def frontier_measures(acc: Accuracies, gflops: Dict[int, float], alone: Tuple[float, float]) -> dict:
    """Where the stitched networks of one trained SN-Net lie relative to its anchors.

    Args:
        acc: test accuracy of every stitch of the SN-Net (its anchors included).
        gflops: cost of every stitch.
        alone: test accuracy of the separately trained (fast, slow) anchors: what a user without SN-Net has.

    Returns:
        ``fast``/``slow``: the SN-Net's anchors; ``mean``/``min``: over its stitched networks; ``between``: the
        share of stitched networks with accuracy within the SN-Net's anchors'; ``frontier``: stitched networks on
        the Pareto frontier; ``above_line``: those of them above the straight line joining the anchors in
        (GFLOPs, accuracy); ``auc``, ``auc_alone``, ``auc_line``: budget-curve accuracy of the SN-Net, of the
        two separately trained anchors alone, and of the line joining the SN-Net's anchors.
    """
    (f_id, s_id), stitched = ANCHOR_IDS, [sid for sid in acc if sid not in ANCHOR_IDS]
    lo, hi = gflops[f_id], gflops[s_id]
    fast, slow = acc[f_id], acc[s_id]

    def line(g: float) -> float:
        return fast + (slow - fast) * (g - lo) / (hi - lo)

    frontier = [sid for sid in pareto_frontier({sid: gflops[sid] for sid in acc}, acc) if sid not in ANCHOR_IDS]
    alone_acc = dict(zip(ANCHOR_IDS, alone))
    return {
        "fast": fast, "slow": slow,
        "mean": float(np.mean([acc[s] for s in stitched])), "min": float(np.min([acc[s] for s in stitched])),
        "between": float(np.mean([min(fast, slow) <= acc[s] <= max(fast, slow) for s in stitched])),
        "below_fast": sum(acc[s] < fast for s in stitched),
        "frontier": len(frontier),
        "above_line": sum(acc[s] > line(gflops[s]) for s in frontier),
        "auc": budget_curve(acc, gflops, lo, hi),
        "auc_alone": budget_curve(alone_acc, gflops, lo, hi),
        "auc_line": (fast + slow) / 2,
    }


def score_at_init(anchors: Sequence[VisionTransformer], study: StudyConfig, data: NoisyDigits, table: FlopsTable,
                  alone: Tuple[float, float], seed: int) -> Dict[str, dict]:
    """Every stitch of the two-way space before SN-Net training, LS- vs Kaiming-initialised stitching layers."""
    out = {}
    for name, ls_init in (("ls", True), ("kaiming", False)):
        net = build_snnet(anchors, study, ARMS["v2"], data, seed, ls_init=ls_init)
        acc = stitch_accuracies(net, data)
        out[name] = dict(frontier_measures(acc, table.gflops, alone), per_stitch=acc)
    return out


def run_arm(anchors: Sequence[VisionTransformer], study: StudyConfig, arm_name: str, data: NoisyDigits,
            table: FlopsTable, alone: Tuple[float, float], seed: int) -> dict:
    """Build, train and score one arm for one seed."""
    arm = ARMS[arm_name]
    net = build_snnet(anchors, study, arm, data, seed)
    sampler = make_sampler(net, table, arm, study, seed)
    counts = draw_counts(sampler, study.snnet_iterations)
    stitched = [counts[sid] for sid in counts if sid not in ANCHOR_IDS]
    start = time.perf_counter()
    curve = train_snnet(net, sampler, study, data, seed, f"train {arm_name} (seed {seed})")
    train_s = time.perf_counter() - start
    acc = stitch_accuracies(net, data)
    curve_means = [dict(frontier_measures(c["per_stitch"], table.gflops, alone), iteration=c["iteration"],
                        train_loss=c["train_loss"]) for c in curve]
    return dict(frontier_measures(acc, table.gflops, alone), per_stitch=acc, iterations_per_stitch=counts,
                iters_anchors=[counts[sid] for sid in ANCHOR_IDS], iters_stitched_min=min(stitched),
                iters_stitched_median=float(np.median(stitched)), iters_stitched_max=max(stitched),
                curve=[{k: c[k] for k in ("iteration", "train_loss", "fast", "slow", "mean", "auc")}
                       for c in curve_means],
                ros_bins=len(sampler.bins) if isinstance(sampler, ResourceConstrainedSampler) else None,
                train_s=train_s)


# ------------------------------------------------------------------------------------------------------------
# verdicts

def paired(runs: Dict[str, List[dict]], a: str, b: str, key: Callable[[dict], float]) -> Tuple[float, int, int]:
    """Mean over seeds of ``key(a) - key(b)`` and on how many seeds it is positive."""
    diffs = [key(ra) - key(rb) for ra, rb in zip(runs[a], runs[b])]
    return float(np.mean(diffs)), sum(d > 0 for d in diffs), len(diffs)


def same_flops_gain(run: dict, baseline: dict, gflops: Dict[int, float]) -> float:
    """How much better ``run``'s best stitched network is than ``baseline``'s within each of the baseline's
    stitched networks' FLOPs (+1%, as routes with two stitching layers cost a little more); the mean."""
    def best(acc: Accuracies, budget: float) -> float:
        return max(a for sid, a in acc.items() if sid not in ANCHOR_IDS and gflops[sid] <= budget)

    budgets = [gflops[sid] * 1.01 for sid in baseline["per_stitch"] if sid not in ANCHOR_IDS]
    return float(np.mean([best(run["per_stitch"], b) - best(baseline["per_stitch"], b) for b in budgets]))


def pm(values: Sequence[float], scale: float = 100.0, digits: int = 1) -> str:
    """``mean ± std`` of ``values`` times ``scale`` (percent by default)."""
    return f"{np.mean(values) * scale:.{digits}f} ± {np.std(values) * scale:.{digits}f}"


def iteration_text(runs: Dict[str, List[dict]], name: str) -> str:
    """Iterations per stitch of one arm (the draws are the same on every seed up to sampling noise: seed 0)."""
    r = runs[name][0]
    return (f"`{name}`: stitched networks {r['iters_stitched_min']}-{r['iters_stitched_max']} (median "
            f"{r['iters_stitched_median']:.0f}), anchors {r['iters_anchors'][0]} / {r['iters_anchors'][1]}")


def verdicts(study: StudyConfig, anchor_rows: dict, init: Dict[str, dict],
             runs: Dict[str, List[dict]], gflops: Dict[int, float]) -> List[dict]:
    """One verdict per claim: ``{"claim", "holds", "evidence"}``; accuracies in percent, spreads over seeds."""
    out = []

    def add(claim: str, holds: bool, evidence: str) -> None:
        out.append({"claim": claim, "holds": bool(holds), "evidence": evidence})

    fast, slow = anchor_rows["fast"], anchor_rows["slow"]
    gap = slow["acc"] - fast["acc"]
    drift = max(abs(fast["tail_drift"]), abs(slow["tail_drift"]))
    add(f"The anchors differ by at least {MIN_ANCHOR_GAP * 100:.0f} points and each is trained to convergence "
        f"(mean test accuracy of its last 10% of epochs within {CONVERGED_DRIFT * 100:.1f} point of the 10% before)",
        gap >= MIN_ANCHOR_GAP and drift <= CONVERGED_DRIFT,
        f"fast {fast['acc'] * 100:.1f}%, slow {slow['acc'] * 100:.1f}%, gap {gap * 100:.1f} points; last 10% of epochs "
        f"vs the 10% before: {fast['tail_drift'] * 100:+.2f} (fast, {fast['epochs']} epochs) and "
        f"{slow['tail_drift'] * 100:+.2f} points (slow, {slow['epochs']} epochs)")

    v2 = runs["v2"]
    n_st = len(v2[0]["per_stitch"]) - 2
    share = [r["between"] for r in v2]
    add(f"The stitched networks fill the accuracy range between the anchors (at least "
        f"{MIN_SHARE_BETWEEN * 100:.0f}% of them lie between the anchors' accuracies, mean over seeds)",
        np.mean(share) >= MIN_SHARE_BETWEEN,
        f"{pm(share, 100, 0)}% of the {n_st} stitched networks between the SN-Net's anchors (per seed "
        + ", ".join(f"{s * n_st:.0f}" for s in share) + f"); {pm([r['below_fast'] for r in v2], 1, 1)} below the "
        f"fast anchor; {iteration_text(runs, 'v2')} iterations")
    above = [r["above_line"] for r in v2]
    front = [r["frontier"] for r in v2]
    add("The frontier is monotone and lies above the line joining the anchors (most stitched frontier networks "
        "above it, every seed)",
        all(f > 0 and 2 * a > f for a, f in zip(above, front)),
        "stitched networks on the Pareto frontier above the line / on the frontier, per seed: "
        + ", ".join(f"{a}/{f}" for a, f in zip(above, front)))
    gain = [r["auc"] - r["auc_alone"] for r in v2]
    add("One SN-Net gives a better accuracy-budget curve than the two separately trained anchors alone (every seed)",
        all(g > 0 for g in gain),
        f"budget-curve accuracy (best network under a budget, {NUM_BUDGETS} budgets between the anchors' FLOPs) "
        f"{pm([r['auc'] for r in v2])}% vs {v2[0]['auc_alone'] * 100:.1f}% for the anchors alone "
        f"({pm(gain, 100, 2)} points; per seed " + ", ".join(f"{g * 100:+.2f}" for g in gain)
        + f"); the line joining the SN-Net's anchors gives {pm([r['auc_line'] for r in v2])}%")

    d, wins, n = paired(runs, "v2", "v1", lambda r: r["auc"])
    gains = [same_flops_gain(a, b, gflops) for a, b in zip(v2, runs["v1"])]
    add("With the same iterations, the two-way space (v2) gives a better frontier than SN-Netv1's (every seed)",
        wins == n and all(g > 0 for g in gains),
        f"budget-curve accuracy {d * 100:+.2f} points for v2 (better on {wins}/{n} seeds); best stitched network "
        f"within each v1 stitch's FLOPs {np.mean(gains) * 100:+.2f} points for v2 (better on "
        f"{sum(g > 0 for g in gains)}/{len(gains)}); {study.snnet_iterations} iterations each: "
        f"{iteration_text(runs, 'v2')}; {iteration_text(runs, 'v1')}")
    d, wins, n = paired(runs, "v2", "v2-uniform", lambda r: (r["fast"] + r["slow"]) / 2)
    df, fast_wins, _ = paired(runs, "v2", "v2-uniform", lambda r: r["fast"])
    ds_, slow_wins, _ = paired(runs, "v2", "v2-uniform", lambda r: r["slow"])
    dm, mean_wins, _ = paired(runs, "v2", "v2-uniform", lambda r: r["mean"])
    add("With the same iterations, ROS trains the anchors better than uniform sampling (paper Figure 10; every "
        "seed)",
        wins == n,
        f"mean anchor accuracy {d * 100:+.2f} points with ROS (better on {wins}/{n} seeds; fast {df * 100:+.2f}, "
        f"{fast_wins}/{n}; slow {ds_ * 100:+.2f}, {slow_wins}/{n}); mean stitched network {dm * 100:+.2f} "
        f"({mean_wins}/{n}); {iteration_text(runs, 'v2')}; {iteration_text(runs, 'v2-uniform')}")
    ls, km = init["ls"], init["kaiming"]
    add("Before SN-Net training, least-squares-initialised stitching layers beat Kaiming-initialised ones",
        ls["mean"] > km["mean"],
        f"mean over the {n_st} stitched networks {ls['mean'] * 100:.1f}% (LS) vs {km['mean'] * 100:.1f}% "
        f"(Kaiming); {ls['below_fast']}/{n_st} LS-initialised stitches below the fast anchor")
    return out


# ------------------------------------------------------------------------------------------------------------
# report

def markdown_tables(study: StudyConfig, result: dict) -> str:
    """The anchors, at-init and trained tables as Markdown."""
    anchors, init, runs = result["anchors"], result["init"], result["runs"]
    lines = ["| anchor | config | params (M) | MFLOPs | epochs (iterations) | test acc (%) | "
             "last 10% of epochs vs the 10% before (points) |", "|---|---|---|---|---|---|---|"]
    for name, r in anchors.items():
        lines.append(f"| {name} | {r['config']} | {r['params_m']:.3f} | {r['gflops'] * 1e3:.2f} | {r['epochs']} "
                     f"({r['iterations']}) | {r['acc'] * 100:.1f} | {r['tail_drift'] * 100:+.2f} |")
    lines += ["", f"SN-Net rows: mean ± std over seeds {result['seeds']}, {study.snnet_iterations} iterations per "
                  f"arm; iterations per stitch from seed {result['seeds'][0]}'s draws. Budget-curve accuracy: best "
                  f"network under a FLOPs budget, averaged over {NUM_BUDGETS} budgets from the fast to the slow "
                  f"anchor; the two anchors alone give {init['ls']['auc_alone'] * 100:.1f}%.", "",
              "| model | stitches | iterations per stitched network (min-max) | iterations per anchor (fast/slow) | "
              "fast acc | slow acc | mean stitched acc | stitched between anchors (%) | frontier above line | "
              "budget-curve acc | vs anchors alone (points) |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in (("at init, LS-initialised layers", init["ls"]), ("at init, Kaiming-initialised layers",
                                                                      init["kaiming"])):
        lines.append(f"| {name} | {len(r['per_stitch'])} | 0 | 0 | {r['fast'] * 100:.1f} | {r['slow'] * 100:.1f} | "
                     f"{r['mean'] * 100:.1f} | {r['between'] * 100:.0f} | {r['above_line']}/{r['frontier']} | "
                     f"{r['auc'] * 100:.1f} | {(r['auc'] - r['auc_alone']) * 100:+.2f} |")
    for name, rs in runs.items():
        r0 = rs[0]
        cells = " | ".join(pm([r[k] for r in rs]) for k in ("fast", "slow", "mean"))
        lines.append(
            f"| trained: {ARMS[name].label} (`{name}`) | {len(r0['per_stitch'])} | {r0['iters_stitched_min']}-"
            f"{r0['iters_stitched_max']} | {r0['iters_anchors'][0]}/{r0['iters_anchors'][1]} | {cells} | "
            f"{pm([r['between'] for r in rs], 100, 0)} | {np.mean([r['above_line'] for r in rs]):.1f}/"
            f"{np.mean([r['frontier'] for r in rs]):.1f} | {pm([r['auc'] for r in rs])} | "
            f"{pm([r['auc'] - r['auc_alone'] for r in rs], 100, 2)} |")
    return "\n".join(lines)


def curve_markdown(runs: Dict[str, List[dict]]) -> str:
    """SN-Net learning curves: mean over seeds at every evaluation."""
    lines = ["| arm | iteration | train loss | fast acc | slow acc | mean stitched acc | budget-curve acc |",
             "|---|---|---|---|---|---|---|"]
    for name, rs in runs.items():
        for i, point in enumerate(rs[0]["curve"]):
            pts = [r["curve"][i] for r in rs]
            lines.append(f"| `{name}` | {point['iteration']} | {np.mean([p['train_loss'] for p in pts]):.3f} | "
                         + " | ".join(f"{np.mean([p[k] for p in pts]) * 100:.1f}" for k in ("fast", "slow", "mean",
                                                                                           "auc")) + " |")
    return "\n".join(lines)


def per_stitch_markdown(result: dict, space: StitchSpace) -> str:
    """Every stitch of the two-way space: accuracy at LS init and per arm (mean ± std over seeds)."""
    gflops, runs = result["gflops"], result["runs"]
    lines = ["| id | type | route | MFLOPs | init, LS (%) | " + " | ".join(f"`{n}` (%)" for n in runs) + " |",
             "|---|---|---|---|---|" + "---|" * len(runs)]
    for sid in sorted(space.ids, key=lambda i: (gflops[i], i)):
        cells = [pm([r["per_stitch"][sid] for r in rs]) if sid in rs[0]["per_stitch"] else "" for rs in runs.values()]
        lines.append(f"| {sid} | {space[sid].kind} | `{space[sid].route}` | {gflops[sid] * 1e3:.3f} | "
                     f"{result['init']['ls']['per_stitch'][sid] * 100:.1f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def verdict_lines(items: Sequence[dict]) -> str:
    return "\n".join(f"- **{'holds' if v['holds'] else 'does not hold'}**: {v['claim']}. {v['evidence']}."
                     for v in items)


def plot(result: dict, path: str) -> None:
    """Anchor learning curves, then accuracy vs MFLOPs per arm: every stitch (mean ± std over seeds), the
    frontier of the means, the line joining the anchors and the budget curve of the anchors alone."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gflops, runs, anchors = result["gflops"], result["runs"], result["anchors"]
    fig, axes = plt.subplots(1, 1 + len(runs), figsize=(4.2 * (1 + len(runs)), 3.8))
    ax = axes[0]
    for name, r in anchors.items():
        ax.plot(range(1, r["epochs"] + 1), [c["acc"] * 100 for c in r["curve"]], label=f"{name}: {r['config']}")
    ax.set(xlabel="epoch", ylabel="test accuracy (%)", title="anchors trained from scratch")
    ax.legend(fontsize=6)
    alone = [anchors["fast"]["acc"] * 100, anchors["slow"]["acc"] * 100]
    lo, hi = (gflops[sid] * 1e3 for sid in ANCHOR_IDS)
    for ax, (name, rs) in zip(axes[1:], runs.items()):
        ids = sorted(rs[0]["per_stitch"], key=lambda i: gflops[i])
        mean = {sid: float(np.mean([r["per_stitch"][sid] for r in rs])) * 100 for sid in ids}
        std = [float(np.std([r["per_stitch"][sid] for r in rs])) * 100 for sid in ids]
        x = [gflops[sid] * 1e3 for sid in ids]
        ax.errorbar(x, [mean[s] for s in ids], yerr=std, fmt="o", ms=3, color="tab:blue", label="stitches")
        front = pareto_frontier({sid: gflops[sid] for sid in ids}, mean)
        ax.plot([gflops[s] * 1e3 for s in front], [mean[s] for s in front], "-", color="tab:blue", lw=1,
                label="frontier")
        ax.plot([lo, hi], [mean[ANCHOR_IDS[0]], mean[ANCHOR_IDS[1]]], "--", color="grey", lw=1,
                label="line joining the anchors")
        ax.step([lo, hi, hi], [alone[0], alone[0], alone[1]], where="post", color="tab:red", lw=1,
                label="anchors alone")
        ax.set(xlabel="MFLOPs", title=f"{name} ({len(ids)} stitches, {len(rs)} seeds)")
        ax.legend(fontsize=6, loc="lower right")
    fig.tight_layout()
    write_atomic(path, lambda f: fig.savefig(f, format="png", dpi=110), binary=True)
    plt.close(fig)


# ------------------------------------------------------------------------------------------------------------
# the study

def run_study(study: StudyConfig, seeds: Sequence[int], output_dir: str) -> dict:
    """Train the anchors (first seed), score every stitch at init, train every arm per seed, judge the claims,
    write ``summary.json``, ``summary.md`` and ``frontier.png`` to ``output_dir``."""
    start = time.perf_counter()
    data = load_noisy_digits(study.noise_std, study.test_draws, study.test_size)
    anchors, anchor_rows = train_anchors(study, data, seeds[0])
    alone = (anchor_rows["fast"]["acc"], anchor_rows["slow"]["acc"])
    table = flops_table(anchors)
    init = score_at_init(anchors, study, data, table, alone, seeds[0])
    runs = {name: [run_arm(anchors, study, name, data, table, alone, seed) for seed in seeds] for name in ARMS}
    result = {"config": dataclasses.asdict(study), "seeds": list(seeds), "train_size": len(data.train_x),
              "test_images": len(data.test_x), "anchors": anchor_rows, "init": init, "runs": runs,
              "gflops": table.gflops, "verdicts": verdicts(study, anchor_rows, init, runs, table.gflops),
              "runtime_s": time.perf_counter() - start}
    write_summary(result, study, output_dir)
    return result


def write_summary(result: dict, study: StudyConfig, output_dir: str) -> None:
    """``summary.json`` (every number), ``summary.md`` (tables, verdicts, per-stitch table), ``frontier.png``."""
    os.makedirs(output_dir, exist_ok=True)
    write_json_atomic(os.path.join(output_dir, "summary.json"), result)
    plot(result, os.path.join(output_dir, "frontier.png"))
    space = StitchSpace(study.fast.depth, study.slow.depth)
    text = "\n\n".join([
        markdown_tables(study, result), verdict_lines(result["verdicts"]),
        "SN-Net learning curves (mean over seeds; accuracies in %):", curve_markdown(result["runs"]),
        "Per stitch (mean ± std over seeds; the v1 space holds the anchors and the FS routes):",
        per_stitch_markdown(result, space), f"Runtime {result['runtime_s'] / 60:.1f} min.\n"])
    write_atomic(os.path.join(output_dir, "summary.md"), lambda f: f.write(text))
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
