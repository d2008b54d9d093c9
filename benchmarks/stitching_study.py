"""Does one trained SN-Net fill the accuracy-FLOPs frontier between its anchors? A CPU-scale test (issue 21).

The paper's central result: after one training, the stitches of two anchors fill the range between them. The
authors' own per-stitch table (DeiT3-S/L on ImageNet) is read with ``benchmarks/frontier_measures.py``; this study
asks the same questions of an SN-Net trained here, with the same script on the per-stitch results it writes.

Data: Fashion-MNIST (the official IDX files of Zalando's 28x28 grey-scale clothing images, 10 classes; Debian's
package ``dataset-fashion-mnist`` ships them), a fixed class-balanced subset of the training split and of the test
split; training images get the augmentation a small ViT needs (random left-right flip, random translation by up
to ``max_shift`` pixels), drawn afresh every epoch.

Anchors: two plain ViTs (timm ``VisionTransformer``, DeiT3 blocks with LayerScale, patch 7, average-pooled
tokens), the slow one twice as deep and twice as wide (DeiT3-S/L: 2x and 2.7x), trained from scratch for
``epochs``. How long is long enough is judged apart, with ``--anchor-trials`` (the study's own anchor training at
several lengths: the test accuracy gained by doubling the training).

The SN-Nets are trained and scored by the classification project's own code (``projects/snnet_cls``: ``ls_init``,
``fit`` with its ROS or uniform sampler and DeiT distillation, ``evaluate_stitches_in_memory`` through shared route
prefixes), with a CPU-scale recipe (AdamW, cosine by epoch, label smoothing, no CutMix).

Arms (every arm starts from the same anchors; seeds change the SN-Net training only): the SN-Netv2 recipe
(two-way space, ROS, LoRA SL, least-squares init) and one change each, as the papers vary them when the frontier
is poor: ``iterations_factor`` times the iterations, fully trained stitching layers instead of LoRA SL, default
(Kaiming) instead of least-squares init, uniform sampling instead of ROS, distillation from the slow anchor.

Every (arm, seed) writes the per-stitch results file ``runs/<arm>/seed<k>/stitch_results.json`` (the format of
``snnet_core.evaluate_stitches``), and its measures (``share_between``, ``below_small``, ``frontier_points``,
``frontier_above_line``, ``bin_gap``) are those ``benchmarks/frontier_measures.py`` reads from that file.

    apt-get install dataset-fashion-mnist   # once; or --data-root DIR with the four IDX files
    python benchmarks/stitching_study.py --authors-table stitches_res_s_l.txt   # one thread, see the doc

writes ``summary.json``, ``summary.md``, ``frontier.png`` (the authors' table and the study side by side) and
the per-run results under ``--output-dir``; ``tests/test_stitching_study.py`` runs it with tiny settings on a tiny IDX set.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import gzip
import json
import math
import os
import shutil
import struct
import sys
import time
from collections import Counter
from typing import Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from torch.utils.data import Dataset
from tqdm import tqdm

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # benchmarks/frontier_measures.py
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import frontier_measures as measures_script  # noqa: E402
from projects.snnet_cls.evaluation import evaluate_stitches_in_memory  # noqa: E402
from projects.snnet_cls.model import classifier_flops_table  # noqa: E402
from projects.snnet_cls.training import TrainRecipe, fit as fit_snnet, ls_init  # noqa: E402
from snnet_core import (FlopsTable, StitchedViT, StitchSpace, build_anchor, count_gflops, pareto_frontier,  # noqa: E402
                        stitch_id_from_upstream)
from snnet_core.evaluation.frontier_measures import MEASURE_NAMES, FrontierMeasures, anchor_line  # noqa: E402
from snnet_core.evaluation.report import RESULTS_FILE, ROUTE_COLOURS, ROUTE_NAMES, check_results  # noqa: E402
from snnet_core.io.atomic_io import strict_json, write_atomic, write_json_atomic  # noqa: E402

IMG_SIZE = 28
NUM_CLASSES = 10
DATA_ROOT = "/usr/share/datasets/fashion-mnist"  # Debian's dataset-fashion-mnist puts the official IDX files here
SPLIT_SEED = 0  # the train/test subsets never change; seeds only change the training
ANCHOR_IDS = StitchSpace(1, 1).anchor_ids()  # (fast, slow): stitch ids are the same in every space
METRIC = "acc1"  # per-stitch results: top-1 test accuracy in percent, as in the authors' table
STUDY_FILE, ANCHOR_WEIGHTS, ANCHOR_SUMMARY, RUN_FILE = "study.json", "anchors.pt", "anchors.json", "run.json"
TRIALS_FILE = "anchor_trials.json"
STUDY_OUTPUTS = (STUDY_FILE, ANCHOR_WEIGHTS, ANCHOR_SUMMARY, "runs", "summary.json", "summary.md", "frontier.png")
AUTHORS_DEPTHS = (12, 24)  # DeiT3-S/L: the authors' table numbers its stitches in this space
Accuracies = Dict[int, float]


# ------------------------------------------------------------------------------------------------------------
# configuration

@dataclasses.dataclass(frozen=True)
class AnchorConfig:
    """A DeiT3-style ViT anchor (timm ``deit3_small_patch16_224`` with these overrides) and its training length.
    Convergence is judged outside the study, by ``--anchor-trials`` (the gain of doubling ``epochs``)."""

    embed_dim: int
    depth: int
    num_heads: int
    epochs: int
    patch_size: int = 7

    def describe(self) -> str:
        return f"{self.depth} blocks x {self.embed_dim} wide, {self.num_heads} heads, patch {self.patch_size}"


@dataclasses.dataclass(frozen=True)
class Arm:
    """One SN-Net training recipe.

    Attributes:
        iterations_factor: iterations as a multiple of ``StudyConfig.snnet_iterations``.
        lora_rank: rank of LoRA SL; 0 trains full stitching layers (SN-Netv1).
        ls_init: least-squares init of the stitching layers (else PyTorch's default, Kaiming-uniform).
        sampler: ``ros`` (SN-Netv2) or ``uniform`` (SN-Netv1).
        distill: add soft distillation from the trained slow anchor to every sampled stitch's loss.
    """

    label: str
    iterations_factor: int = 1
    lora_rank: Optional[int] = None  # None: StudyConfig.lora_rank
    ls_init: bool = True
    sampler: str = "ros"
    distill: bool = False


ARMS: Dict[str, Arm] = {
    "v2": Arm("SN-Netv2 recipe: ROS, LoRA SL, LS init"),
    "v2-2x": Arm("2x the iterations", iterations_factor=2),
    "full-sl": Arm("full stitching layers instead of LoRA SL", lora_rank=0),
    "default-init": Arm("default (Kaiming) init instead of LS init", ls_init=False),
    "uniform": Arm("uniform sampling instead of ROS", sampler="uniform"),
    "distill": Arm("distillation from the slow anchor", distill=True),
}


@dataclasses.dataclass(frozen=True)
class StudyConfig:
    """Everything that sets the study's numbers; ``StudyConfig()`` is the benchmark, the test shrinks it.

    Attributes:
        fast, slow: the anchors (fast no deeper than slow, same patch size).
        train_size: class-balanced subset of the official 60k training images (fixed, ``SPLIT_SEED``).
        test_size: class-balanced subset of the official 10k test images; ``None``: all of them.
        max_shift: augmentation: random translation by up to this many pixels (and a random left-right flip).
        anchor_lr: peak learning rate of anchor training (AdamW, 10% warm-up, cosine decay).
        snnet_iterations: SN-Net training iterations (one sampled stitch each) of an arm with factor 1, rounded to
            whole epochs (the classification project's schedule is by epoch; at least one).
        snnet_lr: peak learning rate of SN-Net training (paper: 0.1x the anchors').
        batch_size: images per iteration, for anchors and SN-Nets.
        lora_rank: rank of LoRA SL.
        ros_step: ROS bin width ``t`` as a fraction of the two-way space's FLOPs range.
        calib_images: augmented train images solving the least-squares initialisation (paper: 100).
        distill_weight, distill_temperature: DeiT's soft distillation (``projects.snnet_cls.training``'s
            ``ClassificationLoss``): ``(1 - alpha) CE + alpha tau^2 KL / logits.numel()``.
        arms: the arms to run (names of ``ARMS``).
    """

    fast: AnchorConfig = AnchorConfig(embed_dim=16, depth=4, num_heads=1, epochs=240)
    slow: AnchorConfig = AnchorConfig(embed_dim=32, depth=8, num_heads=2, epochs=240)
    train_size: int = 5000
    test_size: Optional[int] = 5000
    max_shift: int = 2
    anchor_lr: float = 5e-3
    snnet_iterations: int = 900
    snnet_lr: float = 5e-4
    batch_size: int = 128
    lora_rank: int = 4
    ros_step: float = 0.1
    calib_images: int = 100
    distill_weight: float = 0.5
    distill_temperature: float = 1.0
    arms: Tuple[str, ...] = tuple(ARMS)


# ------------------------------------------------------------------------------------------------------------
# data

IDX_FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
             "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
IDX_MAGIC = {"images": 2051, "labels": 2049}  # MNIST's IDX format: big-endian header, then unsigned bytes


def read_idx(path: str, kind: str) -> np.ndarray:
    """One gzip-compressed IDX file of the MNIST format: ``images`` ``(N, 28, 28)`` or ``labels`` ``(N,)``, uint8.
    ``ValueError`` naming the file when its header or size is not that of its kind."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    ndim = 3 if kind == "images" else 1
    header = 4 * (1 + ndim)
    if len(raw) < header:
        raise ValueError(f"{path}: {len(raw)} bytes, too short for an IDX {kind} header")
    magic, *shape = struct.unpack(f">{1 + ndim}I", raw[:header])
    if magic != IDX_MAGIC[kind] or (kind == "images" and tuple(shape[1:]) != (IMG_SIZE, IMG_SIZE)):
        raise ValueError(f"{path}: header {magic} {shape} is not that of IDX {kind} ({IDX_MAGIC[kind]}, "
                         f"N{' x 28 x 28' if kind == 'images' else ''})")
    if len(raw) != header + int(np.prod(shape)):
        raise ValueError(f"{path}: {len(raw) - header} data bytes where its header announces {int(np.prod(shape))}; "
                         "the file is truncated or corrupt")
    return np.frombuffer(raw, np.uint8, offset=header).reshape(shape)


def read_split(root: str, split: str) -> Tuple[np.ndarray, np.ndarray]:
    """``(images (N, 28, 28), labels (N,))`` of the official ``train`` or ``test`` split in ``root``."""
    paths = [os.path.join(root, name) for name in IDX_FILES[split]]
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        names = ", ".join(name for pair in IDX_FILES.values() for name in pair)
        raise FileNotFoundError(f"Fashion-MNIST not found: {', '.join(missing)} missing. Install Debian's package "
                                f"(apt-get install dataset-fashion-mnist, which puts the four IDX files in "
                                f"{DATA_ROOT}) or pass --data-root DIR holding {names}")
    images, labels = read_idx(paths[0], "images"), read_idx(paths[1], "labels")
    if len(images) != len(labels) or labels.max(initial=0) >= NUM_CLASSES:
        raise ValueError(f"{paths[1]}: {len(labels)} labels in 0..{labels.max(initial=0)} for {len(images)} images "
                         f"of {paths[0]}; expected one label in 0..{NUM_CLASSES - 1} per image")
    return images, labels


def balanced_subset(labels: np.ndarray, size: int, seed: int) -> np.ndarray:
    """``size`` indices, the same number per class (``size`` divisible by the class count), drawn with ``seed``;
    sorted."""
    if size % NUM_CLASSES:
        raise ValueError(f"subset size {size} is not a multiple of the {NUM_CLASSES} classes")
    order = np.random.default_rng(seed).permutation(len(labels))
    picked = [order[labels[order] == c][:size // NUM_CLASSES] for c in range(NUM_CLASSES)]
    if any(len(p) < size // NUM_CLASSES for p in picked):
        raise ValueError(f"a class has fewer than {size // NUM_CLASSES} images: cannot draw a balanced {size}")
    return np.sort(np.concatenate(picked))


@dataclasses.dataclass
class FashionData:
    """The study's fixed Fashion-MNIST subsets.

    Attributes:
        train_x: clean train images ``(N, 1, 28, 28)``, pixels in [0, 1]; augmentation is drawn afresh per use.
        train_y: their labels ``(N,)``.
        test_x: test images, standardised, ``(M, 1, 28, 28)``; never augmented.
        test_y: their labels ``(M,)``.
        mean, std: standardisation of the clean train pixels.
        max_shift: the augmentation's largest translation in pixels.
    """

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    mean: float
    std: float
    max_shift: int

    def __post_init__(self) -> None:
        s = self.max_shift  # standardised once, padded with the background, and mirrored (flip and pad commute)
        padded = (F.pad(self.train_x, (s, s, s, s)) - self.mean) / self.std
        self._padded = (padded[:, 0], padded[:, 0].flip(-1))

    def augment(self, index: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Train images ``index`` ``(B,)`` as ``(B, 1, 28, 28)``, standardised, each flipped left-right with
        probability 1/2 and translated by up to ``max_shift`` pixels in x and y (zeros shifted in: the
        background)."""
        n, s = len(index), self.max_shift
        flip = (torch.rand(n, generator=generator) < 0.5).tolist()
        dx, dy = ([int(v) for v in torch.randint(0, 2 * s + 1, (n,), generator=generator)] if s else [0] * n
                  for _ in range(2))
        images = self._padded
        return torch.stack([images[f][i, y:y + IMG_SIZE, x:x + IMG_SIZE]
                            for i, f, x, y in zip(index.tolist(), flip, dx, dy)])[:, None]

    def batches(self, batch_size: int, iterations: int, seed: int) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        """``iterations`` augmented train batches: a fresh permutation per epoch, fresh augmentation per batch."""
        generator = torch.Generator().manual_seed(seed)
        step = 0
        while True:
            for idx in torch.randperm(len(self.train_x), generator=generator).split(batch_size):
                if step == iterations:
                    return
                yield self.augment(idx, generator), self.train_y[idx]
                step += 1

    def steps_per_epoch(self, batch_size: int) -> int:
        return math.ceil(len(self.train_x) / batch_size)


class AugmentedTrainSet(Dataset):
    """The training images as the classification project's ``fit`` reads a dataset: item ``i`` is
    ``(image (1, 28, 28), label)`` augmented with a draw from ``(seed, epoch, i)``, fresh every epoch
    (``set_epoch``)."""

    def __init__(self, data: FashionData, seed: int):
        self.data, self.seed, self.epoch = data, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.data.train_x)

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, int]:
        seed = int(np.random.SeedSequence([self.seed, self.epoch, index]).generate_state(1)[0])
        image = self.data.augment(torch.tensor([index]), torch.Generator().manual_seed(seed))[0]
        return image, int(self.data.train_y[index])


def load_fashion_mnist(root: str, train_size: int, test_size: Optional[int], max_shift: int) -> FashionData:
    """A class-balanced ``train_size`` subset of the official train split and ``test_size`` of the official test
    split (all of it when ``None``), both fixed (``SPLIT_SEED``)."""
    train_images, train_labels = read_split(root, "train")
    test_images, test_labels = read_split(root, "test")
    tr = balanced_subset(train_labels, train_size, SPLIT_SEED)
    te = np.arange(len(test_labels)) if test_size is None else balanced_subset(test_labels, test_size, SPLIT_SEED)

    def tensor(images: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(images.astype(np.float32)[:, None] / 255.0)

    train_x = tensor(train_images[tr])
    mean, std = float(train_x.mean()), float(train_x.std())
    return FashionData(train_x, torch.from_numpy(train_labels[tr].astype(np.int64)),
                       (tensor(test_images[te]) - mean) / std, torch.from_numpy(test_labels[te].astype(np.int64)),
                       mean, std, max_shift)


# ------------------------------------------------------------------------------------------------------------
# training and scoring

def build_study_anchor(cfg: AnchorConfig) -> VisionTransformer:
    """A from-scratch DeiT3-style ViT for 1-channel 28x28 images (average-pooled tokens, no cls token)."""
    return build_anchor("deit3_small_patch16_224", img_size=IMG_SIZE, num_classes=NUM_CLASSES,
                        class_token=False, patch_size=cfg.patch_size, in_chans=1, embed_dim=cfg.embed_dim,
                        depth=cfg.depth, num_heads=cfg.num_heads)


def fit(params: Sequence[nn.Parameter], loss_fn: Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor],
        data: FashionData, iterations: int, lr: float, batch_size: int, seed: int, desc: str) -> List[float]:
    """Anchor training: minimise ``loss_fn(images, labels, iteration)`` with AdamW (weight decay 0.05, 10%
    warm-up, cosine decay); returns the loss of every iteration."""
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.05)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=iterations, pct_start=0.1)
    losses = []
    for step, (x, y) in enumerate(tqdm(data.batches(batch_size, iterations, seed), total=iterations, desc=desc,
                                       leave=False, mininterval=5)):
        loss = loss_fn(x, y, step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(float(loss.detach()))
    return losses


def smoothed_ce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, y, label_smoothing=0.1)


@torch.no_grad()
def accuracy(model: nn.Module, data: FashionData) -> float:
    """Test accuracy of a plain model (eval mode), in percent."""
    model.eval()
    return 100.0 * float((model(data.test_x).argmax(dim=1) == data.test_y).float().mean())


def train_anchor(cfg: AnchorConfig, epochs: int, study: StudyConfig, data: FashionData, seed: int,
                 name: str) -> Tuple[VisionTransformer, dict]:
    """One anchor trained from scratch for ``epochs``; returns it (eval mode) and its accuracy, loss and cost."""
    start = time.process_time()
    torch.manual_seed(seed)
    model = build_study_anchor(cfg).train()
    steps = data.steps_per_epoch(study.batch_size)
    losses = fit(list(model.parameters()), lambda x, y, _: smoothed_ce(model(x), y), data, epochs * steps,
                 study.anchor_lr, study.batch_size, seed, f"train {name} anchor, {epochs} epochs")
    tail = max(1, steps)
    return model.eval(), {"epochs": epochs, "iterations": epochs * steps, "acc": accuracy(model, data),
                          "last_epoch_loss": float(np.mean(losses[-tail:])), "cpu_s": time.process_time() - start}


def anchor_trials(study: StudyConfig, data: FashionData, shapes: Sequence[Tuple[int, int]], epochs: Sequence[int],
                  seed: int, output_dir: str) -> List[dict]:
    """How the test accuracy of an anchor depends on its depth, width and training length: every ``(depth,
    width)`` of ``shapes`` (heads: width / 16) trained from scratch for each of ``epochs`` by the study's own
    ``train_anchor``. Rows accumulate in ``output_dir/anchor_trials.json`` (one per train size, shape and length;
    a row already there is not trained again) and are tabulated in ``anchor_trials.md``."""
    path = os.path.join(output_dir, TRIALS_FILE)
    rows: List[dict] = []
    if os.path.isfile(path):
        with open(path) as f:
            rows = json.load(f)
    for depth, width in shapes:
        for n in epochs:
            key = {"train_images": len(data.train_x), "depth": depth, "width": width, "epochs": n,
                   "max_shift": data.max_shift, "seed": seed}
            if any(all(r.get(k) == v for k, v in key.items()) for r in rows):
                continue
            cfg = AnchorConfig(embed_dim=width, depth=depth, num_heads=max(1, width // 16), epochs=n)
            _, trained = train_anchor(cfg, n, study, data, seed, f"{depth}x{width}")
            rows.append(dict(key, **trained, gflops=count_gflops(build_study_anchor(cfg), (data.test_x[:1],))))
            print(f"{depth} blocks x {width}, {n} epochs: {trained['acc']:.2f}% ({trained['cpu_s']:.0f} s CPU)",
                  flush=True)
            write_json_atomic(path, rows)
    table = trials_markdown(rows)
    write_atomic(os.path.join(output_dir, TRIALS_FILE.replace(".json", ".md")), lambda f: f.write(table))
    print(table)
    return rows


def trials_markdown(rows: Sequence[dict]) -> str:
    """Anchor trials as a table: one row per (train images, depth, width), test accuracy per training length with
    the gain over the half as long run."""
    lengths = sorted({r["epochs"] for r in rows})
    lines = ["| train images | anchor | MFLOPs | " + " | ".join(f"{n} epochs" for n in lengths) + " |",
             "|---|---|---|" + "---|" * len(lengths)]
    for shape in sorted({(r["train_images"], r["depth"], r["width"]) for r in rows}):
        acc = {r["epochs"]: r["acc"] for r in rows if (r["train_images"], r["depth"], r["width"]) == shape}
        mflops = next(r["gflops"] for r in rows if (r["train_images"], r["depth"], r["width"]) == shape) * 1e3
        cells = [("-" if n not in acc else f"{acc[n]:.2f}" + (f" ({acc[n] - acc[n // 2]:+.2f})" if n // 2 in acc
                                                                else "")) for n in lengths]
        lines.append(f"| {shape[0]} | {shape[1]} blocks x {shape[2]} | {mflops:.2f} | " + " | ".join(cells) + " |")
    return "\n".join(lines + ["", "Test accuracy (%); in brackets the gain over half the epochs (the doubling "
                                  "rule: converged when under 1 point).", ""])


def train_anchors(study: StudyConfig, data: FashionData, seed: int, output_dir: str
                  ) -> Tuple[Tuple[VisionTransformer, ...], dict]:
    """Train each anchor for its ``epochs``; returns the anchors and a summary per anchor (config, params, GFLOPs,
    epochs, test accuracy, CPU seconds). Both are kept in ``output_dir`` (``anchors.pt``, ``anchors.json``) and
    read back from there when a resumed study finds them."""
    weights, summary = os.path.join(output_dir, ANCHOR_WEIGHTS), os.path.join(output_dir, ANCHOR_SUMMARY)
    models = tuple(build_study_anchor(cfg) for cfg in (study.fast, study.slow))
    if os.path.isfile(weights) and os.path.isfile(summary):
        states = torch.load(weights, map_location="cpu", weights_only=True)
        for model, name in zip(models, ("fast", "slow")):
            model.load_state_dict(states[name])
        with open(summary) as f:
            rows = json.load(f)
        return tuple(m.eval() for m in models), {name: dict(row, resumed=True) for name, row in rows.items()}
    rows = {}
    for name, cfg, model in zip(("fast", "slow"), (study.fast, study.slow), models):
        trained, row = train_anchor(cfg, cfg.epochs, study, data, seed, name)
        model.load_state_dict(trained.state_dict())
        rows[name] = dict(row, config=cfg.describe(), params_m=sum(p.numel() for p in model.parameters()) / 1e6,
                          gflops=count_gflops(model, (data.test_x[:1],)))
    write_atomic(weights, lambda f: torch.save({n: m.state_dict() for n, m in zip(("fast", "slow"), models)}, f),
                 binary=True)
    write_json_atomic(summary, rows)
    return tuple(m.eval() for m in models), rows


def flops_table(anchors: Sequence[VisionTransformer]) -> FlopsTable:
    """GFLOPs and parameters of every stitch of the two-way space, classifier included."""
    return classifier_flops_table(StitchedViT(*anchors), (IMG_SIZE, IMG_SIZE))


def snnet_recipe(study: StudyConfig, arm: Arm, table: FlopsTable, steps_per_epoch: int, seed: int) -> TrainRecipe:
    """The classification project's ``TrainRecipe`` of one arm: AdamW at ``snnet_lr`` (weight decay 0.05), cosine
    by epoch with 10% warm-up, label smoothing 0.1, no CutMix/MixUp, ROS bins of ``ros_step`` x the FLOPs range
    (or uniform sampling), LS init on ``calib_images`` (or none), DeiT soft distillation (or none), no AMP."""
    epochs = max(1, round(study.snnet_iterations / steps_per_epoch)) * arm.iterations_factor
    gflops = list(table.gflops.values())
    return TrainRecipe(
        epochs=epochs, batch_size=study.batch_size, lr=study.snnet_lr, weight_decay=0.05, opt="adamw",
        warmup_lr=study.snnet_lr / 100, min_lr=study.snnet_lr / 100, warmup_epochs=round(0.1 * epochs),
        smoothing=0.1, mixup=0.0, cutmix=0.0,
        distillation={"type": "soft" if arm.distill else "none", "alpha": study.distill_weight,
                      "tau": study.distill_temperature},
        flops_step=(max(gflops) - min(gflops)) * study.ros_step, sampling=arm.sampler,
        ls_init_images=study.calib_images if arm.ls_init else 0, amp=False, seed=seed)


def build_snnet(anchors: Sequence[VisionTransformer], study: StudyConfig, arm: Arm, recipe: TrainRecipe,
                train_set: Dataset) -> StitchedViT:
    """SN-Net over copies of the anchors; stitching layers least-squares initialised by the classification
    project's ``ls_init`` (on ``recipe.ls_init_images`` training images) or left at PyTorch's default."""
    torch.manual_seed(recipe.seed)
    fast, slow = (copy.deepcopy(a) for a in anchors)
    net = StitchedViT(fast, slow, lora_rank=study.lora_rank if arm.lora_rank is None else arm.lora_rank)
    if recipe.ls_init_images:
        ls_init(net, train_set, recipe, NUM_CLASSES)
    return net.eval()


def eval_batches(data: FashionData, batch_size: int = 256) -> List[Tuple[torch.Tensor, torch.Tensor]]:
    """The fixed test set as a loader of ``(images, labels)`` batches."""
    return list(zip(data.test_x.split(batch_size), data.test_y.split(batch_size)))


def stitch_accuracies(net: StitchedViT, data: FashionData) -> Accuracies:
    """Top-1 test accuracy (percent) of every stitch, by the classification project's evaluation (one pass, shared
    route prefixes)."""
    return {sid: m["acc1"] for sid, m in evaluate_stitches_in_memory(net, eval_batches(data)).items()}


def results_record(acc: Accuracies, space: StitchSpace, table: FlopsTable, run_key: str) -> dict:
    """A per-stitch results record in ``snnet_core.evaluate_stitches``' format (primary metric ``acc1``)."""
    rows = {str(sid): {"id": sid, "type": space[sid].kind, "route": space[sid].route, "gflops": table.gflops[sid],
                       "params_m": table.params_m[sid], METRIC: acc[sid]} for sid in space.ids}
    record = {"run_key": run_key, "task": "fashion_mnist", "primary_metric": METRIC, "higher_is_better": True,
              "stitches": rows}
    check_results(record, run_key)
    return record


def run_arm(anchors: Sequence[VisionTransformer], study: StudyConfig, arm_name: str, data: FashionData,
            table: FlopsTable, seed: int, output_dir: str) -> dict:
    """Build, train and score one arm for one seed with the classification project's functions; writes its
    results file and returns its measures (read back from that file by ``benchmarks/frontier_measures.py``),
    per-stitch accuracies, iteration counts and CPU seconds (``cpu_s`` training, ``run_cpu_s`` all of it), also
    kept as ``run.json`` beside the results file; a resumed study reads a finished run back from there."""
    run_dir = os.path.join(output_dir, "runs", arm_name, f"seed{seed}")
    if os.path.isfile(os.path.join(run_dir, RUN_FILE)):
        with open(os.path.join(run_dir, RUN_FILE)) as f:
            run = json.load(f)
        for key in ("per_stitch", "iterations_per_stitch"):  # JSON keys are strings
            run[key] = {int(k): v for k, v in run[key].items()}
        return dict(run, resumed=True)
    run_start = time.process_time()
    arm = ARMS[arm_name]
    train_set = AugmentedTrainSet(data, seed)
    recipe = snnet_recipe(study, arm, table, len(train_set) // study.batch_size, seed)
    net = build_snnet(anchors, study, arm, recipe, train_set)
    teacher = copy.deepcopy(anchors[1]).eval().requires_grad_(False) if arm.distill else None
    start = time.process_time()
    trained = fit_snnet(net, train_set, recipe, table.gflops, NUM_CLASSES, teacher=teacher)
    cpu_s = time.process_time() - start
    acc = stitch_accuracies(net, data)
    path = os.path.join(run_dir, RESULTS_FILE)
    write_json_atomic(path, results_record(acc, net.space, table, f"stitching study, arm {arm_name}, seed {seed}"))
    measured = measures_script.measure_table(measures_script.read_table(path))
    drawn = Counter(trained["stitches"])
    counts = {sid: drawn[sid] for sid in net.space.ids}
    stitched = [counts[sid] for sid in counts if sid not in ANCHOR_IDS]
    run = {"measures": measured.as_dict(), "per_stitch": acc, "iterations": trained["iteration"],
           "epochs": recipe.epochs, "iterations_per_stitch": counts,
           "iters_anchors": [counts[sid] for sid in ANCHOR_IDS], "iters_stitched": [min(stitched), max(stitched)],
           "final_epoch_loss": trained["epoch_means"][-1], "cpu_s": cpu_s,
           "run_cpu_s": time.process_time() - run_start, "results_file": os.path.relpath(path, output_dir)}
    write_json_atomic(os.path.join(run_dir, RUN_FILE), run)
    return run


def score_at_init(anchors: Sequence[VisionTransformer], study: StudyConfig, data: FashionData, table: FlopsTable,
                  seed: int) -> Dict[str, dict]:
    """Measures of every stitch before SN-Net training, least-squares vs default init."""
    out = {}
    train_set = AugmentedTrainSet(data, seed)
    for name, arm in (("ls", ARMS["v2"]), ("default", ARMS["default-init"])):
        recipe = snnet_recipe(study, arm, table, len(train_set) // study.batch_size, seed)
        acc = stitch_accuracies(build_snnet(anchors, study, arm, recipe, train_set), data)
        table_ = measures_script.Table(cost=dict(table.gflops), metric=acc, small=ANCHOR_IDS[0],
                                       large=ANCHOR_IDS[1], metric_name=METRIC, higher_is_better=True,
                                       cost_unit="GFLOPs", format="snnet_core")
        out[name] = {"measures": measures_script.measure_table(table_).as_dict(), "per_stitch": acc}
    return out


# ------------------------------------------------------------------------------------------------------------
# summary and verdict

def mean_std(values: Sequence[float]) -> Tuple[float, float]:
    return float(np.mean(values)), float(np.std(values))


def arm_summary(runs: Sequence[dict]) -> Dict[str, Tuple[float, float]]:
    """Mean and std over seeds of every measure (``bin_gap[k]`` over the seeds whose bin ``k`` holds a stitch)."""
    measured = [FrontierMeasures(**{k: tuple(v) if k == "bin_gap" else v for k, v in r["measures"].items()})
                for r in runs]
    out = {name: mean_std([getattr(m, name) for m in measured]) for name in MEASURE_NAMES if name != "bin_gap"}
    for k in range(len(measured[0].bin_gap)):
        gaps = [m.bin_gap[k] for m in measured if m.bin_gap[k] is not None]
        out[f"bin_gap[{k}]"] = mean_std(gaps) if gaps else (math.nan, math.nan)
    for key in ("small", "large"):
        out[key] = mean_std([getattr(m, key) for m in measured])
    return out


def frontier_holds(m: Mapping) -> bool:
    """The claim on one table: some stitch on the frontier lies above the anchor line, and in every FLOPs bin that
    holds a stitch the best one is on or above it. A bin without any stitch is a property of the stitch space
    (e.g. 4 small blocks give only 3 FLOPs levels), not of the training; ``claim_text`` names it."""
    gaps = [g for g in m["bin_gap"] if g is not None]
    return m["frontier_above_line"] > 0 and bool(gaps) and all(g >= 0 for g in gaps)


def claim_text(m: Mapping) -> str:
    """``frontier_holds`` with its parts: frontier stitches above the line, bins whose best stitch is on or above
    it (of the bins holding a stitch), empty bins."""
    gaps = [g for g in m["bin_gap"] if g is not None]
    empty = len(m["bin_gap"]) - len(gaps)
    return (f"{'holds' if frontier_holds(m) else 'does not hold'}: {m['frontier_above_line']}/{m['frontier_points']} "
            f"frontier stitches above the line, {sum(g >= 0 for g in gaps)}/{len(gaps)} bins with the best stitch on "
            f"or above it{f' ({empty} of 5 bins hold no stitch)' if empty else ''}; gaps {fmt_gaps(m['bin_gap'])}")


def mean_bin_gap(m: Mapping) -> float:
    """The mean of the bins' gaps (empty bins left out): one number for how far the best stitches are from the
    line."""
    gaps = [g for g in m["bin_gap"] if g is not None]
    return float(np.mean(gaps)) if gaps else math.nan


def factor_effects(runs: Dict[str, List[dict]]) -> Dict[str, dict]:
    """Per arm against ``v2``, paired by seed: the change of ``frontier_above_line``, of the mean bin gap and of
    ``share_between``, and on how many seeds each went up / down."""
    base = runs["v2"]
    out = {}
    for name, rs in runs.items():
        if name == "v2":
            continue
        effect = {}
        for key, fn in (("frontier_above_line", lambda r: r["measures"]["frontier_above_line"]),
                        ("mean_bin_gap", lambda r: mean_bin_gap(r["measures"])),
                        ("share_between", lambda r: r["measures"]["share_between"])):
            diffs = [fn(a) - fn(b) for a, b in zip(rs, base)]
            effect[key] = {"per_seed": diffs, "mean": float(np.mean(diffs)), "up": sum(d > 0 for d in diffs),
                           "down": sum(d < 0 for d in diffs)}
        out[name] = effect
    return out


def verdict(result: dict) -> List[str]:
    """The study's verdict as sentences with their numbers: the authors' table, each arm, each factor."""
    lines = []
    authors = result.get("authors")
    if authors:
        lines.append(f"Authors' DeiT3-S/L table: {claim_text(authors)}.")
    for name, rs in result["runs"].items():
        held = sum(frontier_holds(r["measures"]) for r in rs)
        lines.append(f"`{name}`: holds on {held}/{len(rs)} seeds; per seed: "
                     + "; ".join(claim_text(r["measures"]) for r in rs) + ".")
    for name, effect in result["effects"].items():
        moved = [f"{key} {e['mean']:+.2f} (up on {e['up']}, down on {e['down']} of {len(e['per_seed'])} seeds)"
                 for key, e in effect.items()]
        lines.append(f"`{name}` vs `v2`: " + ", ".join(moved) + ".")
    return lines


def fmt_gaps(gaps: Sequence[Optional[float]]) -> str:
    return ", ".join("none" if g is None else f"{g:+.2f}" for g in gaps)


def pm(values: Tuple[float, float], digits: int = 2) -> str:
    """``mean ± std``; ``none`` for a bin that held no stitch on any seed."""
    return "none" if math.isnan(values[0]) else f"{values[0]:.{digits}f} ± {values[1]:.{digits}f}"


def markdown(result: dict) -> str:
    """The anchors, the measures per arm (per seed and mean ± std) and the verdict as Markdown."""
    lines = ["| anchor | config | params (M) | MFLOPs | epochs | test acc (%) | CPU (s) |",
             "|---|---|---|---|---|---|---|"]
    for name, r in result["anchors"].items():
        lines.append(f"| {name} | {r['config']} | {r['params_m']:.3f} | {r['gflops'] * 1e3:.3f} | {r['epochs']} | "
                     f"{r['acc']:.2f} | {r['cpu_s']:.0f} |")
    lines += ["", f"SN-Net arms: seeds {result['seeds']}; measures per seed, then mean ± std. Bins: the FLOPs range "
                  "between the anchors cut into five equal intervals; a gap is the best stitch's accuracy minus the "
                  "anchor line's, in points.", "",
              "| arm | iterations (per stitched network, min-max) | seed | small | large | share_between | "
              "below_small | frontier_points | frontier_above_line | bin_gap |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    authors = result.get("authors")
    if authors:
        lines.append(f"| authors' DeiT3-S/L (ImageNet) | - | - | {authors['small']:.2f} | {authors['large']:.2f} | "
                     f"{authors['share_between']:.3f} | {authors['below_small']} | {authors['frontier_points']} | "
                     f"{authors['frontier_above_line']} | {fmt_gaps(authors['bin_gap'])} |")
    for name, init in (("at init, LS", result["init"]["ls"]), ("at init, default", result["init"]["default"])):
        m = init["measures"]
        lines.append(f"| {name} | 0 | {result['seeds'][0]} | {m['small']:.1f} | {m['large']:.1f} | "
                     f"{m['share_between']:.3f} | {m['below_small']} | {m['frontier_points']} | "
                     f"{m['frontier_above_line']} | {fmt_gaps(m['bin_gap'])} |")
    for name, rs in result["runs"].items():
        its = f"{rs[0]['iterations']} ({rs[0]['iters_stitched'][0]}-{rs[0]['iters_stitched'][1]})"
        for seed, r in zip(result["seeds"], rs):
            m = r["measures"]
            lines.append(f"| `{name}` | {its} | {seed} | {m['small']:.1f} | {m['large']:.1f} | "
                         f"{m['share_between']:.3f} | {m['below_small']} | {m['frontier_points']} | "
                         f"{m['frontier_above_line']} | {fmt_gaps(m['bin_gap'])} |")
        s = result["summary"][name]
        gaps = ", ".join(pm(s[f"bin_gap[{k}]"]) for k in range(len(rs[0]["measures"]["bin_gap"])))
        lines.append(f"| `{name}` | | mean ± std | {pm(s['small'], 1)} | {pm(s['large'], 1)} | "
                     f"{pm(s['share_between'], 3)} | {pm(s['below_small'], 1)} | {pm(s['frontier_points'], 1)} | "
                     f"{pm(s['frontier_above_line'], 1)} | {gaps} |")
    lines += ["", "Arms: " + "; ".join(f"`{n}`: {ARMS[n].label}" for n in result["runs"]) + ".", "",
              "Verdict:", ""] + [f"- {line}" for line in result["verdict"]]
    lines += ["", f"CPU time {result['cpu_s'] / 60:.1f} min (one thread; wall {result['wall_s'] / 60:.1f} min).", ""]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------------------
# figure

def authors_rows(path: str) -> Dict[int, dict]:
    """The authors' table as plot rows (id, route type, route, GFLOPs, acc1), route types from upstream's
    numbering of the DeiT3-S/L space (``snnet_core.stitch_id_from_upstream``)."""
    table = measures_script.read_authors_table(path)
    space = StitchSpace(*AUTHORS_DEPTHS)
    rows = {}
    for uid, acc in table.metric.items():
        stitch = space[stitch_id_from_upstream(space, uid)]
        rows[uid] = {"id": uid, "type": stitch.kind, "route": stitch.route, "gflops": table.cost[uid] / 1e9,
                     METRIC: acc}
    return rows


def study_rows(result: dict, arm: str) -> Dict[int, dict]:
    """One arm's stitches as plot rows, accuracy the mean over seeds."""
    space = StitchSpace(result["config"]["fast"]["depth"], result["config"]["slow"]["depth"])
    runs = result["runs"][arm]
    gflops = {int(k): v for k, v in result["gflops"].items()}  # JSON keys are strings
    accs = [{int(k): v for k, v in r["per_stitch"].items()} for r in runs]
    return {sid: {"id": sid, "type": space[sid].kind, "route": space[sid].route, "gflops": gflops[sid] * 1e3,
                  METRIC: float(np.mean([a[sid] for a in accs]))} for sid in space.ids}


def draw_panel(ax, rows: Mapping[int, dict], small: int, large: int, title: str, cost_label: str) -> None:
    """Every stitch a dot coloured by route type (the report's colours), the anchors as named stars, the Pareto
    frontier as a line and the anchor line dashed."""
    for kind in ROUTE_NAMES:
        pts = [(r["gflops"], r[METRIC]) for r in rows.values() if r["type"] == kind]
        if pts:
            ax.scatter(*zip(*pts), s=14, alpha=0.8, color=ROUTE_COLOURS[kind], linewidths=0,
                       label=f"{kind} ({ROUTE_NAMES[kind]}): {len(pts)}")
    front = pareto_frontier({i: r["gflops"] for i, r in rows.items()}, {i: r[METRIC] for i, r in rows.items()})
    ax.plot([rows[i]["gflops"] for i in front], [rows[i][METRIC] for i in front], color="black", lw=1.1,
            label="Pareto frontier")
    s, l_ = rows[small], rows[large]
    line = anchor_line((s["gflops"], s[METRIC]), (l_["gflops"], l_[METRIC]))
    ax.plot([s["gflops"], l_["gflops"]], [line(s["gflops"]), line(l_["gflops"])], "--", color="tab:red", lw=1,
            zorder=4, label="line joining the anchors")  # drawn over the frontier where the two coincide
    for r, name, colour in ((s, "small", "gold"), (l_, "large", "black")):
        ax.scatter(r["gflops"], r[METRIC], marker="*", s=240, color=colour, edgecolor="black", zorder=5,
                   label=f"{name} anchor {r['route']}")
        ax.annotate(f"{name} anchor", (r["gflops"], r[METRIC]), xytext=(6, -12), textcoords="offset points",
                    fontsize=8)
    ax.set(xlabel=cost_label, ylabel="top-1 accuracy (%)", title=title)
    ax.title.set_fontsize(10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")


def plot(result: dict, path: str, authors_table: Optional[str]) -> None:
    """``frontier.png``: the authors' table (when given) and the study's ``v2`` arm side by side."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = []
    if authors_table:
        rows = authors_rows(authors_table)
        panels.append((rows, 0, 1, f"authors: SN-Netv2 DeiT3-S/L, ImageNet-1K ({len(rows)} stitches)", "GFLOPs"))
    arm = "v2" if "v2" in result["runs"] else next(iter(result["runs"]))
    rows = study_rows(result, arm)
    panels.append((rows, ANCHOR_IDS[0], ANCHOR_IDS[1], f"this study: `{arm}` on Fashion-MNIST ({len(rows)} stitches, "
                   f"mean of {len(result['seeds'])} seeds)", "MFLOPs"))
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.8), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        draw_panel(ax, *panel)
    fig.tight_layout()
    try:
        write_atomic(path, lambda f: fig.savefig(f, format="png", dpi=110), binary=True)
    finally:
        plt.close(fig)


# ------------------------------------------------------------------------------------------------------------
# the study

def start_study(study: StudyConfig, seeds: Sequence[int], output_dir: str) -> None:
    """Record the study's settings in ``output_dir`` (``study.json``), or check that a study being resumed there
    has the same ones: a resumed run never mixes results of two settings. ``ValueError`` naming what differs."""
    wanted = strict_json({"config": dataclasses.asdict(study), "seeds": list(seeds)})
    path = os.path.join(output_dir, STUDY_FILE)
    if not os.path.isfile(path):
        write_json_atomic(path, wanted)
        return
    with open(path) as f:
        stored = json.load(f)
    differ = sorted(k for k in set(wanted["config"]) | set(stored["config"])
                    if wanted["config"].get(k) != stored["config"].get(k))
    if stored["seeds"] != wanted["seeds"]:
        differ.append("seeds")
    if differ:
        raise ValueError(f"{path}: the study in {output_dir} was run with other settings ({', '.join(differ)}); "
                         "resume it with its own, or start a new one in another --output-dir (or --overwrite)")


def run_study(study: StudyConfig, seeds: Sequence[int], output_dir: str, authors_table: Optional[str] = None,
              data_root: str = DATA_ROOT) -> dict:
    """Train the anchors (first seed), score every stitch at init, train every arm per seed, measure, judge;
    writes ``summary.json``, ``summary.md``, ``frontier.png`` and the per-run results files to ``output_dir``.
    Resumable: the anchors and every finished (arm, seed) are kept in ``output_dir`` and not trained again."""
    cpu, wall = time.process_time(), time.perf_counter()
    authors = (measures_script.measure_table(measures_script.read_authors_table(authors_table)).as_dict()
               if authors_table else None)  # read first: a wrong path fails before any training
    data = load_fashion_mnist(data_root, study.train_size, study.test_size, study.max_shift)
    os.makedirs(output_dir, exist_ok=True)
    start_study(study, seeds, output_dir)
    anchors, anchor_rows = train_anchors(study, data, seeds[0], output_dir)
    print("anchors:", {k: r["acc"] for k, r in anchor_rows.items()}, flush=True)
    table = flops_table(anchors)
    init = score_at_init(anchors, study, data, table, seeds[0])
    runs: Dict[str, List[dict]] = {}
    for name in study.arms:
        for seed in seeds:
            runs.setdefault(name, []).append(run_arm(anchors, study, name, data, table, seed, output_dir))
            print(f"{name}, seed {seed}: {runs[name][-1]['cpu_s']:.0f} s CPU; {claim_text(runs[name][-1]['measures'])}",
                  flush=True)
    result = {"config": dataclasses.asdict(study), "seeds": list(seeds), "train_images": len(data.train_x),
              "test_images": len(data.test_x), "anchors": anchor_rows, "gflops": table.gflops, "init": init,
              "runs": runs, "authors": authors, "authors_table": authors_table}
    # CPU of the whole study: this process's, plus what the parts a resumed run read back had cost
    resumed = [r["cpu_s"] for r in anchor_rows.values() if r.get("resumed")]
    resumed += [r["run_cpu_s"] for rs in runs.values() for r in rs if r.get("resumed")]
    result["cpu_s"] = time.process_time() - cpu + sum(resumed)
    result["wall_s"] = time.perf_counter() - wall
    write_summary(judge(result), output_dir, authors_table)
    return result


def judge(result: dict) -> dict:
    """Add the per-arm summaries, the factor effects and the verdict to a study's ``result`` (also one read back
    from ``summary.json``); returns it."""
    result["summary"] = {name: arm_summary(rs) for name, rs in result["runs"].items()}
    result["effects"] = factor_effects(result["runs"]) if "v2" in result["runs"] else {}
    result["verdict"] = verdict(result)
    return result


def write_summary(result: dict, output_dir: str, authors_table: Optional[str]) -> None:
    """``summary.json`` (every number), ``summary.md`` (tables and verdict), ``frontier.png``."""
    os.makedirs(output_dir, exist_ok=True)
    write_json_atomic(os.path.join(output_dir, "summary.json"), result)
    plot(result, os.path.join(output_dir, "frontier.png"), authors_table)
    text = markdown(result)
    write_atomic(os.path.join(output_dir, "summary.md"), lambda f: f.write(text))
    print(text)


def clear_study(output_dir: str) -> None:
    """Delete what a study wrote in ``output_dir`` (``STUDY_OUTPUTS``), nothing else."""
    for name in STUDY_OUTPUTS:
        path = os.path.join(output_dir, name)
        if os.path.isdir(path):
            shutil.rmtree(path)
        elif os.path.exists(path):
            os.remove(path)


def main(argv: Optional[Sequence[str]] = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output-dir", default=os.path.join(os.path.dirname(__file__), "results", "stitching_study"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1],
                        help="SN-Net training seeds (the anchors are trained once, with the first)")
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS), help="the arms to run")
    parser.add_argument("--authors-table", help="the authors' stitches_res_s_l.txt (ziplab/SN-Netv2, "
                        "classification/results/): measured beside the study and drawn in frontier.png")
    parser.add_argument("--data-root", default=DATA_ROOT, help="folder of Fashion-MNIST's four official IDX files "
                        "(default: where Debian's dataset-fashion-mnist installs them)")
    parser.add_argument("--anchor-epochs", type=int, help="train both anchors for this many epochs instead of the "
                        f"study's {StudyConfig.fast.epochs} (e.g. to see whether longer-trained anchors change the "
                        "verdict; recorded in study.json like every setting)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--overwrite", action="store_true", help="delete an earlier run in --output-dir first")
    parser.add_argument("--resume", action="store_true", help="continue the run in --output-dir (same settings): "
                        "its trained anchors and finished (arm, seed) runs are read back, not trained again")
    parser.add_argument("--report-only", action="store_true", help="judge again and rewrite summary.md, "
                        "summary.json and frontier.png from --output-dir's summary.json (and --authors-table) without "
                        "training")
    parser.add_argument("--anchor-trials", nargs="+", metavar="DEPTHxWIDTH", help="instead of the study, train "
                        "anchors of these shapes (e.g. 4x32 8x32) for each of --trial-epochs and tabulate their test "
                        "accuracy (anchor_trials.json / .md in --output-dir; rows already there are kept)")
    parser.add_argument("--trial-epochs", type=int, nargs="+", default=[30, 60, 120])
    parser.add_argument("--train-size", type=int, help="training images of --anchor-trials (default: the study's)")
    parser.add_argument("--test-size", type=int, help="test images of --anchor-trials (default: the study's)")
    args = parser.parse_args(argv)
    if args.anchor_trials:
        try:
            shapes = [tuple(int(v) for v in shape.lower().split("x")) for shape in args.anchor_trials]
        except ValueError:
            parser.error(f"--anchor-trials takes DEPTHxWIDTH shapes such as 4x32, not {args.anchor_trials}")
        torch.set_num_threads(args.threads)
        study = StudyConfig(train_size=args.train_size or StudyConfig.train_size,
                            test_size=args.test_size or StudyConfig.test_size)
        data = load_fashion_mnist(args.data_root, study.train_size, study.test_size, study.max_shift)
        os.makedirs(args.output_dir, exist_ok=True)
        return {"trials": anchor_trials(study, data, shapes, args.trial_epochs, args.seeds[0], args.output_dir)}
    if args.report_only:
        with open(os.path.join(args.output_dir, "summary.json")) as f:
            result = json.load(f)
        if args.authors_table:  # else the stored measures, and the figure without the authors' panel
            result["authors_table"] = args.authors_table
            result["authors"] = measures_script.measure_table(
                measures_script.read_authors_table(args.authors_table)).as_dict()
        write_summary(judge(result), args.output_dir, args.authors_table)
        return result
    earlier = [name for name in STUDY_OUTPUTS if os.path.exists(os.path.join(args.output_dir, name))]
    if earlier and not (args.overwrite or args.resume):
        parser.error(f"{args.output_dir} holds an earlier run ({', '.join(earlier)}): pass --resume to continue it, "
                     "--overwrite to replace it, or choose another --output-dir")
    if args.overwrite and args.resume:
        parser.error("--overwrite and --resume exclude each other")
    if args.overwrite:
        clear_study(args.output_dir)
    if args.authors_table and not os.path.isfile(args.authors_table):
        parser.error(f"--authors-table {args.authors_table} does not exist")
    if "v2" not in args.arms:
        parser.error("--arms needs v2: the other arms are measured against it")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.threads)
    study = StudyConfig(arms=tuple(args.arms))
    if args.anchor_epochs is not None:
        if args.anchor_epochs < 1:
            parser.error(f"--anchor-epochs must be at least 1, got {args.anchor_epochs}")
        study = dataclasses.replace(study, fast=dataclasses.replace(study.fast, epochs=args.anchor_epochs),
                                    slow=dataclasses.replace(study.slow, epochs=args.anchor_epochs))
    return run_study(study, args.seeds, args.output_dir, args.authors_table, args.data_root)


if __name__ == "__main__":
    main()
