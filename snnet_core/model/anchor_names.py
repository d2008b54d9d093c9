"""Check the ``model.anchors`` of a project's config before anything is built."""
from __future__ import annotations

from typing import Sequence

import timm
import torch
from timm.models.vision_transformer import VisionTransformer


def check_anchor_names(anchors: Sequence[str], more: bool = False) -> None:
    """Refuse ``model.anchors`` that are not two timm ``VisionTransformer`` names (``more``: two or more, SN-Netv1's
    sliding-window space), before anything is built (each candidate is instantiated on the meta device: no memory,
    no weights)."""
    if isinstance(anchors, str) or len(anchors) < 2 or (len(anchors) > 2 and not more):
        what = "two or more timm ViT names, smallest first" if more else "two timm ViT names (fast, slow)"
        raise ValueError(f"model.anchors={anchors!r}: give {what}, e.g. "
                         "[deit3_small_patch16_224,deit3_large_patch16_224]")
    for which, name in enumerate(anchors):
        if not isinstance(name, str) or not timm.is_model(name):
            raise ValueError(f"model.anchors[{which}]={name!r} is not a timm model name (e.g. deit3_small_patch16_224; "
                             "timm.list_models('deit3*') lists the DeiT3 family)")
        with torch.device("meta"):
            kind = type(timm.create_model(name, pretrained=False))
        if not issubclass(kind, VisionTransformer):
            raise ValueError(f"model.anchors[{which}]={name!r} is a timm {kind.__name__}, not a VisionTransformer: "
                             "SN-Netv2 stitches two ViTs of one family, e.g. deit3_small_patch16_224 and "
                             "deit3_large_patch16_224")
