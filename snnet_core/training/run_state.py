"""What every project's trainer needs to resume exactly and to show that DDP ranks agree: per-epoch seeds, a
parameter checksum, a digest of the stitches trained, the check that a resumed run keeps its architecture and
recipe, and the LS-init draw of calibration images from a training set."""
from __future__ import annotations

import hashlib
import json
import logging
from typing import Any, Callable, Dict, Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset, Subset

from snnet_core.model.snnet import StitchedViT
from snnet_core.training.ls_init import ls_init_stitching_layers

logger = logging.getLogger(__name__)


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """Seed of torch's generator for one epoch on one rank (stochastic depth draws from it)."""
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0])


def param_checksum(model: nn.Module) -> float:
    """Sum of all parameters in float64: equal on every DDP rank when the replicas agree."""
    with torch.no_grad():
        return float(sum(p.double().sum() for p in model.parameters()))


def stitch_sequence_digest(stitches: Sequence[int]) -> str:
    """First 12 hex digits of the SHA-256 of a sequence of stitch ids: equal on every DDP rank when the ranks
    trained the same stitch at every iteration (each rank logs it at the end of an epoch)."""
    return hashlib.sha256(json.dumps(list(stitches)).encode()).hexdigest()[:12]


def check_resumable(saved_spec: Mapping[str, Any], spec: Mapping[str, Any], saved_recipe: Mapping[str, Any],
                    recipe: Mapping[str, Any]) -> None:
    """Refuse to resume a run with another architecture (``spec``) or optimisation recipe (``recipe``; its
    ``world_size`` may differ, with a warning): the schedule would differ. All four are primitive dicts, the
    checkpoint's first."""
    diffs = [f"{k}: checkpoint {saved_spec.get(k)} vs now {v}" for k, v in spec.items() if saved_spec.get(k) != v]
    diffs += [f"{k}: checkpoint {saved_recipe.get(k)} vs now {v}" for k, v in recipe.items()
              if k != "world_size" and saved_recipe.get(k) != v]
    if diffs:
        raise ValueError("cannot resume: the run was started with other settings (" + "; ".join(diffs) + ")")
    if saved_recipe.get("world_size") != recipe.get("world_size"):
        logger.warning("resuming a %s-process run with %s processes: same schedule, but not bit-exact data order",
                       saved_recipe.get("world_size"), recipe.get("world_size"))


def ls_init_from_dataset(snnet: StitchedViT, dataset: Dataset, num_images: int, seed: int, batch_size: int,
                         device: torch.device, workers: int = 0,
                         images_of: Callable[[Any], torch.Tensor] = lambda batch: batch[0]) -> Dict[str, float]:
    """LS init of every stitching layer of ``snnet`` from ``num_images`` items of ``dataset`` drawn at random
    (seeded by ``(seed, num_images)``), as its transform gives them, in batches of ``batch_size``;
    ``images_of(batch)`` takes the ``(B, 3, H, W)`` images out of a loader batch (e.g. after CutMix). Returns the
    mean squared error per stitching layer (``ls_init_stitching_layers``) and logs it."""
    count = min(num_images, len(dataset))
    chosen = np.random.default_rng([seed, count]).choice(len(dataset), count, replace=False)
    loader = DataLoader(Subset(dataset, sorted(chosen.tolist())), batch_size=batch_size, shuffle=False,
                        num_workers=workers)
    batches: Iterable[torch.Tensor] = (images_of(batch).to(device) for batch in loader)
    errors = ls_init_stitching_layers(snnet, batches, num_images=count)
    logger.info("LS init on %d training images: mean squared error per stitching layer %s", count,
                {k: round(v, 5) for k, v in sorted(errors.items())})
    return errors
