"""The classifier: a stitched ViT whose every stitch ends in the final norm and classifier of the anchor it ends
in (SN-Netv2's classification code), and one exported stitch as a standalone timm-style classifier.

``ModelSpec`` holds everything needed to rebuild the architecture (timm anchor names and overrides, classes,
LoRA rank, route types); it is stored in checkpoints and exported stitches as primitives.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from snnet_core import FlopsTable, StitchedViT, build_anchor, build_flops_table
from snnet_core.model.export import ExportedStitch
from snnet_core.model.stitch_space import ROUTE_TYPES


@dataclasses.dataclass
class ModelSpec:
    """Architecture of a stitched classifier.

    Attributes:
        anchors: timm names of the anchors, smallest first: the (fast, slow) pair, e.g. DeiT3-S and DeiT3-L; or,
            in SN-Netv1's sliding-window space (``window``), two or more of one depth, e.g. DeiT-Ti, S and B.
        num_classes: classifier outputs of every anchor (1000 for ImageNet-1K).
        img_size: ``(H, W)`` the anchors' position tables are stored at (224: upstream's ``input_size``).
        anchor_overrides: extra ``VisionTransformer`` arguments per anchor (tiny configurations).
        drop_path: stochastic depth rate per anchor (upstream ``anchor_drop_path``).
        lora_rank: LoRA SL rank of the stitching layers (0: fully trained layers, SN-Netv1).
        lora_alpha: LoRA SL scale numerator (update scaled by ``lora_alpha / lora_rank``; upstream: 1).
        backbone_lora_rank: rank of LoRA on the anchors' attention and MLP linear layers, the anchors frozen but for
            their classifiers (backbone PET, SN-Netv2 Fig. 12a); 0: off, the anchors train in full (the paper's).
        route_types: the stitch space (all four: SN-Netv2; ``("anchor", "FS")``: SN-Netv1).
        window: ``(kernel, stride)`` of SN-Netv1's sliding-window space with nearest stitching (``StitchSpace``);
            ``None``: the two-way space of two anchors (three or more anchors get SN-Netv1's default, ``(2, 1)``).
    """

    anchors: Tuple[str, ...] = ("deit3_small_patch16_224", "deit3_large_patch16_224")
    num_classes: int = 1000
    img_size: Tuple[int, int] = (224, 224)
    anchor_overrides: Tuple[Dict[str, Any], ...] = ({}, {})
    drop_path: Tuple[float, ...] = (0.0, 0.0)
    lora_rank: int = 64
    lora_alpha: float = 1.0
    backbone_lora_rank: int = 0
    route_types: Tuple[str, ...] = ROUTE_TYPES
    window: Optional[Tuple[int, int]] = None

    def to_dict(self) -> Dict[str, Any]:
        """Primitives only (lists/dicts/str/numbers): safe in a ``weights_only`` checkpoint."""
        data = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "ModelSpec":
        unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown model spec fields {sorted(unknown)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})

    def build_anchor(self, which: int, pretrained: Optional[str] = None, **extra: Any) -> nn.Module:
        """Anchor ``which`` (0 the smallest) as a timm ViT with a ``num_classes`` classifier; ``extra`` overrides
        the stored overrides."""
        overrides = dict(self.anchor_overrides[which], **extra)
        overrides.setdefault("drop_path_rate", self.drop_path[which])
        return build_anchor(self.anchors[which], img_size=self.img_size, pretrained=pretrained,
                            num_classes=self.num_classes, **overrides)


def build_model(spec: ModelSpec, pretrained: Optional[Sequence[Optional[str]]] = None) -> StitchedViT:
    """The SN-Net of ``spec`` (anchors from the ``pretrained`` checkpoints, one per anchor, or random), the largest
    anchor selected. ``net.classify(images (B, 3, H, W), stitch_id)`` -> logits ``(B, num_classes)``."""
    pretrained = pretrained or [None] * len(spec.anchors)
    anchors = [spec.build_anchor(i, pretrained[i]) for i in range(len(spec.anchors))]
    return StitchedViT(*anchors, lora_rank=spec.lora_rank, lora_alpha=spec.lora_alpha, route_types=spec.route_types,
                       backbone_lora_rank=spec.backbone_lora_rank, window=spec.window)


def classifier_flops_table(net: StitchedViT, input_size: Sequence[int], cache_dir: Optional[str] = None
                           ) -> FlopsTable:
    """GFLOPs and parameters of every stitch with its final norm and classifier, at ``input_size`` ``(H, W)``
    (fvcore: one multiply-add is one FLOP, as upstream's table counts)."""
    return build_flops_table(net, tuple(input_size), mode="classify", cache_dir=cache_dir)


class SelectedStitch(nn.Module):
    """``forward(images (B, 3, H, W))`` -> logits ``(B, num_classes)`` of the SN-Net's selected stitch: the module
    DDP wraps during training (``StitchedViT.forward`` gives tokens, not logits)."""

    def __init__(self, snnet: StitchedViT):
        super().__init__()
        self.snnet = snnet

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.snnet.classify(images)


def pretrained_cfg(spec: ModelSpec, crop_pct: float = 1.0) -> Dict[str, Any]:
    """timm's ``pretrained_cfg`` of an exported stitch: the evaluation transform the project scores it with (resize
    to ``size / crop_pct`` bicubic, centre crop, ImageNet mean/std), so ``timm.data.resolve_data_config`` and
    ``create_transform`` rebuild it."""
    return {"input_size": (3, *spec.img_size), "interpolation": "bicubic", "crop_pct": float(crop_pct),
            "crop_mode": "center", "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD,
            "num_classes": spec.num_classes, "first_conv": "embed_anchor.patch_embed.proj",
            "classifier": "finish_anchor.head"}


class StitchClassifier(nn.Module):
    """One stitch as a standalone classifier with timm's interface: ``forward_features(images (B, 3, H, W))`` ->
    normalised tokens ``(B, 1 + H*W/p², C)``, ``forward_head(tokens, pre_logits=False)`` -> logits
    ``(B, num_classes)`` (or the pooled ``(B, C)``), ``forward = forward_head(forward_features(x))``; attributes
    ``num_classes``, ``num_features`` and ``pretrained_cfg`` (``default_cfg``), the evaluation transform."""

    def __init__(self, stitch: ExportedStitch, cfg: Dict[str, Any]):
        super().__init__()
        self.stitch = stitch
        head = stitch.finish_anchor
        self.num_classes = int(head.num_classes)
        self.num_features = int(head.num_features)
        self.pretrained_cfg = dict(cfg, first_conv="stitch." + cfg["first_conv"],
                                   classifier="stitch." + cfg["classifier"])
        self.default_cfg = self.pretrained_cfg

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        return self.stitch.finish_anchor.norm(self.stitch(images, with_features=False).tokens)

    def forward_head(self, tokens: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.stitch.finish_anchor.forward_head(tokens, pre_logits=pre_logits)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(images))

