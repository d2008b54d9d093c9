"""Execution of one stitch's route: patch embedding, blocks and stitching layers, dense-feature taps.

The same ``run_plan`` serves the SN-Net (whose plans reference its shared modules) and an exported
stitch (whose plan holds private copies), so both compute the same thing by construction.
"""
from __future__ import annotations

import dataclasses
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed_nhwc

from snnet_core.model.families import GRID_BLOCKS


@dataclasses.dataclass
class Tap:
    """Dense feature ``stage`` taken after a layer, mapped to the slow width by ``projection`` if set."""

    stage: int
    projection: Optional[nn.Module] = None
    projection_name: Optional[str] = None


@dataclasses.dataclass
class RoutePlan:
    """What one stitch executes.

    Attributes:
        embed: anchor whose patch embedding (+ cls token, position embedding) starts the route.
        layers: blocks and stitching layers in execution order.
        layer_names: module names of ``layers`` (for FLOPs / parameter accounting).
        taps: ``{layer position: [Tap, ...]}``: dense features read after ``layers[position]``.
        finish: anchor whose final norm / head ends the route.
        num_stages: number of dense-feature stages.
    """

    embed: nn.Module
    layers: List[nn.Module]
    layer_names: List[str]
    taps: Dict[int, List[Tap]]
    finish: nn.Module
    num_stages: int


@dataclasses.dataclass
class RouteOutput:
    """Result of a route.

    Attributes:
        tokens: ``(B, P + H*W, C_last)`` output of the last block (before the final norm), ``P`` prefix
            (cls) tokens, ``C_last`` the width of the anchor the route ends in.
        features: one ``(B, P + H*W, C_slow)`` tensor per dense stage (empty if not requested).
        grid: patch grid ``(H, W)``.
        num_prefix_tokens: ``P``.
    """

    tokens: torch.Tensor
    features: List[torch.Tensor]
    grid: Tuple[int, int]
    num_prefix_tokens: int

    def feature_maps(self) -> List[torch.Tensor]:
        """Dense features as ``(B, C_slow, H, W)`` maps (prefix tokens dropped)."""
        return [tokens_to_map(f, self.grid, self.num_prefix_tokens) for f in self.features]


def tokens_to_map(tokens: torch.Tensor, grid: Tuple[int, int], num_prefix_tokens: int) -> torch.Tensor:
    """``(B, P + H*W, C)`` -> ``(B, C, H, W)``."""
    b, n, c = tokens.shape
    h, w = grid
    if n != num_prefix_tokens + h * w:
        raise ValueError(f"{n} tokens do not fit a {h}x{w} grid with {num_prefix_tokens} prefix tokens")
    return tokens[:, num_prefix_tokens:].transpose(1, 2).reshape(b, c, h, w)


def resample_position_table(anchor: nn.Module, grid: Tuple[int, int]) -> torch.Tensor:
    """``anchor.pos_embed`` (a ``(1, P_pos + h*w, C)`` table) for a ``grid = (H, W)`` patch grid: ``(1, P_pos + H*W, C)``.

    The table is a parameter at the grid the anchor was built for (its pretraining grid, e.g. 14x14 for a
    224 DeiT3) and is resampled at every forward whose grid differs, bicubic with ``align_corners=False`` and
    no antialiasing: what SN-Netv2's mmseg-style DeiT3 and detectron2's ViTDet (``get_abs_pos``) both do.
    (timm's own dynamic resampling antialiases, which for bicubic also changes the kernel: up to 0.3 apart
    from the above on a unit-scale table.) ``P_pos`` is the number of prefix-token entries the table holds
    (0 for DeiT3, whose cls token has no position embedding).
    """
    pos = anchor.pos_embed
    stored = tuple(int(g) for g in anchor.patch_embed.grid_size)
    if tuple(grid) == stored:
        return pos
    prefix = 0 if getattr(anchor, "no_embed_class", False) else anchor.num_prefix_tokens
    dim = pos.shape[-1]
    table = pos[:, prefix:].reshape(1, *stored, dim).permute(0, 3, 1, 2)
    table = F.interpolate(table, size=tuple(grid), mode="bicubic", align_corners=False)
    return torch.cat([pos[:, :prefix], table.permute(0, 2, 3, 1).reshape(1, -1, dim)], dim=1)


