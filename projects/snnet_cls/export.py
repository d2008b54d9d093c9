"""A deployable single stitch as a standalone timm-style classifier, saved and loaded without the SN-Net; and
``load_classifier``, the one call from any classification checkpoint (SN-Net or exported stitch) to a model.

The file of an exported stitch (``weights_only``-safe) holds the ``ModelSpec``, the route recipe of the stitch
(``snnet_core.model.checkpoint.route_recipe``), timm's ``pretrained_cfg`` (the evaluation transform), the class
names and the weights. ``load_exported_classifier`` rebuilds only the deployed modules
(``snnet_core.model.rebuild``): the SN-Net is never built.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Optional, Sequence

import torch

from snnet_core import StitchedViT, export_stitch
from snnet_core.io.atomic_io import write_atomic
from snnet_core.model.checkpoint import FORMAT as SNNET_FORMAT
from snnet_core.model.checkpoint import load_snnet_state, read_checkpoint_file, route_recipe
from snnet_core.model.rebuild import exported_stitch_from_recipe

from .model import ModelSpec, StitchClassifier, build_model, pretrained_cfg

FORMAT = "snnet-cls-stitch-v1"


def export_classifier(net: StitchedViT, spec: ModelSpec, stitch_id: int, crop_ratio: float = 1.0
                      ) -> StitchClassifier:
    """Standalone ``StitchClassifier`` of one stitch of ``net`` (LoRA merged, only its modules), in eval mode."""
    return StitchClassifier(export_stitch(net, stitch_id), pretrained_cfg(spec, crop_ratio)).eval()


def save_exported_classifier(path: str, net: StitchedViT, spec: ModelSpec, stitch_id: int,
                             classes: Sequence[str] = (), crop_ratio: float = 1.0) -> StitchClassifier:
    """Export stitch ``stitch_id`` of ``net`` to ``path`` (atomically), with its ``classes`` names; returns it."""
    model = export_classifier(net, spec, stitch_id, crop_ratio)
    state = {"format": FORMAT, "spec": spec.to_dict(), "stitch": route_recipe(net, stitch_id),
             "pretrained_cfg": _primitive(model.pretrained_cfg), "classes": list(classes),
             "model": model.state_dict()}
    write_atomic(path, lambda f: torch.save(state, f), binary=True)
    return model


def _primitive(cfg: Dict[str, Any]) -> Dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()}


def _exported_model(state: Dict[str, Any], map_location: str | torch.device) -> StitchClassifier:
    spec = ModelSpec.from_dict(state["spec"])
    stitch = exported_stitch_from_recipe(state["stitch"], lambda a: spec.build_anchor(a, drop_path_rate=0.0),
                                         map_location)
    cfg = {k: tuple(v) if isinstance(v, list) else v for k, v in state["pretrained_cfg"].items()}
    cfg.update(first_conv=cfg["first_conv"].removeprefix("stitch."),
               classifier=cfg["classifier"].removeprefix("stitch."))
    model = StitchClassifier(stitch, cfg)
    model.load_state_dict(state["model"])
    return model.eval()


@dataclasses.dataclass
class LoadedClassifier:
    """What ``load_classifier`` read: ``model`` (a ``StitchedViT`` running its selected stitch, or an exported
    ``StitchClassifier``), the class names (empty if the file has none), and the evaluation transform's input size
    and crop ratio."""

    model: torch.nn.Module
    classes: List[str]
    input_size: int
    crop_ratio: float

    @property
    def stitch(self) -> str:
        """``stitch 5 (L[0:2] -> S[1:4])``: the stitch the model runs."""
        if isinstance(self.model, StitchClassifier):
            return f"stitch {self.model.stitch.stitch_id} ({self.model.stitch.route})"
        return f"stitch {self.model.stitch_id} ({self.model.space[self.model.stitch_id].route})"

    @torch.no_grad()
    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """``images (B, 3, H, W)`` normalised as the evaluation -> logits ``(B, num_classes)``."""
        if isinstance(self.model, StitchClassifier):
            return self.model(images)
        return self.model.classify(images)


def load_classifier(path: str, stitch_id: Optional[int] = None, map_location: str | torch.device = "cpu"
                    ) -> LoadedClassifier:
    """The classifier in a checkpoint file, ready for inference (eval mode, on ``map_location``):

    - a training checkpoint of ``train.py``: the whole SN-Net (``StitchedViT``, rebuilt from the stored
      ``ModelSpec``); ``stitch_id`` selects the stitch it runs (default: the slow anchor);
    - an exported stitch (``train.py --export-stitch ID``): the ``StitchClassifier``; ``stitch_id``, if given, must
      be its id.

    Raises ``FileNotFoundError`` / ``RuntimeError`` naming the file for a missing, corrupt or foreign one,
    ``KeyError`` for a stitch id the model does not hold.
    """
    state = read_checkpoint_file(path, "classification checkpoint", map_location)
    kind = state.get("format") if isinstance(state, dict) else None
    if kind == FORMAT:
        model = _exported_model(state, map_location)
        if stitch_id is not None and stitch_id != model.stitch.stitch_id:
            raise KeyError(f"{path} is the exported stitch {model.stitch.stitch_id} ({model.stitch.route}), not stitch "
                           f"{stitch_id}: export stitch {stitch_id} (train.py --eval-only --export-stitch {stitch_id}) "
                           "or load the SN-Net's training checkpoint")
        cfg = model.pretrained_cfg
        return LoadedClassifier(model, list(state.get("classes", [])), int(cfg["input_size"][-1]),
                                float(cfg["crop_pct"]))
    if kind != SNNET_FORMAT or "spec" not in state or "classes" not in state:
        raise RuntimeError(f"{path!r} is neither a training checkpoint of projects/snnet_cls/train.py nor a stitch it "
                           "exported (--export-stitch): pass <train.output_dir>/model_final.pth or "
                           "<train.output_dir>/stitch_<ID>/model_final.pth")
    spec = ModelSpec.from_dict(state["spec"])
    net = build_model(spec).to(map_location)
    load_snnet_state(state, net, path)
    if stitch_id is not None:
        net.set_stitch(stitch_id)
    return LoadedClassifier(net.eval(), list(state["classes"]), int(state.get("input_size", spec.img_size[0])),
                            float(state.get("eval_crop_ratio", 1.0)))
