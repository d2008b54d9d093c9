"""detectron2 backbones for ViTDet: a stitched DeiT3 pair (SN-Netv2) and a single DeiT3 (the baselines).

Both run timm ``VisionTransformer`` blocks with ViTDet's attention pattern: window attention (window 14)
in every block except a few evenly spaced global ones per anchor (2, 5, 8, 11 of 12 blocks; 5, 11, 17, 23
of 24), absolute position embeddings resampled from the checkpoint to the input size (``build_anchor``),
decomposed relative position bias in every block (``use_rel_pos``, detectron2 ViTDet's default; DeiT3 has
none, so the tables start at zero), no cls token, and a single ``last_feat`` output at stride 16 (patch
size) that detectron2's ``SimpleFeaturePyramid`` turns into p2-p6.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from detectron2.modeling import Backbone, ShapeSpec
from detectron2.modeling.backbone.utils import get_rel_pos, window_partition, window_unpartition
from timm.models.vision_transformer import VisionTransformer

from snnet_core import Stitch, StitchedViT, StitchSpace
from snnet_core.model.route import embed_images, tokens_to_map

__all__ = ["TokenGrid", "ViTDetAttention", "global_block_indexes", "prepare_vitdet",
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


class ViTDetAttention(nn.Module):
    """A timm ``Attention`` run as in detectron2's ViTDet: in windows or globally, with optional decomposed
    relative position bias.

    The normed tokens ``(B, H*W, C)`` are laid out on the patch grid. With ``window_size > 0`` they are
    zero-padded to a multiple of it, attended per ``(window_size, window_size)`` window and cropped back;
    with ``window_size == 0`` the whole grid attends. The wrapped module's ``qkv``/``proj`` (and q/k norms)
    are used as they are; attention is ``F.scaled_dot_product_attention`` with the relative position bias,
    if any, passed as its additive ``attn_mask``.

    Relative position (detectron2's ``use_rel_pos``, MViTv2's decomposed form): ``rel_pos_h`` and
    ``rel_pos_w`` of shape ``(2 * size - 1, head_dim)`` for ``size`` = the window size, or, in global
    blocks, ``rel_pos_grid`` (the patch grid of the configured image size); zero-initialised, as
    detectron2 does (``rel_pos_zero_init=True``), so that a pretrained ViT without them starts unchanged.
    A grid of another size resamples the tables (detectron2's ``get_rel_pos``).

    Args:
        attn: timm ``Attention`` (DeiT3's: no gate).
        window_size: window side in tokens; 0 for global attention.
        grid: the token grid tracker shared by the blocks of the ViTs.
        use_rel_pos: add the decomposed relative position bias.
        rel_pos_grid: ``(H, W)`` the global tables are sized for; needed for ``use_rel_pos`` with
            ``window_size == 0``.
    """

    def __init__(self, attn: nn.Module, window_size: int, grid: TokenGrid, use_rel_pos: bool = False,
                 rel_pos_grid: Optional[Tuple[int, int]] = None):
        super().__init__()
        if window_size < 0:
            raise ValueError(f"window_size must be >= 0 (0: global attention), got {window_size}")
        if getattr(attn, "gate", None) is not None:
            raise ValueError("ViTDetAttention runs timm's plain Attention; gated attention is not supported")
        self.attn = attn
        self.window_size = window_size
        self.grid = grid
        self.use_rel_pos = use_rel_pos
        if use_rel_pos:
            if window_size:
                rel_pos_grid = (window_size, window_size)
            elif rel_pos_grid is None:
                raise ValueError("global attention with use_rel_pos needs rel_pos_grid (the patch grid (H, W))")
            self.rel_pos_h = nn.Parameter(torch.zeros(2 * rel_pos_grid[0] - 1, attn.head_dim))
            self.rel_pos_w = nn.Parameter(torch.zeros(2 * rel_pos_grid[1] - 1, attn.head_dim))

    @property
    def num_heads(self) -> int:
        return int(self.attn.num_heads)

    def forward(self, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None, is_causal: bool = False
                ) -> torch.Tensor:
        """``(B, H*W, C)`` tokens of the current grid -> ``(B, H*W, C)``."""
        if attn_mask is not None or is_causal:
            raise ValueError("ViTDet attention does not take an attention mask")
        b, n, c = x.shape
        if self.grid.hw is None or self.grid.hw[0] * self.grid.hw[1] != n:
            raise RuntimeError(f"{n} tokens do not match the patch grid {self.grid.hw} of the current input")
        h, w = self.grid.hw
        if not self.window_size:
            return self._attend(x, (h, w))
        windows, padded_hw = window_partition(x.reshape(b, h, w, c), self.window_size)
        windows = self._attend(windows.flatten(1, 2), (self.window_size, self.window_size)).view_as(windows)
        return window_unpartition(windows, self.window_size, padded_hw, (h, w)).reshape(b, n, c)

    def _attend(self, x: torch.Tensor, hw: Tuple[int, int]) -> torch.Tensor:
        """Self-attention of ``(B, h*w, C)`` tokens on an ``(h, w)`` grid -> ``(B, h*w, C)``."""
        attn = self.attn
        b, n, _ = x.shape
        qkv = attn.qkv(x).reshape(b, n, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = attn.q_norm(q), attn.k_norm(k)
        bias = self.rel_pos_bias(q, hw) if self.use_rel_pos else None
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=bias,
                                           dropout_p=attn.attn_drop.p if self.training else 0.0)
        x = attn.norm(x.transpose(1, 2).reshape(b, n, attn.attn_dim))
        return attn.proj_drop(attn.proj(x))

    def rel_pos_bias(self, q: torch.Tensor, hw: Tuple[int, int]) -> torch.Tensor:
        """Decomposed relative position bias of queries ``q (B, heads, h*w, head_dim)`` on an ``(h, w)``
        grid -> ``(B, heads, h*w, h*w)``, the term detectron2's ``add_decomposed_rel_pos`` adds to the
        attention logits (from the unscaled queries), here returned alone for SDPA's ``attn_mask``."""
        h, w = hw
        rel_h = get_rel_pos(h, h, self.rel_pos_h)  # (h, h, head_dim): query row x key row
        rel_w = get_rel_pos(w, w, self.rel_pos_w)  # (w, w, head_dim)
        grid_q = q.unflatten(2, (h, w))
        bias_h = torch.einsum("bnhwc,hkc->bnhwk", grid_q, rel_h)
        bias_w = torch.einsum("bnhwc,wkc->bnhwk", grid_q, rel_w)
        bias = bias_h[..., :, None] + bias_w[..., None, :]  # (B, heads, h, w, key row, key column)
        return bias.flatten(4).flatten(2, 3).to(q.dtype)

    def extra_repr(self) -> str:
        return f"window_size={self.window_size}, use_rel_pos={self.use_rel_pos}"


def rel_pos_tables(module: nn.Module) -> List[nn.Parameter]:
    """The relative position tables (``rel_pos_h``, ``rel_pos_w``) of the ``ViTDetAttention`` layers in ``module``."""
    return [p for n, p in module.named_parameters() if n.endswith(("rel_pos_h", "rel_pos_w"))]


def global_block_indexes(depth: int, num_global: int = 4) -> List[int]:
    """``num_global`` evenly spaced global-attention blocks ending at the last: 12 -> [2, 5, 8, 11]."""
    if not 1 <= num_global <= depth:
        raise ValueError(f"num_global must be in [1, {depth}], got {num_global}")
    return [(i + 1) * depth // num_global - 1 for i in range(num_global)]


def prepare_vitdet(vits: Sequence[VisionTransformer], window_size: int, num_global: int,
                   use_rel_pos: bool = True, img_size: Optional[int] = None) -> TokenGrid:
    """Make timm ViTs ViTDet backbones, in place; returns the grid tracker they share.

    Every block's attention becomes a ``ViTDetAttention``: windowed (``window_size``) but in the
    ``num_global`` global blocks (``window_size <= 0``: global attention everywhere), with zero-initialised
    relative position tables if ``use_rel_pos`` (global ones sized for the ``img_size // patch_size`` grid
    as detectron2 sizes them; ``None``: the grid the ViT was built for). The final norm and classifier, which
    a detector never runs, are dropped (so that no parameter goes without gradient under DDP).
    """
    grid = TokenGrid()
    for vit in vits:
        if vit.num_prefix_tokens:
            raise ValueError("ViTDet backbones have no cls/register tokens: build anchors with class_token=False")
        vit.norm, vit.fc_norm, vit.head = nn.Identity(), nn.Identity(), nn.Identity()
        vit.patch_embed.register_forward_hook(grid)
        global_ids = set(global_block_indexes(len(vit.blocks), num_global)) if window_size > 0 else None
        if img_size is None:
            patch_grid = tuple(int(s) for s in vit.patch_embed.grid_size)
        else:
            patch_grid = (img_size // int(vit.patch_embed.patch_size[0]),) * 2
        for i, block in enumerate(vit.blocks):
            windowed = global_ids is not None and i not in global_ids
            block.attn = ViTDetAttention(block.attn, window_size if windowed else 0, grid, use_rel_pos, patch_grid)
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
        use_rel_pos: decomposed relative position bias in every block (ViTDet: True), zero-initialised.
        img_size: input side the global blocks' relative position tables are sized for (ViTDet: 1024);
            ``None``: the size ``vit`` was built for. The absolute position table stays at ``vit``'s own grid
            (e.g. 224 for DeiT3, as detectron2's ``pretrain_img_size``) and is resampled per forward.
        out_feature: name of the output feature.

    ``forward``: images ``(B, 3, H, W)`` (multiples of the patch size) -> ``{out_feature: (B, C, H/16, W/16)}``.
    """

    def __init__(self, vit: VisionTransformer, window_size: int = 14, num_global: int = 4,
                 use_rel_pos: bool = True, img_size: Optional[int] = None, out_feature: str = "last_feat"):
        super().__init__(out_feature, int(vit.embed_dim), int(vit.patch_embed.patch_size[0]))
        prepare_vitdet([vit], window_size, num_global, use_rel_pos, img_size)
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
        lora_alpha: LoRA SL update scale numerator (update scaled by ``lora_alpha / lora_rank``; upstream: 1).
        backbone_lora_rank: rank of LoRA on both anchors' attention and MLP linear layers, the anchors' pretrained
            weights frozen (backbone PET, SN-Netv2 Fig. 12a; ``StitchedViT``); the relative position tables, which no
            DeiT3 checkpoint holds, still train. 0: off, the anchors train in full.
        window_size, num_global: ViTDet attention pattern, applied to each anchor with its own depth.
        use_rel_pos: decomposed relative position bias in every block of both anchors, each block its own
            zero-initialised tables (ViTDet: True).
        img_size: input side the global relative position tables are sized for (as ``ViTDetBackbone``).
        out_feature: name of the output feature.
        route_types: the stitch space (default: all five route types, SN-Netv2's; ``("anchor", "FS")``: SN-Netv1's);
            a stitch keeps its id in any of them.
        stitch_id: the stitch ``forward`` runs (default: the large anchor); the config key
            ``model.backbone.net.stitch_id=ID`` evaluates one stitch with ``--eval-only`` and no code.

    ``forward``: images ``(B, 3, H, W)`` -> ``{out_feature: (B, C_large, H/16, W/16)}`` for the selected
    stitch (``set_stitch``). A stitch ending in the small anchor maps its last block through the
    small-to-large stitching layer of that block, so every stitch feeds the pyramid the same width.
    """

    def __init__(self, fast: VisionTransformer, slow: VisionTransformer, lora_rank: int = 16,
                 lora_alpha: float = 1.0, window_size: int = 14, num_global: int = 4, use_rel_pos: bool = True,
                 img_size: Optional[int] = None, out_feature: str = "last_feat", stitch_id: Optional[int] = None,
                 backbone_lora_rank: int = 0, route_types: Optional[Sequence[str]] = None):
        prepare_vitdet([fast, slow], window_size, num_global, use_rel_pos, img_size)
        snnet = StitchedViT(fast, slow, lora_rank=lora_rank, lora_alpha=lora_alpha,
                            out_indices=(len(slow.blocks) - 1,), backbone_lora_rank=backbone_lora_rank,
                            route_types=route_types)
        for table in rel_pos_tables(snnet.anchors):  # zero-initialised, in no checkpoint: trained under backbone LoRA
            table.requires_grad_(True)
        super().__init__(out_feature, snnet.out_channels, snnet.patch_size)
        self.snnet = snnet
        if stitch_id is not None:
            self.set_stitch(stitch_id)

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
