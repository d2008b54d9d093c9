"""Export one stitch of a trained SN-Net detector as a standalone detectron2 model.

``export_detector(cfg, model, stitch_id, output_dir)`` writes ``output_dir/stitch_<ID>/``:

- ``model_final.pth``: ``{"model": state_dict, "stitch": {...}}``, the weights of a ``GeneralizedRCNN`` whose
  backbone's ``net`` is a ``StitchViTDetBackbone``: only the stitch's blocks and merged stitching layers (LoRA
  folded in), with the SN-Net's trained pyramid, RPN and ROI heads;
- ``config.yaml``: its LazyConfig (``LazyConfig.save``): ``model`` (the SN-Net's, with ``model.backbone.net``
  replaced), ``dataloader`` / ``datasets`` / ``train`` of the SN-Net's config with ``train.init_checkpoint``
  pointing at the weights. It loads without the SN-Net::

      cfg = load_config_file("output/x/stitch_5/config.yaml")  # snnet_core.io.config_io: read as data
      model = instantiate(cfg.model).eval()
      DetectionCheckpointer(model).load(cfg.train.init_checkpoint)

  and ``train_net.py --eval-only --config-file .../config.yaml`` evaluates it as a plain detector.

``snnet_core.select.resolve_export_selection`` turns ``--export-stitch``'s value into stitch ids.
"""
from __future__ import annotations

import copy
import inspect
from typing import Any, Dict, Mapping, Optional, Sequence

import torch
import torch.nn as nn
from detectron2.config import LazyCall as L
from detectron2.modeling import Backbone, ShapeSpec
from omegaconf import DictConfig

from snnet_core import build_anchor
from snnet_core.d2.export import (
    CONFIG_NAME, WEIGHTS_NAME, anchor_builds, export_stitched_model, exported_lazy_config, plain,
)
from snnet_core.model.checkpoint import route_recipe
from snnet_core.model.rebuild import exported_stitch_from_recipe

from .backbone import StitchedViTDetBackbone, prepare_vitdet
from .training import stitched_backbone

__all__ = ["StitchViTDetBackbone", "export_detector", "exported_config",
           "WEIGHTS_NAME", "CONFIG_NAME"]

VITDET_ARGS = ("window_size", "num_global", "use_rel_pos", "img_size", "out_feature")  # StitchedViTDetBackbone's


class StitchViTDetBackbone(Backbone):
    """One stitch of a ``StitchedViTDetBackbone``, alone: same ``output_shape()`` and outputs for that stitch.

    Args:
        anchors: ``build_anchor`` keyword arguments of the (fast, slow) anchors (``snnet_core.model.anchors.anchor_build``
            of the SN-Net's anchors); only the anchors the route uses are built, on the meta device (no memory),
            and only the route's blocks are kept.
        stitch: ``snnet_core.model.checkpoint.route_recipe`` of the stitch (blocks, stitching layers, taps).
        window_size, num_global, use_rel_pos, img_size, out_feature: the ViTDet settings of the SN-Net's
            backbone (``StitchedViTDetBackbone``'s arguments), so every block keeps its attention pattern.

    Weights start at zero: load them (``DetectionCheckpointer(model).load(...)``).
    ``forward``: images ``(B, 3, H, W)`` -> ``{out_feature: (B, C_large, H/16, W/16)}``.
    """

    def __init__(self, anchors: Sequence[Mapping[str, Any]], stitch: Mapping[str, Any], window_size: int = 14,
                 num_global: int = 4, use_rel_pos: bool = True, img_size: Optional[int] = None,
                 out_feature: str = "last_feat"):
        super().__init__()
        recipe, anchors = plain(stitch), plain(anchors)  # instantiate passes OmegaConf containers
        self.stitch = exported_stitch_from_recipe(
            recipe, lambda a: build_anchor(**anchors[a]),
            prepare=lambda used: prepare_vitdet(used, window_size, num_global, use_rel_pos, img_size))
        self._out_features = [out_feature]
        self._out_feature_channels = {out_feature: int(recipe["embed_dims"][1])}
        self._out_feature_strides = {out_feature: int(self.stitch.embed_anchor.patch_embed.patch_size[0])}

    @property
    def stitch_id(self) -> int:
        return self.stitch.stitch_id

    def output_shape(self) -> Dict[str, ShapeSpec]:
        name = self._out_features[0]
        return {name: ShapeSpec(channels=self._out_feature_channels[name], stride=self._out_feature_strides[name])}

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        return {self._out_features[0]: self.stitch(x).feature_maps()[0]}


def _stitched(model: nn.Module) -> StitchedViTDetBackbone:
    backbone = stitched_backbone(model)
    if backbone is None:
        raise ValueError("export needs an SN-Net detector (model.backbone.net a StitchedViTDetBackbone); this model "
                         "has a single ViT: it is deployable as it is")
    return backbone


def exported_config(cfg: DictConfig, backbone: StitchedViTDetBackbone, stitch_id: int, weights: str) -> DictConfig:
    """The LazyConfig of stitch ``stitch_id`` alone: ``cfg`` (the SN-Net's) with ``model.backbone.net`` a
    ``StitchViTDetBackbone``, the SN-Net's training sections dropped and ``train.init_checkpoint=weights``."""
    net_cfg = cfg.model.backbone.net
    defaults = inspect.signature(StitchedViTDetBackbone).parameters
    vitdet = {k: net_cfg.get(k, defaults[k].default) for k in VITDET_ARGS}
    model = copy.deepcopy(cfg.model)
    model.backbone.net = L(StitchViTDetBackbone)(
        anchors=anchor_builds(backbone.snnet), stitch=route_recipe(backbone.snnet, stitch_id), **vitdet)
    return exported_lazy_config(cfg, model, weights)


def export_detector(cfg: DictConfig, model: nn.Module, stitch_id: int, output_dir: str,
                    source: str = "the given model") -> Dict[str, str]:
    """Write the standalone detector of stitch ``stitch_id`` of the SN-Net detector ``model`` (built from ``cfg``,
    trained weights loaded from ``source``) to ``output_dir/stitch_<ID>/``: its weights with the exported stitch's
    (LoRA merged) for the SN-Net's; returns ``{"config", "weights"}`` (``snnet_core.d2.export.export_stitched_model``).
    """
    backbone = _stitched(model)
    return export_stitched_model(model, backbone.snnet, stitch_id, output_dir, source,
                                 lambda weights: exported_config(cfg, backbone, stitch_id, weights), ("backbone.net.",),
                                 "backbone.net.stitch.")
