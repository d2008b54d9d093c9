"""Layer-wise learning-rate decay for a stitched pair of ViTs (ViTDet's rule, applied per anchor).

ViTDet (detectron2 ``get_vit_lr_decay_rate``) scales the lr of a parameter at layer ``i`` of a
``D``-block ViT by ``rate ** (D + 1 - i)``: patch/position embedding at layer 0, block ``b`` at layer
``b + 1``, everything after the backbone (pyramid, RPN, ROI heads) at layer ``D + 1`` (factor 1).

With two anchors each keeps its own depth and rate (0.7 for 12 blocks, 0.8 for 24 in ViTDet). A stitching
layer runs at the rate of the block it feeds: small-to-large layer ``k`` (after small block ``k``) feeds
large block ``b_k + 1``, large-to-small layer ``k`` (after large block ``b_k``) feeds small block ``k + 1``;
the last small-to-large layer, which maps a stitch ending in the small anchor to the pyramid, feeds the
head (factor 1).
"""
from __future__ import annotations

import re
from typing import Sequence, Tuple

from snnet_core import FAST, SLOW
from snnet_core.model.stitch_space import paired_large_blocks

_ANCHOR = re.compile(r"\.snnet\.anchors\.(\d+)\.(.+)$")
_STITCH = re.compile(r"\.snnet\.stitch_(s2l|l2s)\.(\d+)\.")
_EMBEDDING = ("patch_embed.", "pos_embed", "cls_token", "reg_token")


def snnet_layer_id(name: str, num_layers: Sequence[int]) -> Tuple[int, int]:
    """``(anchor, layer id)`` of a parameter name of a model with a ``StitchedViTDetBackbone``.

    Names outside the stitched ViT (and anchor parameters after the blocks) get the slow anchor's
    ``D + 1`` (factor 1).
    """
    depth_fast, depth_slow = num_layers
    match = _ANCHOR.search(name) if name.startswith("backbone.") else None
    if match:
        anchor, rest = int(match.group(1)), match.group(2)
        if rest.startswith("blocks."):
            return anchor, int(rest.split(".")[1]) + 1
        if rest.startswith(_EMBEDDING):
            return anchor, 0
        return anchor, num_layers[anchor] + 1
    match = _STITCH.search(name) if name.startswith("backbone.") else None
    if match:
        position = int(match.group(2))
        if match.group(1) == "s2l":  # feeds large block b_k + 1 (layer b_k + 2); past the last block: head
            fed_block = paired_large_blocks(depth_fast, depth_slow)[position] + 1
            return SLOW, min(fed_block + 1, depth_slow + 1)
        return FAST, position + 2  # l2s k feeds small block k + 1 (layer k + 2)
    return SLOW, depth_slow + 1


def get_snnet_lr_decay_rate(name: str, num_layers: Sequence[int] = (12, 24),
                            lr_decay_rates: Sequence[float] = (0.7, 0.8)) -> float:
    """lr factor of parameter ``name`` (as in ``model.named_parameters()``).

    Args:
        name: e.g. ``backbone.net.snnet.anchors.1.blocks.3.mlp.fc1.weight``.
        num_layers: blocks of the (small, large) anchors.
        lr_decay_rates: decay rate of each anchor.
    """
    anchor, layer_id = snnet_layer_id(name, num_layers)
    return lr_decay_rates[anchor] ** (num_layers[anchor] + 1 - layer_id)
