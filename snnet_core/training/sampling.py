"""Stitch samplers for training: resource-constrained sampling (ROS, paper Sec. 4.2) and uniform.

A draw is a pure function of ``(seed, iteration)``: every DDP rank draws the same stitch at the same
iteration without communicating, and a resumed run repeats the sequence exactly.
"""
from __future__ import annotations

import math
from typing import Dict, List, Mapping, Sequence

import numpy as np


def flops_bins(gflops: Mapping[int, float], step: float) -> List[List[int]]:
    """Group stitch ids into ROS FLOPs bins of width ``step`` GFLOPs, the way SN-Netv2's released code does.

    Stitches are visited in increasing FLOPs; the first opens a bin, and each next one joins the current bin
    unless it exceeds that bin's first member by more than ``step``, in which case it opens a new bin. Unlike
    rounding to a fixed grid, a cluster of near-equal stitches is never split by a grid edge: for DeiT3-S/L this
    gives the paper's 13 bins at ``t = 1`` (224x224) and ``t = 10`` (dense, 480x640). Upstream's classification
    code groups the exact GFLOPs, as here; its depth code floors them to whole GFLOPs first, and anchors its first
    bin at 0 rather than at the cheapest stitch: neither changes the DeiT3-S/L bins, and both would make bins
    depend on the unit, so neither is reproduced.

    Returns:
        the bins, cheapest first, each a list of stitch ids in increasing FLOPs (ties by id).

    Raises ``ValueError`` naming the stitches whose GFLOPs are not finite non-negative numbers.
    """
    if not step > 0:
        raise ValueError(f"FLOPs step must be positive, got {step}")
    bad = sorted(sid for sid, g in gflops.items() if not (isinstance(g, (int, float)) and math.isfinite(g) and g >= 0))
    if bad:
        raise ValueError(f"the FLOPs table gives stitches {bad[:10]}{' ...' if len(bad) > 10 else ''} no finite, "
                         "non-negative GFLOPs (e.g. NaN): they would form a bin of their own. Recount the table (delete "
                         "the FLOPs cache file that holds it) or drop these stitches")
    bins: List[List[int]] = []
    first = 0.0
    for sid, g in sorted(gflops.items(), key=lambda kv: (kv[1], kv[0])):
        if not bins or g - first > step:
            bins.append([])
            first = g
        bins[-1].append(sid)
    return bins


class UniformSampler:
    """Every stitch with equal probability (SN-Netv1's sampling)."""

    def __init__(self, stitch_ids: Sequence[int], seed: int = 0):
        if len(stitch_ids) == 0:
            raise ValueError("cannot sample from an empty set of stitches")
        self.stitch_ids = sorted(int(i) for i in stitch_ids)
        self.seed = int(seed)

    def _rng(self, iteration: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, int(iteration)])

    def sample(self, iteration: int) -> int:
        """The stitch id trained at ``iteration``."""
        rng = self._rng(iteration)
        return self.stitch_ids[int(rng.integers(len(self.stitch_ids)))]

    def probabilities(self) -> Dict[int, float]:
        return {sid: 1.0 / len(self.stitch_ids) for sid in self.stitch_ids}

    def state_dict(self) -> dict:
        return {"type": type(self).__name__, "seed": self.seed, "stitch_ids": self.stitch_ids}

    def load_state_dict(self, state: dict) -> None:
        if state.get("type") != type(self).__name__ or state.get("stitch_ids") != self.stitch_ids:
            raise ValueError(f"sampler state {state.get('type')} does not match this {type(self).__name__}")
        self.seed = int(state["seed"])


class ResourceConstrainedSampler(UniformSampler):
    """ROS: draw a FLOPs bin uniformly, then a stitch uniformly inside it (bins: ``flops_bins``).

    Args:
        gflops: ``{stitch id: GFLOPs}`` of the stitches to train.
        step: bin width ``t`` in GFLOPs (paper: 1 for classification, 10 for dense prediction).
        seed: base seed of the draw sequence.
    """

    def __init__(self, gflops: Mapping[int, float], step: float, seed: int = 0):
        super().__init__(list(gflops), seed)
        self.step = float(step)
        self.bins = flops_bins(gflops, step)

    def sample(self, iteration: int) -> int:
        rng = self._rng(iteration)
        members = self.bins[int(rng.integers(len(self.bins)))]
        return members[int(rng.integers(len(members)))]

    def probabilities(self) -> Dict[int, float]:
        p_bin = 1.0 / len(self.bins)
        return {sid: p_bin / len(ids) for ids in self.bins for sid in ids}

    def state_dict(self) -> dict:
        return dict(super().state_dict(), step=self.step, bins=self.bins)

    def load_state_dict(self, state: dict) -> None:
        """Restore the seed; refuses a state whose bins differ (another FLOPs table, step or binning rule)."""
        super().load_state_dict(state)
        if "bins" in state and [list(map(int, ids)) for ids in state["bins"]] != self.bins:
            raise ValueError(
                f"sampler state has {len(state['bins'])} ROS bins but this sampler has {len(self.bins)} "
                f"(step {self.step:g} GFLOPs): the FLOPs table or the binning changed since it was saved, so a "
                "resumed run would not continue the same stitch sequence"
            )


SAMPLINGS = ("ros", "uniform")  # SN-Netv2's resource-constrained sampling, SN-Netv1's uniform sampling


def build_sampler(sampling: str, gflops: Mapping[int, float], step: float, seed: int = 0,
                  key: str = "sampling") -> UniformSampler:
    """The stitch sampler of a run: ``"ros"`` (``ResourceConstrainedSampler`` over FLOPs bins of ``step`` GFLOPs)
    or ``"uniform"`` (``UniformSampler``, ``step`` unused) over the stitches of ``gflops``; ``ValueError`` naming the
    config ``key`` for another value."""
    if sampling == "ros":
        return ResourceConstrainedSampler(gflops, step, seed)
    if sampling == "uniform":
        return UniformSampler(list(gflops), seed)
    raise ValueError(f"{key}={sampling!r}: choose ros (SN-Netv2) or uniform (SN-Netv1)")


def describe_sampler(sampler: UniformSampler, route_types: Sequence[str]) -> str:
    """One log line: the sampler, its stitches and the route types they come from, e.g. ``ROS over 134 stitches
    (route types anchor, FS, SF, FSF, SFS) in 13 FLOPs bins of 10 GFLOPs``."""
    stitches = f"{len(sampler.stitch_ids)} stitches (route types {', '.join(route_types)})"
    if isinstance(sampler, ResourceConstrainedSampler):
        return f"ROS over {stitches} in {len(sampler.bins)} FLOPs bins of {sampler.step:g} GFLOPs"
    return f"uniform sampling over {stitches}"
