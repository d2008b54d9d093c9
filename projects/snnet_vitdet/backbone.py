"""detectron2 backbones for ViTDet: a stitched DeiT3 pair (SN-Netv2) and a single DeiT3 (the baselines).

Both run timm ``VisionTransformer`` blocks with ViTDet's attention pattern: window attention (window 14)
in every block except a few evenly spaced global ones per anchor (2, 5, 8, 11 of 12 blocks; 5, 11, 17, 23
of 24), absolute position embeddings resampled from the checkpoint to the input size (``build_anchor``),
no cls token, and a single ``last_feat`` output at stride 16 (patch size) that detectron2's
``SimpleFeaturePyramid`` turns into p2-p6.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from detectron2.modeling import Backbone, ShapeSpec
from detectron2.modeling.backbone.utils import window_partition, window_unpartition
from timm.models.vision_transformer import VisionTransformer

from snnet_core import Stitch, StitchedViT, StitchSpace
from snnet_core.route import embed_images, tokens_to_map

__all__ = ["TokenGrid", "WindowedAttention", "global_block_indexes", "prepare_vitdet",
           "ViTDetBackbone", "StitchedViTDetBackbone"]


class TokenGrid:
    """The patch grid ``(H, W)`` of the tokens currently flowing through a set of ViTs.

    Registered as a forward hook on every anchor's patch embedding (which, with ``dynamic_img_size``,
    returns ``(B, H, W, C)``), so that window attention knows the grid whichever route, anchor or
    input size runs: the grid is born there and every route starts there.
    """

    def __init__(self) -> None:
        self.hw: Optional[Tuple[int, int]] = None

    def __call__(self, module: nn.Module, inputs, output: torch.Tensor) -> None:
        if output.dim() != 4:
            raise RuntimeError(
                "window attention needs the patch embedding's (B, H, W, C) output: build the anchors with "
                "dynamic_img_size=True (snnet_core.build_anchor does)"
            )
        self.hw = (int(output.shape[1]), int(output.shape[2]))


class WindowedAttention(nn.Module):
    """Runs a timm ``Attention`` inside non-overlapping ``window_size`` windows of the token grid (ViTDet).

    The normed tokens ``(B, H*W, C)`` are laid out on the grid, zero-padded to a multiple of
    ``window_size``, split into ``(B * nW, window_size**2, C)`` windows, attended per window by the wrapped
    module, merged and cropped back to ``(B, H*W, C)``.
    """

    def __init__(self, attn: nn.Module, window_size: int, grid: TokenGrid):
        super().__init__()
        if window_size < 1:
            raise ValueError(f"window_size must be positive, got {window_size}")
        self.attn = attn
        self.window_size = window_size
        self.grid = grid

    @property
    def num_heads(self) -> int:
        return int(self.attn.num_heads)

    def forward(self, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None, is_causal: bool = False
                ) -> torch.Tensor:
        if attn_mask is not None or is_causal:
            raise ValueError("window attention does not take an attention mask")
        b, n, c = x.shape
        if self.grid.hw is None or self.grid.hw[0] * self.grid.hw[1] != n:
            raise RuntimeError(f"{n} tokens do not match the patch grid {self.grid.hw} of the current input")
        h, w = self.grid.hw
        windows, padded_hw = window_partition(x.reshape(b, h, w, c), self.window_size)
        windows = self.attn(windows.flatten(1, 2)).view_as(windows)
        return window_unpartition(windows, self.window_size, padded_hw, (h, w)).reshape(b, n, c)

    def extra_repr(self) -> str:
        return f"window_size={self.window_size}"


def global_block_indexes(depth: int, num_global: int = 4) -> List[int]:
    """``num_global`` evenly spaced global-attention blocks ending at the last: 12 -> [2, 5, 8, 11]."""
    if not 1 <= num_global <= depth:
        raise ValueError(f"num_global must be in [1, {depth}], got {num_global}")
    return [(i + 1) * depth // num_global - 1 for i in range(num_global)]


def prepare_vitdet(vits: Sequence[VisionTransformer], window_size: int, num_global: int) -> TokenGrid:
    """Make timm ViTs ViTDet backbones, in place; returns the grid tracker they share.

    Every non-global block gets window attention (``window_size <= 0`` keeps global attention
    everywhere), and the final norm and classifier, which a detector never runs, are dropped (so that
    no parameter goes without gradient under DDP).
    """
    grid = TokenGrid()
    for vit in vits:
        if vit.num_prefix_tokens:
            raise ValueError("ViTDet backbones have no cls/register tokens: build anchors with class_token=False")
        vit.norm, vit.fc_norm, vit.head = nn.Identity(), nn.Identity(), nn.Identity()
        vit.patch_embed.register_forward_hook(grid)
        if window_size <= 0:
            continue
        global_ids = set(global_block_indexes(len(vit.blocks), num_global))
        for i, block in enumerate(vit.blocks):
            if i not in global_ids:
                block.attn = WindowedAttention(block.attn, window_size, grid)
    return grid


class _SingleFeatureBackbone(Backbone):
    """A backbone with one output ``out_feature`` of ``channels`` at ``stride``."""

    def __init__(self, out_feature: str, channels: int, stride: int):
        super().__init__()
        self._out_features = [out_feature]
        self._out_feature_channels = {out_feature: channels}
        self._out_feature_strides = {out_feature: stride}

    def output_shape(self) -> Dict[str, ShapeSpec]:
        name = self._out_features[0]
        return {name: ShapeSpec(channels=self._out_feature_channels[name], stride=self._out_feature_strides[name])}


class ViTDetBackbone(_SingleFeatureBackbone):
    """One DeiT3 ViT as a ViTDet backbone (the anchor baselines).

    Args:
        vit: timm ViT without cls token (``build_anchor(..., class_token=False)``).
        window_size: window attention size (ViTDet: 14).
        num_global: evenly spaced global-attention blocks (ViTDet: 4).
        out_feature: name of the output feature.

    ``forward``: images ``(B, 3, H, W)`` (multiples of the patch size) -> ``{out_feature: (B, C, H/16, W/16)}``.
    """

    def __init__(self, vit: VisionTransformer, window_size: int = 14, num_global: int = 4,
                 out_feature: str = "last_feat"):
        super().__init__(out_feature, int(vit.embed_dim), int(vit.patch_embed.patch_size[0]))
        prepare_vitdet([vit], window_size, num_global)
        self.vit = vit

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        tokens, grid = embed_images(self.vit, x)
        tokens = self.vit.blocks(tokens)
        return {self._out_features[0]: tokens_to_map(tokens, grid, 0)}


class StitchedViTDetBackbone(_SingleFeatureBackbone):
    """Every stitch of a (small, large) DeiT3 pair as one ViTDet backbone; one stitch runs at a time.

    Args:
        fast: the small anchor (e.g. DeiT3-S, 12 blocks), built without cls token.
        slow: the large anchor (e.g. DeiT3-L, 24 blocks), built without cls token.
        lora_rank: LoRA SL rank of the stitching layers (paper: 16 for S/L).
        window_size, num_global: ViTDet attention pattern, applied to each anchor with its own depth.
        out_feature: name of the output feature.

    ``forward``: images ``(B, 3, H, W)`` -> ``{out_feature: (B, C_large, H/16, W/16)}`` for the selected
    stitch (``set_stitch``). A stitch ending in the small anchor maps its last block through the
    small-to-large stitching layer of that block, so every stitch feeds the pyramid the same width.
    """

    def __init__(self, fast: VisionTransformer, slow: VisionTransformer, lora_rank: int = 16,
                 window_size: int = 14, num_global: int = 4, out_feature: str = "last_feat"):
        prepare_vitdet([fast, slow], window_size, num_global)
        snnet = StitchedViT(fast, slow, lora_rank=lora_rank, out_indices=(len(slow.blocks) - 1,))
        super().__init__(out_feature, snnet.out_channels, snnet.patch_size)
        self.snnet = snnet

    @property
    def space(self) -> StitchSpace:
        """The stitch space (``space.ids``, ``space[id]``)."""
        return self.snnet.space

    @property
    def stitch_id(self) -> int:
        return self.snnet.stitch_id

    def set_stitch(self, stitch_id: int) -> Stitch:
        """Select the stitch ``forward`` runs; ``KeyError`` naming the valid range for an unknown id."""
        return self.snnet.set_stitch(stitch_id)

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        return {self._out_features[0]: self.snnet(x).feature_maps()[0]}
