"""Stitch samplers for training: resource-constrained sampling (ROS, paper Sec. 4.2) and uniform.

A draw is a pure function of ``(seed, iteration)``: every DDP rank draws the same stitch at the same
iteration without communicating, and a resumed run repeats the sequence exactly.
"""
from __future__ import annotations

from typing import Dict, List, Mapping, Sequence

import numpy as np


def flops_bins(gflops: Mapping[int, float], step: float) -> Dict[int, List[int]]:
    """Group stitch ids by FLOPs rounded to a multiple of ``step`` GFLOPs: ``{bin: [ids]}``, bins sorted."""
    if step <= 0:
        raise ValueError(f"FLOPs step must be positive, got {step}")
    bins: Dict[int, List[int]] = {}
    for sid, g in sorted(gflops.items()):
        bins.setdefault(int(round(g / step)), []).append(sid)
    return dict(sorted(bins.items()))


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
    """ROS: draw a FLOPs bin uniformly, then a stitch uniformly inside it.

    Args:
        gflops: ``{stitch id: GFLOPs}`` of the stitches to train.
        step: bin width ``t`` in GFLOPs (paper: 1 for classification, 10 for dense prediction).
        seed: base seed of the draw sequence.
    """

    def __init__(self, gflops: Mapping[int, float], step: float, seed: int = 0):
        super().__init__(list(gflops), seed)
        self.step = float(step)
        self.bins = flops_bins(gflops, step)
        self._bin_keys = list(self.bins)

    def sample(self, iteration: int) -> int:
        rng = self._rng(iteration)
        members = self.bins[self._bin_keys[int(rng.integers(len(self._bin_keys)))]]
        return members[int(rng.integers(len(members)))]

    def probabilities(self) -> Dict[int, float]:
        p_bin = 1.0 / len(self.bins)
        return {sid: p_bin / len(ids) for ids in self.bins.values() for sid in ids}

    def state_dict(self) -> dict:
        return dict(super().state_dict(), step=self.step)
