"""A deployable single stitch: DPT head + the stitch's modules (LoRA merged), saved and loaded without the SN-Net;
and ``load_depth_model``, the one call from any depth checkpoint (SN-Net or exported stitch) to a model.

The file of an exported stitch (``weights_only``-safe) holds the ``ModelSpec``, a recipe of the stitch's route
(``snnet_core.model.checkpoint.route_recipe``: its layer names, dense-feature taps and first/last anchor) and the weights
of the exported model. ``load_exported_model`` rebuilds exactly the deployed modules: the anchors are built on the
meta device (no memory), the route's blocks copied out of them and materialised, the stitching layers as plain
``nn.Linear``; the SN-Net (both anchors' 36 blocks and 23 stitching layers for DeiT3-S/L) is never built.
"""
from __future__ import annotations

import copy
from typing import Any, Dict, Optional

import torch

from snnet_core import ExportedStitch, StitchedViT, export_stitch
from snnet_core.io.atomic_io import write_atomic
from snnet_core.model.checkpoint import FORMAT as SNNET_FORMAT
from snnet_core.model.checkpoint import load_snnet_state, read_checkpoint_file, read_tagged_checkpoint, route_recipe
from snnet_core.model.rebuild import exported_stitch_from_recipe

from .model import DPTDepthModel, ModelSpec, build_model

FORMAT = "snnet-dpt-stitch-v1"


def export_depth_model(model: DPTDepthModel, stitch_id: int) -> DPTDepthModel:
    """Standalone ``DPTDepthModel`` of one stitch of ``model`` (whose backbone is a ``StitchedViT``)."""
    snnet: StitchedViT = model.backbone
    exported = DPTDepthModel(export_stitch(snnet, stitch_id), copy.deepcopy(model.head), snnet.patch_size)
    return exported.train(model.training)


def save_exported_stitch(path: str, model: DPTDepthModel, spec: ModelSpec, stitch_id: int) -> DPTDepthModel:
    """Export stitch ``stitch_id`` of the SN-Net ``model`` to ``path``; returns the exported model."""
    exported = export_depth_model(model, stitch_id)
    state = {"format": FORMAT, "spec": spec.to_dict(), "stitch": route_recipe(model.backbone, stitch_id),
             "model": exported.state_dict()}
    write_atomic(path, lambda f: torch.save(state, f), binary=True)
    return exported


def _exported_backbone(spec: ModelSpec, recipe: Dict[str, Any], map_location: str | torch.device) -> ExportedStitch:
    """The recipe's stitch with zero weights (``snnet_core.model.rebuild``: only the route's modules exist)."""
    return exported_stitch_from_recipe(recipe, lambda a: spec.build_anchor(a, drop_path_rate=0.0), map_location)


def load_exported_model(path: str, map_location: str | torch.device = "cpu") -> DPTDepthModel:
    """Load a file written by ``save_exported_stitch`` as a ``DPTDepthModel`` (eval mode)."""
    return _exported_model(read_tagged_checkpoint(path, FORMAT, "exported SN-Net DPT stitch", map_location),
                           map_location)


def _exported_model(state: Dict[str, Any], map_location: str | torch.device) -> DPTDepthModel:
    spec, recipe = ModelSpec.from_dict(state["spec"]), state["stitch"]
    backbone = _exported_backbone(spec, recipe, map_location)
    patch_size = int(backbone.embed_anchor.patch_embed.patch_size[0])
    model = DPTDepthModel(backbone, spec.build_head(recipe["embed_dims"][1]), patch_size).to(map_location)
    model.load_state_dict(state["model"])
    return model.eval()


def load_depth_model(path: str, stitch_id: Optional[int] = None, map_location: str | torch.device = "cpu"
                     ) -> DPTDepthModel:
    """The depth model in a checkpoint file, ready for inference (eval mode, on ``map_location``).

    - a training checkpoint of ``train.py`` (``<train.output_dir>/model_final.pth``): the whole SN-Net with its DPT
      head, rebuilt from the ``ModelSpec`` stored in it (no anchor weights are read); ``stitch_id`` selects the
      stitch ``forward`` runs (``model.backbone.set_stitch(id)`` changes it later; default: the slow anchor);
    - an exported stitch (``train.py --export-stitch ID``: ``<train.output_dir>/stitch_<ID>/model_final.pth``,
      ``save_exported_stitch``): that stitch alone;
      ``stitch_id``, if given, must be its id.

    ``model(images (B, 3, H, W))`` -> metric depth ``(B, 1, H, W)`` in metres. Raises ``FileNotFoundError`` /
    ``RuntimeError`` naming the file for a missing, corrupt or foreign one, ``KeyError`` for a stitch id the
    model does not hold.
    """
    state = read_checkpoint_file(path, "depth checkpoint", map_location)
    kind = state.get("format") if isinstance(state, dict) else None
    if kind == FORMAT:
        model = _exported_model(state, map_location)
        if stitch_id is not None and stitch_id != model.backbone.stitch_id:
            raise KeyError(f"{path} is the exported stitch {model.backbone.stitch_id} ({model.backbone.route}), not "
                           f"stitch {stitch_id}: export stitch {stitch_id} (train.py --eval-only --export-stitch "
                           f"{stitch_id}) or load the SN-Net's training checkpoint")
        return model
    if kind != SNNET_FORMAT or "spec" not in state or "head" not in state:
        raise RuntimeError(f"{path!r} is neither a training checkpoint of projects/snnet_dpt/train.py nor a stitch "
                           "it exported (--export-stitch): pass <train.output_dir>/model_final.pth or "
                           "<train.output_dir>/stitch_<ID>/model_final.pth")
    model = build_model(ModelSpec.from_dict(state["spec"])).to(map_location)
    load_snnet_state(state, model.backbone, path)
    model.head.load_state_dict(state["head"])
    if stitch_id is not None:
        model.backbone.set_stitch(stitch_id)
    return model.eval()
