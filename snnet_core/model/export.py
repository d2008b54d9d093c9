"""Export one stitch as a standalone ``nn.Module`` holding only the modules it runs, LoRA merged."""
from __future__ import annotations

import copy
from typing import Dict, List, Optional

import torch
import torch.nn as nn

from snnet_core.model.backbone_lora import merge_backbone_lora
from snnet_core.model.route import RouteOutput, RoutePlan, Tap, classify, run_plan
from snnet_core.model.snnet import StitchedViT
from snnet_core.model.stitching_layers import StitchingLayer


class ExportedStitch(nn.Module):
    """A single stitched ViT: same ``forward``/``classify`` outputs as the SN-Net running that stitch.

    Attributes:
        stitch_id, route, kind: which stitch this is.
        embed_anchor: the first anchor without its blocks (patch embedding, cls token, position embedding).
        finish_anchor: the last anchor without its blocks (final norm and head).
        layers: blocks (backbone LoRA merged: plain ``nn.Linear``) and (merged) stitching layers in execution order.
        projections: merged layers mapping dense features read in a smaller anchor to the largest width (two-way:
            small-to-large stitching layers; sliding window: the SN-Net's ``feature_proj``).
    """

    def __init__(self, plan: RoutePlan, stitch_id: int, route: str, kind: str):
        super().__init__()
        self.stitch_id, self.route, self.kind = stitch_id, route, kind
        memo: Dict[int, object] = {id(a.blocks): nn.Sequential() for a in {plan.embed, plan.finish}}
        for module in list(plan.layers) + [t.projection for ts in plan.taps.values() for t in ts]:
            if isinstance(module, StitchingLayer) and id(module) not in memo:
                memo[id(module)] = module.merged()
        projections = {id(t.projection): t.projection for ts in plan.taps.values() for t in ts if t.projection}
        embed, finish, layers, proj = copy.deepcopy(
            (plan.embed, plan.finish, list(plan.layers), list(projections.values())), memo
        )
        self.embed_anchor = embed
        self.finish_anchor = finish
        self.layers = nn.ModuleList(layers)
        self.projections = nn.ModuleList(proj)
        merge_backbone_lora(self)  # on the copies: the SN-Net keeps its LoRA layers
        proj_index = {key: i for i, key in enumerate(projections)}
        # (layer position, stage, projection index or -1)
        self._taps: List[tuple] = [
            (pos, t.stage, proj_index[id(t.projection)] if t.projection is not None else -1)
            for pos, ts in plan.taps.items() for t in ts
        ]
        self.layer_names = list(plan.layer_names)
        self.num_stages = plan.num_stages

    def _plan(self) -> RoutePlan:
        taps: Dict[int, List[Tap]] = {}
        for pos, stage, p in self._taps:
            taps.setdefault(pos, []).append(Tap(stage, self.projections[p] if p >= 0 else None))
        return RoutePlan(self.embed_anchor, list(self.layers), self.layer_names, taps, self.finish_anchor,
                         self.num_stages)

    def forward(self, images: torch.Tensor, with_features: bool = True) -> RouteOutput:
        """``images`` ``(B, 3, H, W)`` -> ``RouteOutput`` (tokens, dense features at the slow width, grid)."""
        return run_plan(self._plan(), images, with_features)

    def classify(self, images: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, num_classes)``."""
        return classify(self.finish_anchor, self.forward(images, with_features=False).tokens)

    def extra_repr(self) -> str:
        return f"stitch_id={self.stitch_id}, kind={self.kind}, route='{self.route}'"


def export_stitch(snnet: StitchedViT, stitch_id: Optional[int] = None) -> ExportedStitch:
    """Copy the modules of one stitch (default: the selected one) into an ``ExportedStitch``."""
    stitch = snnet.space[snnet.stitch_id if stitch_id is None else stitch_id]
    exported = ExportedStitch(snnet.plan(stitch.id), stitch.id, stitch.route, stitch.kind)
    return exported.train(snnet.training)
