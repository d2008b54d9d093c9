"""The depth model: a stitched ViT backbone (or one exported stitch) and the DPT head.

``ModelSpec`` holds everything needed to rebuild the architecture (timm anchor names and overrides, LoRA
rank, dense-feature blocks, head sizes); it is stored in checkpoints and exported stitches as primitives.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from snnet_core import FlopsTable, StitchedViT, build_anchor, build_flops_table, count_gflops, run_stitches
from snnet_core.model.anchor_names import check_anchor_names  # noqa: F401 (train.py's)
from snnet_core.model.anchors import use_upstream_layer_math
from snnet_core.model.stitch_space import ROUTE_TYPES

from .head import DEFAULT_POST_PROCESS_CHANNELS, DPTHead

DEIT3_L_OUT_INDICES = (4, 11, 17, 23)


def default_out_indices(depth: int) -> Tuple[int, ...]:
    """Dense-feature blocks of the slow anchor: (4, 11, 17, 23) for 24 blocks (DeiT3-L), else the last
    block of each quarter (e.g. (1, 3, 5, 7) for 8 blocks)."""
    if depth == 24:
        return DEIT3_L_OUT_INDICES
    if depth < 4:
        raise ValueError(f"DPT needs 4 dense features: the slow anchor has only {depth} blocks")
    return tuple(depth * (k + 1) // 4 - 1 for k in range(4))


@dataclasses.dataclass
class ModelSpec:
    """Architecture of a stitched DPT depth model.

    Attributes:
        anchors: timm names of the (fast, slow) anchors, e.g. DeiT3-S and DeiT3-L.
        pos_embed_size: ``(H, W)`` image size whose patch grid the position-embedding table is stored and
            trained at: the checkpoints' 224 (a 14x14 table, as upstream's DeiT3 keeps it); every input size
            (training crops, the 480x640 evaluation) gets it resampled at each forward.
        anchor_overrides: extra ``VisionTransformer`` arguments per anchor (tiny test configurations).
        drop_path: stochastic depth rate per anchor.
        lora_rank: LoRA SL rank of the stitching layers (paper: 4 for depth).
        lora_alpha: LoRA SL scaling numerator (update scaled by ``lora_alpha / lora_rank``; upstream: 1).
        backbone_lora_rank: rank of LoRA on the anchors' attention and MLP linear layers, the anchors otherwise
            frozen (backbone PET, SN-Netv2 Fig. 12a); 0: off, the anchors train in full (the paper's depth recipe).
        route_types: the stitch space (all five: SN-Netv2; ``("anchor", "FS")``: SN-Netv1's 13 stitches for
            DeiT3-S/L); a stitch keeps its id in any of them.
        upstream_layers: anchors compute the layers of SN-Netv2's depth code (``StitchedViT(upstream_layers)``)
            instead of standard DeiT3 blocks.
        out_indices: slow-anchor blocks giving the 4 dense features (default ``default_out_indices``).
        post_process_channels / features: DPT head sizes.
        min_depth / max_depth: metric depth range in metres.
    """

    anchors: Tuple[str, str] = ("deit3_small_patch16_224", "deit3_large_patch16_224")
    pos_embed_size: Tuple[int, int] = (224, 224)
    anchor_overrides: Tuple[Dict[str, Any], Dict[str, Any]] = ({}, {})
    drop_path: Tuple[float, float] = (0.0, 0.0)
    lora_rank: int = 4
    lora_alpha: float = 1.0
    backbone_lora_rank: int = 0
    route_types: Tuple[str, ...] = ROUTE_TYPES
    upstream_layers: bool = False
    out_indices: Optional[Tuple[int, ...]] = None
    post_process_channels: Tuple[int, ...] = DEFAULT_POST_PROCESS_CHANNELS
    features: int = 256
    min_depth: float = 1e-3
    max_depth: float = 10.0

    def to_dict(self) -> Dict[str, Any]:
        """Primitives only (lists/dicts/str/numbers): safe in a ``weights_only`` checkpoint."""
        data = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "ModelSpec":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown model spec fields {sorted(unknown)}")
        data = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**data)

    def build_anchor(self, which: int, pretrained: Optional[str] = None, **extra: Any) -> nn.Module:
        """Anchor ``which`` (0 fast, 1 slow) as a timm ViT; ``extra`` overrides the stored overrides."""
        overrides = dict(self.anchor_overrides[which], **extra)
        overrides.setdefault("drop_path_rate", self.drop_path[which])
        anchor = build_anchor(self.anchors[which], img_size=self.pos_embed_size, pretrained=pretrained, **overrides)
        if self.upstream_layers:
            use_upstream_layer_math(anchor)
        return anchor

    def build_head(self, in_channels: int) -> DPTHead:
        return DPTHead(in_channels, self.post_process_channels, self.features, self.min_depth, self.max_depth)


class DPTDepthModel(nn.Module):
    """``backbone`` (a ``StitchedViT`` running its selected stitch, or an ``ExportedStitch``) + ``DPTHead``.

    ``forward(images (B, 3, H, W))`` -> metric depth ``(B, 1, H, W)``; ``H`` and ``W`` must be multiples of
    the patch size.
    """

    def __init__(self, backbone: nn.Module, head: DPTHead, patch_size: int):
        super().__init__()
        self.backbone, self.head, self.patch_size = backbone, head, int(patch_size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        image_size = self._image_size(images)
        out = self.backbone(images)
        return self.head(out.features, out.grid, out.num_prefix_tokens, image_size)

    def predict_stitches(self, images: torch.Tensor, stitch_ids: Sequence[int]) -> Iterator[Tuple[int, torch.Tensor]]:
        """``(stitch id, depth (B, 1, H, W))`` for every stitch of ``stitch_ids`` (``backbone`` a ``StitchedViT``),
        in ``run_stitches`` order: each shared route prefix runs once, and so does the head's reassembly of a
        dense feature that stitches share (``run_stitches`` hands them the same tensor); each depth map is the one
        ``forward`` gives with that stitch selected (same modules on the same inputs)."""
        image_size = self._image_size(images)
        # per stage: (the last feature reassembled, its map); stitches sharing a feature come one after another
        reassembled: List[Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]] = [(None, None)] * len(
            self.head.reassemble)
        for stitch_id, out in run_stitches(self.backbone, images, stitch_ids):
            for stage, feature in enumerate(out.features):
                if reassembled[stage][0] is not feature:
                    reassembled[stage] = (feature, self.head.reassemble_stage(stage, feature, out.grid,
                                                                              out.num_prefix_tokens))
            yield stitch_id, self.head.fuse([m for _, m in reassembled], image_size)

    def _image_size(self, images: torch.Tensor) -> Tuple[int, int]:
        h, w = images.shape[-2:]
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(f"input {h}x{w} is not a multiple of the patch size {self.patch_size}")
        return h, w


def build_model(spec: ModelSpec, pretrained: Sequence[Optional[str]] = (None, None)) -> DPTDepthModel:
    """The SN-Net DPT model of ``spec`` with anchors loaded from the local checkpoint files ``pretrained``."""
    fast, slow = (spec.build_anchor(i, pretrained[i]) for i in range(2))
    out_indices = spec.out_indices or default_out_indices(len(slow.blocks))
    snnet = StitchedViT(fast, slow, lora_rank=spec.lora_rank, lora_alpha=spec.lora_alpha,
                        out_indices=out_indices, upstream_layers=spec.upstream_layers,
                        backbone_lora_rank=spec.backbone_lora_rank, route_types=spec.route_types)
    return DPTDepthModel(snnet, spec.build_head(snnet.out_channels), snnet.patch_size)


class _HeadProbe(nn.Module):
    """``forward(*features)``: the head on fixed grid/image size, for an fvcore trace."""

    def __init__(self, head: DPTHead, grid: Tuple[int, int], image_size: Tuple[int, int]):
        super().__init__()
        self.head, self.grid, self.image_size = head, grid, image_size

    def forward(self, *features: torch.Tensor) -> torch.Tensor:
        return self.head(list(features), self.grid, 1, self.image_size)


def head_gflops(head: DPTHead, image_size: Tuple[int, int], patch_size: int) -> float:
    """GFLOPs (fvcore, multiply-adds) of the DPT head on one ``image_size`` input: the same for every stitch,
    since every stitch gives 4 features at the slow width."""
    grid = (image_size[0] // patch_size, image_size[1] // patch_size)
    device = next(head.parameters()).device
    features: List[torch.Tensor] = [
        torch.zeros(1, 1 + grid[0] * grid[1], head.in_channels, device=device) for _ in head.reassemble
    ]
    return count_gflops(_HeadProbe(head, grid, tuple(image_size)), tuple(features))


def depth_flops_table(model: DPTDepthModel, image_size: Tuple[int, int], cache_dir: Optional[str] = None) -> FlopsTable:
    """GFLOPs and parameters of every stitch + DPT head at ``image_size`` (the engine's table, cached)."""
    snnet: StitchedViT = model.backbone
    head_cost = head_gflops(model.head, image_size, snnet.patch_size)
    head_params = sum(p.numel() for p in model.head.parameters())
    return build_flops_table(
        snnet, image_size, mode="features", head_gflops=head_cost, head_params=head_params,
        # keyed by the head's cost, not its arguments: a cached table never outlives a change of head layers
        head_key=f"dpt-p{head_params}-g{head_cost:.6f}",
        cache_dir=cache_dir,
    )
