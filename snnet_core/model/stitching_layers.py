"""Stitching layers (linear maps between anchor widths) with LoRA SL and least-squares initialisation.

A stitching layer maps tokens ``(B, N, D_in) -> (B, N, D_out)``: ``y = x W^T + b + s * (x A^T) B^T`` where
``W`` (``D_out x D_in``) is the least-squares solution, frozen when ``rank > 0``, and ``B A`` is the rank-r
update of LoRA SL (paper Eq. 3). The paper gives no constants; they follow SN-Netv2's released code (a
loralib-style ``Linear``): ``s = alpha / r`` with ``alpha = 1``, ``A`` (``r x D_in``) Kaiming-uniform with
``a = sqrt(5)`` (as ``nn.Linear``'s weight), ``B`` (``D_out x r``) zeros, so training starts exactly at the LS
solution. ``rank == 0`` gives the SN-Netv1 layer: ``W`` itself is trained.
"""
from __future__ import annotations

import math
from typing import Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F


class StitchingLayer(nn.Module):
    """Linear ``D_in -> D_out`` with bias and an optional low-rank (LoRA) update.

    Args:
        in_dim: width of the anchor the tokens come from.
        out_dim: width of the anchor they go to.
        rank: LoRA rank ``r``; 0 trains the full weight.
        alpha: LoRA scaling numerator: the update is scaled by ``alpha / rank`` (default 1, SN-Netv2's code).
    """

    def __init__(self, in_dim: int, out_dim: int, rank: int = 0, alpha: float = 1.0):
        super().__init__()
        if rank < 0 or rank > min(in_dim, out_dim):
            raise ValueError(f"LoRA rank must be in [0, {min(in_dim, out_dim)}], got {rank}")
        if not alpha > 0:
            raise ValueError(f"LoRA alpha must be positive, got {alpha}")
        self.in_dim, self.out_dim, self.rank, self.alpha = in_dim, out_dim, rank, float(alpha)
        self.weight = nn.Parameter(torch.empty(out_dim, in_dim), requires_grad=rank == 0)
        self.bias = nn.Parameter(torch.zeros(out_dim))
        if rank > 0:
            self.lora_down = nn.Parameter(torch.empty(rank, in_dim))
            self.lora_up = nn.Parameter(torch.zeros(out_dim, rank))
            self.scaling = self.alpha / rank
        else:
            self.register_parameter("lora_down", None)
            self.register_parameter("lora_up", None)
            self.scaling = 0.0
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Default (Kaiming-uniform, as ``nn.Linear``) initialisation; LoRA update set to zero."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        bound = 1.0 / math.sqrt(self.in_dim)
        nn.init.uniform_(self.bias, -bound, bound)
        self._reset_lora()

    def _reset_lora(self) -> None:
        if self.rank > 0:
            nn.init.kaiming_uniform_(self.lora_down, a=math.sqrt(5))  # U(-1/sqrt(D_in), 1/sqrt(D_in))
            nn.init.zeros_(self.lora_up)

    @torch.no_grad()
    def load_solution(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        """Set ``W`` and ``b`` (e.g. the least-squares solution) and restart the LoRA update at zero."""
        if weight.shape != self.weight.shape or bias.shape != self.bias.shape:
            raise ValueError(
                f"solution shapes {tuple(weight.shape)}/{tuple(bias.shape)} do not match the layer's "
                f"{tuple(self.weight.shape)}/{tuple(self.bias.shape)}"
            )
        self.weight.copy_(weight)
        self.bias.copy_(bias)
        self._reset_lora()

    def delta_weight(self) -> torch.Tensor:
        """The low-rank update ``s * B A`` (``D_out x D_in``); zeros when ``rank == 0``."""
        if self.rank == 0:
            return torch.zeros_like(self.weight)
        return (self.lora_up @ self.lora_down) * self.scaling

    def merged_weight(self) -> torch.Tensor:
        return self.weight + self.delta_weight()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``(..., D_in)`` -> ``(..., D_out)``."""
        y = F.linear(x, self.weight, self.bias)
        if self.rank > 0:
            y = y + F.linear(F.linear(x, self.lora_down), self.lora_up) * self.scaling
        return y

    @torch.no_grad()
    def merged(self) -> nn.Linear:
        """A plain ``nn.Linear`` equal to this layer with the LoRA update merged in (for eval/export)."""
        linear = nn.Linear(self.in_dim, self.out_dim, device=self.weight.device, dtype=self.weight.dtype)
        linear.weight.copy_(self.merged_weight())
        linear.bias.copy_(self.bias)
        return linear

    def extra_repr(self) -> str:
        lora = f", alpha={self.alpha:g}" if self.rank else ""
        return f"in_dim={self.in_dim}, out_dim={self.out_dim}, rank={self.rank}{lora}"


class LeastSquaresAccumulator:
    """Normal equations of ``[X, 1] W = Y`` accumulated over batches in float64.

    Memory is ``O((D_in + 1) * (D_in + 1 + D_out))`` whatever the number of tokens or images.
    ``solve()`` returns ``pinv([X, 1]) Y`` (via ``pinv(G) [X, 1]^T Y`` with the Gram matrix ``G``).
    """

    def __init__(self, in_dim: int, out_dim: int, device: torch.device | str = "cpu"):
        self.in_dim, self.out_dim = in_dim, out_dim
        self.gram = torch.zeros(in_dim + 1, in_dim + 1, dtype=torch.float64, device=device)
        self.cross = torch.zeros(in_dim + 1, out_dim, dtype=torch.float64, device=device)
        self.target_sq = torch.zeros((), dtype=torch.float64, device=device)
        self.num_rows = 0

    @torch.no_grad()
    def update(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Add rows: ``x`` ``(..., D_in)`` and ``y`` ``(..., D_out)`` with the same leading shape."""
        if x.shape[-1] != self.in_dim or y.shape[-1] != self.out_dim or x.shape[:-1] != y.shape[:-1]:
            raise ValueError(
                f"expected features (..., {self.in_dim}) and targets (..., {self.out_dim}) with one leading "
                f"shape, got {tuple(x.shape)} and {tuple(y.shape)}"
            )
        x = x.reshape(-1, self.in_dim).to(self.gram)
        y = y.reshape(-1, self.out_dim).to(self.gram)
        xa = torch.cat([x, torch.ones_like(x[:, :1])], dim=1)
        self.gram.addmm_(xa.T, xa)
        self.cross.addmm_(xa.T, y)
        self.target_sq += y.pow(2).sum()
        self.num_rows += x.shape[0]

    def solve(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """Return ``(weight (D_out, D_in), bias (D_out,))`` in float64."""
        if self.num_rows == 0:
            raise RuntimeError("no features were accumulated: pass at least one calibration image")
        solution = torch.linalg.pinv(self.gram, hermitian=True) @ self.cross  # (D_in + 1, D_out)
        return solution[:-1].T.contiguous(), solution[-1].contiguous()

    def mean_squared_error(self, weight: torch.Tensor, bias: torch.Tensor) -> float:
        """MSE of ``x W^T + b`` against ``y`` over every accumulated row, from the sufficient statistics."""
        sol = torch.cat([weight.T, bias[None]], dim=0).to(self.gram)  # (D_in + 1, D_out)
        sse = self.target_sq - 2 * (sol * self.cross).sum() + (sol * (self.gram @ sol)).sum()
        return float(sse.clamp_min(0) / (self.num_rows * self.out_dim))
