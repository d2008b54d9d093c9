"""Scale-invariant log loss (Eigen et al. 2014, as used by BTS/DPT depth toolboxes) with a warm-up."""
from __future__ import annotations

import torch
import torch.nn as nn


class SILogLoss(nn.Module):
    """``sqrt(Var(g) + variance_focus * mean(g)**2)`` with ``g = ln(pred + eps) - ln(gt + eps)``.

    The statistics run over the valid pixels (``gt > 0``) of the whole batch; ``Var`` is the unbiased
    variance (``torch.var``). During the first ``warmup_iters`` iterations only the mean term is used,
    ``sqrt(variance_focus * mean(g)**2)``, which first fits the global scale (reference setting).

    Args:
        variance_focus: weight of the squared mean (``lambda`` = 0.15).
        warmup_iters: iterations of the mean-only warm-up (100).
        eps: added to prediction and ground truth before the log (1e-3).
    """

    def __init__(self, variance_focus: float = 0.15, warmup_iters: int = 100, eps: float = 1e-3):
        super().__init__()
        self.variance_focus, self.warmup_iters, self.eps = variance_focus, warmup_iters, eps

    def forward(self, pred: torch.Tensor, gt: torch.Tensor, iteration: int) -> torch.Tensor:
        """Loss of ``pred`` and ``gt`` ``(B, 1, H, W)`` at training ``iteration`` (0-based); scalar."""
        if pred.shape != gt.shape:
            raise ValueError(f"prediction {tuple(pred.shape)} and ground truth {tuple(gt.shape)} differ in shape")
        valid = gt > 0
        if int(valid.sum()) < 2:  # no statistics to fit: a zero loss that keeps the graph
            return pred.sum() * 0.0
        g = torch.log(pred[valid].float() + self.eps) - torch.log(gt[valid].float() + self.eps)
        mean_term = self.variance_focus * g.mean() ** 2
        if iteration < self.warmup_iters:
            return torch.sqrt(mean_term)
        return torch.sqrt(g.var() + mean_term)
