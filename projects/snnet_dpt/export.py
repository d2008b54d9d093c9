"""A deployable single stitch: DPT head + the stitch's modules (LoRA merged), saved and loaded without the SN-Net.

The file (``weights_only``-safe) holds the ``ModelSpec``, a recipe of the stitch's route (its layer names,
dense-feature taps and first/last anchor) and the weights of the exported model. ``load_exported_model``
rebuilds exactly the deployed modules: each used block from a 1-block timm template of its anchor, the
stitching layers as plain ``nn.Linear``; the SN-Net (both anchors' 36 blocks and 23 stitching layers for
DeiT3-S/L) is never built.
"""
from __future__ import annotations

import copy
from typing import Any, Dict, List

import torch
import torch.nn as nn

from snnet_core import ExportedStitch, StitchedViT, export_stitch
from snnet_core.atomic_io import write_atomic
from snnet_core.checkpoint import read_tagged_checkpoint
from snnet_core.route import RoutePlan, Tap

from .model import DPTDepthModel, ModelSpec

FORMAT = "snnet-dpt-stitch-v1"


def export_depth_model(model: DPTDepthModel, stitch_id: int) -> DPTDepthModel:
    """Standalone ``DPTDepthModel`` of one stitch of ``model`` (whose backbone is a ``StitchedViT``)."""
    snnet: StitchedViT = model.backbone
    exported = DPTDepthModel(export_stitch(snnet, stitch_id), copy.deepcopy(model.head), snnet.patch_size)
    return exported.train(model.training)


def route_recipe(snnet: StitchedViT, stitch_id: int) -> Dict[str, Any]:
    """Primitives describing what stitch ``stitch_id`` runs (enough to rebuild its modules)."""
    stitch = snnet.space[stitch_id]
    plan = snnet.plan(stitch_id)
    return {
        "id": stitch.id, "route": stitch.route, "kind": stitch.kind,
        "embed_anchor": stitch.first_anchor, "finish_anchor": stitch.last_anchor,
        "layer_names": list(plan.layer_names),
        "taps": [[pos, t.stage, t.projection_name] for pos, ts in sorted(plan.taps.items()) for t in ts],
        "num_stages": plan.num_stages,
        "embed_dims": list(snnet.embed_dims),
    }


def save_exported_stitch(path: str, model: DPTDepthModel, spec: ModelSpec, stitch_id: int) -> DPTDepthModel:
    """Export stitch ``stitch_id`` of the SN-Net ``model`` to ``path``; returns the exported model."""
    exported = export_depth_model(model, stitch_id)
    state = {"format": FORMAT, "spec": spec.to_dict(), "stitch": route_recipe(model.backbone, stitch_id),
             "model": exported.state_dict()}
    write_atomic(path, lambda f: torch.save(state, f), binary=True)
    return exported


def _rebuild_plan(spec: ModelSpec, recipe: Dict[str, Any]) -> RoutePlan:
    """Fresh (random) modules with the structure of the recipe's route."""
    used = {recipe["embed_anchor"], recipe["finish_anchor"]}
    used |= {int(name.split(".")[1]) for name in recipe["layer_names"] if name.startswith("anchors.")}
    anchors, templates = {}, {}
    for a in sorted(used):
        anchor = spec.build_anchor(a, depth=1, drop_path_rate=0.0)
        templates[a], anchor.blocks = anchor.blocks[0], nn.Sequential()
        anchors[a] = anchor
    dims = recipe["embed_dims"]  # (fast, slow)
    modules: Dict[str, nn.Module] = {}

    def module(name: str) -> nn.Module:
        if name not in modules:
            if name.startswith("anchors."):
                modules[name] = copy.deepcopy(templates[int(name.split(".")[1])])
            else:  # stitch_s2l.k / stitch_l2s.k: merged stitching layer
                s2l = name.startswith("stitch_s2l.")
                modules[name] = nn.Linear(dims[0] if s2l else dims[1], dims[1] if s2l else dims[0])
        return modules[name]

    layers = [module(n) for n in recipe["layer_names"]]
    taps: Dict[int, List[Tap]] = {}
    for pos, stage, projection_name in recipe["taps"]:
        projection = module(projection_name) if projection_name else None
        taps.setdefault(int(pos), []).append(Tap(int(stage), projection, projection_name))
    return RoutePlan(anchors[recipe["embed_anchor"]], layers, list(recipe["layer_names"]), taps,
                     anchors[recipe["finish_anchor"]], int(recipe["num_stages"]))


def load_exported_model(path: str, map_location: str | torch.device = "cpu") -> DPTDepthModel:
    """Load a file written by ``save_exported_stitch`` as a ``DPTDepthModel`` (eval mode)."""
    state = read_tagged_checkpoint(path, FORMAT, "exported SN-Net DPT stitch", map_location)
    spec, recipe = ModelSpec.from_dict(state["spec"]), state["stitch"]
    backbone = ExportedStitch(_rebuild_plan(spec, recipe), recipe["id"], recipe["route"], recipe["kind"])
    patch_size = int(backbone.embed_anchor.patch_embed.patch_size[0])
    model = DPTDepthModel(backbone, spec.build_head(recipe["embed_dims"][1]), patch_size)
    model.load_state_dict(state["model"])
    return model.eval()
