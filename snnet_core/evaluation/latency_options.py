"""Command-line options of per-stitch latency, shared by the evaluation CLIs of both projects.

``add_latency_arguments(parser)`` adds ``--measure-latency``, ``--latency-batch N``, ``--latency-size H W``,
``--latency-amp`` / ``--no-latency-amp``, ``--latency-warmup N`` and ``--latency-runs N``;
``latency_options(args, ...)`` checks them against the model (patch size, device) and returns the
``LatencyOptions`` of the run (``None`` without ``--measure-latency``). The measurement itself is
``snnet_core.evaluation.latency.time_stitches``; its module docstring describes the ``latency_ms`` column and the
``"latency"`` entry of the results file.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence, Tuple

import torch

from snnet_core.evaluation.latency import device_name, latency_info

_LATENCY_FLAGS = ("latency_batch", "latency_size", "latency_amp", "latency_warmup", "latency_runs")


def add_latency_arguments(parser: argparse.ArgumentParser) -> None:
    """The latency flags, in their own group of ``parser``'s help; all default to ``None`` ("not given")."""
    group = parser.add_argument_group(
        "latency per stitch",
        "time every evaluated stitch as deployed (exported, LoRA merged) on this run's device; the report gains "
        "a latency_ms column and a plot against latency, for python -m snnet_core.select REPORT --max-latency-ms MS")
    group.add_argument("--measure-latency", action="store_true",
                       help="time each evaluated stitch (median milliseconds per batch, main process only)")
    group.add_argument("--latency-batch", type=int, metavar="N", help="images per timed forward (default 1)")
    group.add_argument("--latency-size", type=int, nargs=2, metavar=("H", "W"),
                       help="input size of the timed forward, multiples of the patch size (default: the GFLOPs "
                            "input size)")
    group.add_argument("--latency-amp", action=argparse.BooleanOptionalAction,
                       help="time under CUDA autocast (fp16); default: on GPU when the run uses AMP")
    group.add_argument("--latency-warmup", type=int, metavar="N", help="untimed calls per stitch (default 10)")
    group.add_argument("--latency-runs", type=int, metavar="N",
                       help="timed calls per stitch, of which the median is reported (default 50)")


@dataclass(frozen=True)
class LatencyOptions:
    """How each stitch is timed: ``batch`` images of ``size`` (H, W) on ``device``, ``warmup`` untimed calls then
    ``runs`` timed ones, under CUDA autocast if ``amp``."""

    batch: int
    size: Tuple[int, int]
    amp: bool
    warmup: int
    runs: int
    device: torch.device

    def info(self) -> Dict[str, Any]:
        """The results file's ``"latency"`` entry (``snnet_core.evaluation.latency.latency_info``)."""
        return latency_info(device_name(self.device), self.batch, self.size, self.amp, self.warmup, self.runs)

    def run_key(self) -> str:
        """The suffix of the report's run key: rows timed on another device or setting never mix."""
        return "|latency:" + json.dumps(self.info(), sort_keys=True)

    def check_size(self, patch_size: int) -> None:
        """``ValueError`` naming ``--latency-size`` unless the size is a multiple of the model's ``patch_size``."""
        if any(s % patch_size for s in self.size):
            fit = " ".join(str(-(-s // patch_size) * patch_size) for s in self.size)  # rounded up
            raise ValueError(f"--latency-size {self.size[0]} {self.size[1]}: height and width must be multiples of "
                             f"the patch size {patch_size}, e.g. --latency-size {fit}")


def latency_options(args: argparse.Namespace, device: torch.device, patch_size: Optional[int],
                    default_size: Sequence[int], run_amp: bool) -> Optional[LatencyOptions]:
    """The ``LatencyOptions`` of ``args`` (``None`` without ``--measure-latency``), checked.

    Args:
        device: where the model runs (and is timed).
        patch_size: the SN-Net's patch size; ``--latency-size`` must be a multiple of it. ``None`` (the model is
            not built yet) leaves that check to ``LatencyOptions.check_size``.
        default_size: the size without ``--latency-size`` (the report's GFLOPs input size).
        run_amp: whether the run uses AMP; ``--latency-amp`` defaults to it on a GPU.

    Raises ``ValueError`` naming the flag and the fix.
    """
    if not args.measure_latency:
        given = [f"--{name.replace('_', '-')}" for name in _LATENCY_FLAGS if getattr(args, name) is not None]
        if given:
            raise ValueError(f"{', '.join(given)} set(s) how stitches are timed: add --measure-latency to time them")
        return None
    batch = 1 if args.latency_batch is None else args.latency_batch
    warmup = 10 if args.latency_warmup is None else args.latency_warmup
    runs = 50 if args.latency_runs is None else args.latency_runs
    for flag, value, least in (("--latency-batch", batch, 1), ("--latency-warmup", warmup, 0),
                               ("--latency-runs", runs, 1)):
        if value < least:
            raise ValueError(f"{flag} {value}: give a number >= {least}")
    size = tuple(int(s) for s in (args.latency_size or default_size))
    if any(s <= 0 for s in size):
        raise ValueError(f"--latency-size {size[0]} {size[1]}: give a positive height and width")
    device = torch.device(device)
    amp = run_amp and device.type == "cuda" if args.latency_amp is None else args.latency_amp
    if amp and device.type != "cuda":
        raise ValueError(f"--latency-amp times CUDA autocast, but the model runs on {device}: drop --latency-amp, "
                         "or run on a GPU")
    options = LatencyOptions(batch, size, amp, warmup, runs, device)
    if patch_size is not None:
        options.check_size(patch_size)
    return options
