"""NYUv2 depth evaluation: Eigen crop, per-image metrics averaged over images (summed across DDP ranks).

Pixels count where the ground truth is in ``(min_depth, max_depth)`` (``(1e-3, 10)`` m) and inside the Eigen
crop ``[45:471, 41:601]`` of a 480x640 frame (scaled for other frame sizes); predictions are clipped to
``[min_depth, max_depth]``. Metric definitions follow the depth toolboxes (BTS, Monocular-Depth-Estimation-
Toolbox): ``a_k`` = share of ``max(pred/gt, gt/pred) < 1.25**k``; ``silog`` is ``100 * sqrt(Var(log err))``.
"""
from __future__ import annotations

import math
from typing import Dict, Tuple

import torch
import torch.distributed as dist

NYU_SIZE = (480, 640)
EIGEN_CROP = (45, 471, 41, 601)  # top, bottom, left, right of a 480x640 frame
METRIC_NAMES = ("a1", "a2", "a3", "abs_rel", "sq_rel", "rmse", "rmse_log", "log10", "silog")
HIGHER_IS_BETTER = ("a1", "a2", "a3")


def eigen_crop_box(height: int, width: int) -> Tuple[int, int, int, int]:
    """``(top, bottom, left, right)`` of the Eigen crop (= the NYU border crop) for a ``height x width`` frame:
    the 480x640 box, scaled (rounded half up) for frames of another size."""
    top, bottom, left, right = EIGEN_CROP
    sy, sx = height / NYU_SIZE[0], width / NYU_SIZE[1]
    return tuple(math.floor(v + 0.5) for v in (top * sy, bottom * sy, left * sx, right * sx))


def evaluation_mask(gt: torch.Tensor, min_depth: float, max_depth: float, eigen_crop: bool = True) -> torch.Tensor:
    """Boolean mask of the pixels that count, same shape as ``gt`` ``(..., H, W)``."""
    mask = (gt > min_depth) & (gt < max_depth)
    if eigen_crop:
        top, bottom, left, right = eigen_crop_box(*gt.shape[-2:])
        crop = torch.zeros(gt.shape[-2:], dtype=torch.bool, device=gt.device)
        crop[top:bottom, left:right] = True
        mask &= crop
    return mask


def depth_metrics(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """The ``METRIC_NAMES`` values (float64 ``(9,)``) of valid pixels ``pred``, ``gt`` ``(N,)`` of one image."""
    pred, gt = pred.double(), gt.double()
    ratio = torch.maximum(gt / pred, pred / gt)
    diff = gt - pred
    log_err = torch.log(pred) - torch.log(gt)
    return torch.stack([
        (ratio < 1.25).double().mean(),
        (ratio < 1.25 ** 2).double().mean(),
        (ratio < 1.25 ** 3).double().mean(),
        (diff.abs() / gt).mean(),
        (diff ** 2 / gt).mean(),
        torch.sqrt((diff ** 2).mean()),
        torch.sqrt((log_err ** 2).mean()),
        (torch.log10(pred) - torch.log10(gt)).abs().mean(),
        100 * torch.sqrt(((log_err ** 2).mean() - log_err.mean() ** 2).clamp_min(0)),
    ])


class DepthMetricAccumulator:
    """Sums per-image metrics over batches (and ranks) and averages them over images.

    Images without any valid pixel are left out of the average.
    """

    def __init__(self, min_depth: float = 1e-3, max_depth: float = 10.0, eigen_crop: bool = True):
        self.min_depth, self.max_depth, self.eigen_crop = min_depth, max_depth, eigen_crop
        self.sums = torch.zeros(len(METRIC_NAMES), dtype=torch.float64)
        self.count = 0

    @torch.no_grad()
    def update(self, pred: torch.Tensor, gt: torch.Tensor) -> None:
        """Add a batch: ``pred`` and ``gt`` ``(B, 1, H, W)`` metric depth (``gt`` 0 where unknown)."""
        if pred.shape != gt.shape:
            raise ValueError(f"prediction {tuple(pred.shape)} and ground truth {tuple(gt.shape)} differ in shape")
        pred = torch.nan_to_num(pred.float(), nan=self.min_depth, posinf=self.max_depth)
        pred = pred.clamp(self.min_depth, self.max_depth)
        masks = evaluation_mask(gt, self.min_depth, self.max_depth, self.eigen_crop)
        for p, g, m in zip(pred, gt, masks):
            if m.any():
                self.sums += depth_metrics(p[m], g[m]).cpu()
                self.count += 1

    def all_reduce(self, device: torch.device) -> None:
        """Sum the accumulated values over DDP ranks (no-op without a process group)."""
        if not (dist.is_available() and dist.is_initialized()):
            return
        packed = torch.cat([self.sums, torch.tensor([float(self.count)], dtype=torch.float64)]).to(device)
        dist.all_reduce(packed)
        self.sums, self.count = packed[:-1].cpu(), int(packed[-1].item())

    def compute(self) -> Dict[str, float]:
        """``{metric: mean over images}``."""
        if self.count == 0:
            raise RuntimeError("no image with valid ground-truth depth was evaluated")
        return {name: float(v) for name, v in zip(METRIC_NAMES, self.sums / self.count)}