def embed_images(anchor: nn.Module, images: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int]]:
    """Patch-embed ``images`` ``(B, 3, H_img, W_img)`` with ``anchor``: tokens ``(B, P + H*W, C)``, grid.

    Prefix tokens (cls, registers) and the position embedding (``resample_position_table``) are added as
    timm's ``VisionTransformer`` does for the anchor's layout (DeiT3: position embedding on patch tokens only;
    DINOv2 with registers: cls and register tokens after it; BEiT: the cls token, no absolute table). SAM's
    ``(1, h, w, C)`` table is resampled as timm's SAM does (``resample_abs_pos_embed_nhwc``); SAM has no prefix.
    """
    if images.dim() != 4 or images.shape[1] != anchor.patch_embed.proj.in_channels:
        raise ValueError(
            f"expected images (B, {anchor.patch_embed.proj.in_channels}, H, W), got {tuple(images.shape)}"
        )
    x = anchor.patch_embed(images)
    if x.dim() == 4:  # dynamic_img_size: (B, H, W, C)
        grid = (int(x.shape[1]), int(x.shape[2]))
        x = x.flatten(1, 2)
    else:  # (B, H*W, C)
        grid = tuple(int(g) for g in anchor.patch_embed.dynamic_feat_size(images.shape[-2:]))
    tokens = (anchor.cls_token, getattr(anchor, "reg_token", None))
    prefix = [t.expand(x.shape[0], -1, -1) for t in tokens if t is not None]
    if anchor.pos_embed is not None and anchor.pos_embed.dim() == 4:  # SAM
        x = x + resample_abs_pos_embed_nhwc(anchor.pos_embed, grid).flatten(1, 2)
    if anchor.pos_embed is None or anchor.pos_embed.dim() == 4:
        x = torch.cat(prefix + [x], dim=1)
    elif getattr(anchor, "no_embed_class", False):
        x = torch.cat(prefix + [x + resample_position_table(anchor, grid)], dim=1)
    else:
        x = torch.cat(prefix + [x], dim=1) + resample_position_table(anchor, grid)
    x = anchor.pos_drop(x)
    for name in ("patch_drop", "norm_pre"):  # VisionTransformer and SAM
        if hasattr(anchor, name):
            x = getattr(anchor, name)(x)
    return x, grid


def run_layer(layer: nn.Module, x: torch.Tensor, grid: Tuple[int, int]) -> torch.Tensor:
    """One block or stitching layer on tokens ``(B, P + H*W, C)``; a block whose attention depends on the patch
    grid (BEiT's ``GridRelPosBlock``, SAM's ``TokenMapBlock``) is given ``grid = (H, W)``."""
    if isinstance(layer, GRID_BLOCKS):
        return layer(x, grid)
    return layer(x)


def run_plan(plan: RoutePlan, images: torch.Tensor, with_features: bool = True) -> RouteOutput:
    """Run a route on ``images`` ``(B, 3, H_img, W_img)``."""
    x, grid = embed_images(plan.embed, images)
    features: List[Optional[torch.Tensor]] = [None] * plan.num_stages
    for position, layer in enumerate(plan.layers):
        x = run_layer(layer, x, grid)
        if with_features:
            for tap in plan.taps.get(position, ()):
                features[tap.stage] = x if tap.projection is None else tap.projection(x)
    if with_features and any(f is None for f in features):
        raise RuntimeError("route did not cross every dense stage; the plan is inconsistent")
    return RouteOutput(x, features if with_features else [], grid, int(plan.embed.num_prefix_tokens))


def classify(finish: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """Final norm, pooling and classifier of ``finish``: ``(B, N, C)`` -> ``(B, num_classes)``.

    Raises ``TypeError`` for a SAM anchor: its final norm is a convolutional neck over the patch grid, which this
    engine does not run (SAM anchors give dense features only)."""
    if not hasattr(finish, "norm"):
        raise TypeError(f"a {type(finish).__name__} anchor has no final norm and classifier the engine runs (SAM's "
                        "convolutional neck is not): use its dense features (mode 'features')")
    return finish.forward_head(finish.norm(tokens))
