"""Export one stitch of a trained stitched SETR as a standalone detectron2-style segmentor.

``export_segmentor(cfg, model, stitch_id, output_dir)`` writes ``output_dir/stitch_<ID>/``:

- ``model_final.pth``: ``{"model": state_dict, "stitch": {...}}``, the weights of a ``SETR`` whose backbone is a
  ``StitchBackbone``: only the stitch's blocks and merged stitching layers (LoRA folded in), with the SN-Net's
  trained decode head (the auxiliary heads, training-only, are left out);
- ``config.yaml``: its LazyConfig: ``model`` (the SN-Net's settings, ``model.backbone`` replaced by
  ``build_stitch_backbone``), ``dataloader`` / ``datasets`` / ``train`` of the SN-Net's config with
  ``train.init_checkpoint`` pointing at the weights. It loads without the SN-Net::

      cfg = load_config_file("output/x/stitch_5/config.yaml")  # snnet_core.io.config_io: read as data
      model = instantiate(cfg.model).eval()
      DetectionCheckpointer(model).load(cfg.train.init_checkpoint)

  and ``train_net.py --eval-only --config-file .../config.yaml`` evaluates it as a plain segmentor.
"""
from __future__ import annotations

import copy
from typing import Any, Dict, Mapping, Sequence

import torch
import torch.nn as nn
from detectron2.config import LazyCall as L
from omegaconf import DictConfig

from snnet_core import ExportedStitch, build_anchor
from snnet_core.d2.export import anchor_builds, export_stitched_model, exported_lazy_config, plain
from snnet_core.model.checkpoint import route_recipe
from snnet_core.model.rebuild import exported_stitch_from_recipe
from snnet_core.model.route import RouteOutput

from .model import SETR, StitchedSETR
from .training import stitched_setr

__all__ = ["StitchBackbone", "build_stitch_backbone", "exported_config", "export_segmentor"]

DROPPED = ("backbone.", "auxiliary_heads.")  # SN-Net weights an exported segmentor does not hold


class StitchBackbone(nn.Module):
    """One stitch of a ``StitchedViT``, alone, as ``SETR``'s backbone: ``forward(images (B, 3, H, W))`` ->
    ``RouteOutput`` with the stitch's dense features (at the large anchor's width), as the SN-Net gives them."""

    def __init__(self, stitch: ExportedStitch):
        super().__init__()
        self.stitch = stitch

    @property
    def patch_size(self) -> int:
        return int(self.stitch.embed_anchor.patch_embed.patch_size[0])

    @property
    def stitch_id(self) -> int:
        return self.stitch.stitch_id

    def forward(self, images: torch.Tensor) -> RouteOutput:
        return self.stitch(images)


def build_stitch_backbone(anchors: Sequence[Mapping[str, Any]], stitch: Mapping[str, Any]) -> StitchBackbone:
    """The ``StitchBackbone`` of ``stitch`` (``snnet_core.model.checkpoint.route_recipe``) over ``anchors`` (the
    SN-Net's ``build_anchor`` arguments), weights zero: load them (``DetectionCheckpointer(model).load(...)``)."""
    recipe, anchors = plain(stitch), plain(anchors)  # instantiate passes OmegaConf containers
    return StitchBackbone(exported_stitch_from_recipe(recipe, lambda a: build_anchor(**anchors[a])))


def _stitched(model: nn.Module) -> StitchedSETR:
    setr = stitched_setr(model)
    if setr is None:
        raise ValueError("export needs an SN-Net segmentor (a StitchedSETR); this model has a single ViT: it is "
                         "deployable as it is")
    return setr


def exported_config(cfg: DictConfig, model: StitchedSETR, stitch_id: int, weights: str) -> DictConfig:
    """The LazyConfig of stitch ``stitch_id`` alone: ``cfg.model`` (the SN-Net's) as a ``SETR`` whose backbone is
    ``build_stitch_backbone``, no auxiliary heads, the SN-Net's training sections dropped and
    ``train.init_checkpoint=weights``."""
    setr = copy.deepcopy(cfg.model)
    setr._target_ = SETR
    setr.pop("stitch_id", None)
    setr.auxiliary_heads = []
    setr.backbone = L(build_stitch_backbone)(anchors=anchor_builds(model.backbone),
                                             stitch=route_recipe(model.backbone, stitch_id))
    return exported_lazy_config(cfg, setr, weights)


def export_segmentor(cfg: DictConfig, model: nn.Module, stitch_id: int, output_dir: str,
                     source: str = "the given model") -> Dict[str, str]:
    """Write the standalone segmentor of stitch ``stitch_id`` of the stitched SETR ``model`` (built from ``cfg``,
    trained weights loaded from ``source``) to ``output_dir/stitch_<ID>/``: the decode head's weights and the
    exported stitch's (LoRA merged); returns ``{"config", "weights"}`` (``snnet_core.d2.export.export_stitched_model``).
    """
    setr = _stitched(model)
    return export_stitched_model(setr, setr.backbone, stitch_id, output_dir, source,
                                 lambda weights: exported_config(cfg, setr, stitch_id, weights), DROPPED,
                                 "backbone.stitch.")
