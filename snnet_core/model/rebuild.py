"""Rebuild one exported stitch from the route recipe stored with its weights, without its SN-Net."""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional

import torch
import torch.nn as nn

from snnet_core.model.checkpoint import materialize, plan_from_recipe, recipe_anchors
from snnet_core.model.export import ExportedStitch


def exported_stitch_from_recipe(recipe: Dict[str, Any], build_anchor: Callable[[int], nn.Module],
                                map_location: str | torch.device = "cpu",
                                prepare: Optional[Callable[[List[nn.Module]], object]] = None) -> ExportedStitch:
    """The ``ExportedStitch`` of a ``route_recipe`` with zero weights, to be loaded from its file: the anchors
    its route uses are built on the meta device by ``build_anchor(index)`` (no memory, no initialisation; build
    them without drop path) and only the route's modules are copied out and materialised on ``map_location``.
    ``prepare``: called on the list of built anchors before the route is taken from them (e.g. to give their blocks
    a task's attention pattern, shared by the anchors)."""
    with torch.device("meta"):
        anchors = {a: build_anchor(a) for a in recipe_anchors(recipe)}
        if prepare is not None:
            prepare(list(anchors.values()))
        backbone = ExportedStitch(plan_from_recipe(recipe, anchors), recipe["id"], recipe["route"], recipe["kind"])
    return materialize(backbone, map_location)
