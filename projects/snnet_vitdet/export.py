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
import os
import tempfile
from typing import Any, Dict, Mapping, Optional, Sequence

import torch
import torch.nn as nn
from detectron2.config import LazyCall as L
from detectron2.config import LazyConfig, instantiate
from detectron2.modeling import Backbone, ShapeSpec
from omegaconf import DictConfig, ListConfig, OmegaConf

from snnet_core import ExportedStitch, build_anchor, export_stitch
from snnet_core.model.anchors import anchor_build
from snnet_core.io.atomic_io import write_atomic
from snnet_core.io.config_io import load_config_file
from snnet_core.model.checkpoint import materialize, plan_from_recipe, recipe_anchors, route_recipe

from .backbone import StitchedViTDetBackbone, prepare_vitdet
from .training import stitched_backbone

__all__ = ["StitchViTDetBackbone", "export_detector", "exported_config",
           "WEIGHTS_NAME", "CONFIG_NAME"]

WEIGHTS_NAME = "model_final.pth"
CONFIG_NAME = "config.yaml"
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
        recipe, anchors = _plain(stitch), _plain(anchors)  # instantiate passes OmegaConf containers
        with torch.device("meta"):
            used = {a: build_anchor(**anchors[a]) for a in recipe_anchors(recipe)}
            prepare_vitdet(list(used.values()), window_size, num_global, use_rel_pos, img_size)
            route = ExportedStitch(plan_from_recipe(recipe, used), recipe["id"], recipe["route"], recipe["kind"])
        self.stitch = materialize(route)
        self._out_features = [out_feature]
        self._out_feature_channels = {out_feature: int(recipe["embed_dims"][1])}
        self._out_feature_strides = {out_feature: int(route.embed_anchor.patch_embed.patch_size[0])}

    @property
    def stitch_id(self) -> int:
        return self.stitch.stitch_id

    def output_shape(self) -> Dict[str, ShapeSpec]:
        name = self._out_features[0]
        return {name: ShapeSpec(channels=self._out_feature_channels[name], stride=self._out_feature_strides[name])}

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        return {self._out_features[0]: self.stitch(x).feature_maps()[0]}


def _plain(value: Any) -> Any:
    """Python containers of an OmegaConf ``DictConfig`` / ``ListConfig`` (other values as they are)."""
    return OmegaConf.to_container(value) if isinstance(value, (DictConfig, ListConfig)) else value


def _stitched(model: nn.Module) -> StitchedViTDetBackbone:
    backbone = stitched_backbone(model)
    if backbone is None:
        raise ValueError("export needs an SN-Net detector (model.backbone.net a StitchedViTDetBackbone); this model "
                         "has a single ViT: it is deployable as it is")
    return backbone


def _check_stitch(backbone: StitchedViTDetBackbone, stitch_id: int, source: str) -> None:
    """``KeyError`` naming ``source`` (the checkpoint) and the ids it holds for a stitch it does not hold."""
    try:
        backbone.space[stitch_id]
    except KeyError as exc:
        raise KeyError(f"cannot export stitch {stitch_id!r}: the SN-Net of {source} does not hold it "
                       f"({exc.args[0]})") from None


def exported_config(cfg: DictConfig, backbone: StitchedViTDetBackbone, stitch_id: int, weights: str) -> DictConfig:
    """The LazyConfig of stitch ``stitch_id`` alone: ``cfg`` (the SN-Net's) with ``model.backbone.net`` a
    ``StitchViTDetBackbone``, the SN-Net's training sections dropped and ``train.init_checkpoint=weights``."""
    builds = [anchor_build(a) for a in backbone.snnet.anchors]
    if any(b is None for b in builds):
        raise ValueError("the SN-Net's anchors were not built by snnet_core.build_anchor with JSON-safe arguments "
                         "(model.backbone.net.fast/slow of the config): the exported config could not rebuild them")
    net_cfg = cfg.model.backbone.net
    defaults = inspect.signature(StitchedViTDetBackbone).parameters
    vitdet = {k: net_cfg.get(k, defaults[k].default) for k in VITDET_ARGS}
    out = DictConfig({})
    out.model = copy.deepcopy(cfg.model)
    out.model.backbone.net = L(StitchViTDetBackbone)(
        anchors=[dict(b, drop_path_rate=0.0) for b in builds], stitch=route_recipe(backbone.snnet, stitch_id),
        **vitdet)
    for section in ("dataloader", "datasets", "train"):
        if section in cfg:
            out[section] = copy.deepcopy(cfg[section])
    if "train" in out:
        out.train.init_checkpoint = weights
        out.train.output_dir = os.path.dirname(weights)
    return out


def _save_config(cfg: DictConfig, path: str) -> None:
    """``LazyConfig.save`` to ``path`` atomically, refusing a config that does not load back from YAML."""
    with tempfile.TemporaryDirectory() as tmp:
        draft = os.path.join(tmp, CONFIG_NAME)
        LazyConfig.save(cfg, draft)
        if os.path.exists(draft + ".pkl") or not os.path.isfile(draft):
            raise ValueError(f"the config of {path} cannot be written as YAML (a value is not serialisable; see the "
                             "log of LazyConfig.save)")
        load_config_file(draft)  # as train_net.py and demo.py read it: a YAML file is data
        with open(draft) as f:
            text = f.read()
    write_atomic(path, lambda f: f.write(text))


def export_detector(cfg: DictConfig, model: nn.Module, stitch_id: int, output_dir: str,
                    source: str = "the given model") -> Dict[str, str]:
    """Write the standalone detector of stitch ``stitch_id`` of the SN-Net detector ``model`` (built from ``cfg``,
    trained weights loaded from ``source``) to ``output_dir/stitch_<ID>/``; returns ``{"config", "weights"}``.

    The exported model is built from the written config and loaded with the written weights (strictly) before
    this returns, so a file that would not load is never left as a finished export.
    """
    backbone = _stitched(model)
    _check_stitch(backbone, stitch_id, source)
    folder = os.path.join(output_dir, f"stitch_{stitch_id}")
    weights, config_path = os.path.join(folder, WEIGHTS_NAME), os.path.join(folder, CONFIG_NAME)
    new_cfg = exported_config(cfg, backbone, stitch_id, weights)
    route = export_stitch(backbone.snnet, stitch_id).eval()
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("backbone.net.")}
    state.update({f"backbone.net.stitch.{k}": v for k, v in route.state_dict().items()})
    state = {k: v.detach().cpu() for k, v in state.items()}
    instantiate(new_cfg.model).load_state_dict(state)  # strict: the config and the weights agree
    stitch = backbone.space[stitch_id]
    payload = {"model": state, "stitch": {"id": stitch.id, "route": stitch.route, "kind": stitch.kind,
                                          "source": str(source)}}
    write_atomic(weights, lambda f: torch.save(payload, f), binary=True)
    _save_config(new_cfg, config_path)
    return {"config": config_path, "weights": weights}
