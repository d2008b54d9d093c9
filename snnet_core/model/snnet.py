"""``StitchedViT``: timm ViT anchors (two, or more in SN-Netv1's sliding-window space), their stitching layers and the
stitch space in one module."""
from __future__ import annotations

from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from timm.models.vision_transformer import VisionTransformer

from snnet_core.model.anchors import anchor_build, anchor_signature, build_anchor, check_anchor_pair, use_upstream_layer_math
from snnet_core.model.backbone_lora import add_backbone_lora
from snnet_core.model.route import RouteOutput, RoutePlan, Tap, classify, embed_images, run_layer, run_plan
from snnet_core.model.stitch_space import FAST, LayerSpec, Stitch, StitchSpace, map_out_indices_to_fast
from snnet_core.model.stitching_layers import StitchingLayer

ANCHOR_BUILDS = "anchor_builds"  # config() key: how to rebuild each anchor; not part of the architecture check


class StitchedViT(nn.Module):
    """SN-Net backbone: every stitch of its anchors, one selected at a time.

    Args:
        *anchors: the anchors, smallest first. Two: the small (fast, e.g. DeiT3-S) and the large (slow, e.g.
            DeiT3-L, at least as deep) anchor of SN-Netv2's two-way space. Three or more (or two with
            ``window``): SN-Netv1's sliding-window space with nearest stitching (e.g. DeiT-Ti/S/B, one depth,
            widths not decreasing).
        lora_rank: LoRA SL rank of the stitching layers (0: fully trainable layers, as SN-Netv1).
        lora_alpha: LoRA SL scale numerator; the low-rank update is scaled by ``lora_alpha / lora_rank``
            (default 1, as SN-Netv2's released code).
        upstream_layers: compute the anchors' blocks as SN-Netv2's depth code does (its mmcv FFN adds its
            input, LayerNorm eps 1e-5; see ``anchors.use_upstream_layer_math``) instead of DeiT3's blocks.
            Needed to reproduce that code's outputs from its checkpoints; off by default (the paper's DeiT3).
        out_indices: the largest anchor's blocks giving dense features (e.g. (4, 11, 17, 23) for DeiT3-L);
            the other anchors' are mapped to the same relative depth. Default: the last block only.
        route_types: route types of the space (default: every type of the space).
        window: ``(kernel, stride)`` of SN-Netv1's sliding window (``StitchSpace``); default: two-way for two
            anchors, ``(2, 1)`` for more.
        backbone_lora_rank: rank of LoRA on every anchor block's attention and MLP linear layers, the anchors
            otherwise frozen (backbone PET, SN-Netv2 Fig. 12a; ``snnet_core.model.backbone_lora``); 0: off, the
            anchors train in full.

    The selected stitch (``stitch_id``, default the largest anchor) is used by ``forward`` unless a call
    passes another. Dense features always come at the largest anchor's width: in the two-way space a feature
    read in the fast anchor goes through the small-to-large stitching layer of its block; in the sliding-window
    space, whose layers are shared by a window's pairs, through a projection of its own (``feature_proj``, one per
    smaller anchor and stage, LS-initialised like the stitching layers). A window route that re-runs a stage's
    block reads the later run; one that jumps over the stage reads the stitching layer's output.
    """

    def __init__(
        self,
        *anchors: VisionTransformer,
        lora_rank: int = 0,
        out_indices: Optional[Sequence[int]] = None,
        route_types: Optional[Iterable[str]] = None,
        lora_alpha: float = 1.0,
        upstream_layers: bool = False,
        backbone_lora_rank: int = 0,
        window: Optional[Sequence[int]] = None,
    ):
        super().__init__()
        if len(anchors) < 2:
            raise ValueError(f"an SN-Net stitches at least two anchors, got {len(anchors)}")
        for front, end in zip(anchors, anchors[1:]):
            check_anchor_pair(front, end)
        self.anchors = nn.ModuleList(anchors)
        depths = [len(a.blocks) for a in anchors]
        self.space = StitchSpace(*depths, route_types=route_types, window=window)
        dims = [a.embed_dim for a in anchors]
        if self.space.window is not None and dims != sorted(dims):
            raise ValueError(f"nearest stitching needs the anchors ordered by size, smallest first; their widths are "
                             f"{dims}: pass them in increasing width")
        self.lora_rank, self.lora_alpha = lora_rank, float(lora_alpha)
        self.stitch_s2l, self.stitch_l2s = (nn.ModuleList(
            StitchingLayer(dims[spec.source], dims[spec.target], lora_rank, lora_alpha)
            for spec in self.space.layers if spec.direction == direction) for direction in ("s2l", "l2s"))
        self.out_indices = tuple(out_indices) if out_indices is not None else (depths[-1] - 1,)
        self.anchor_out_indices: Tuple[Tuple[int, ...], ...] = tuple(
            map_out_indices_to_fast(self.out_indices, depth, depths[-1]) for depth in depths[:-1]) + (self.out_indices,)
        self.fast_out_indices = self.anchor_out_indices[FAST]
        if self.space.window is not None:
            self.feature_proj = nn.ModuleList(
                StitchingLayer(dims[spec.source], dims[spec.target], lora_rank, lora_alpha)
                for spec in self._projection_specs())
        self.stitch_id = self.space.anchor_ids()[-1]
        self.backbone_lora_rank = int(backbone_lora_rank)
        if self.backbone_lora_rank:
            for anchor in self.anchors:
                add_backbone_lora(anchor, self.backbone_lora_rank)
        self.upstream_layers = False
        if upstream_layers:
            self.use_upstream_layers()

    # ----------------------------------------------------------------------------------------------
    @property
    def embed_dims(self) -> tuple:
        """Each anchor's width, smallest anchor first ((fast, slow) for two anchors)."""
        return tuple(a.embed_dim for a in self.anchors)

    @property
    def out_channels(self) -> int:
        """Width of every dense feature (the largest anchor's)."""
        return self.anchors[-1].embed_dim

    @property
    def patch_size(self) -> int:
        return int(self.anchors[FAST].patch_embed.patch_size[0])

    @property
    def num_prefix_tokens(self) -> int:
        return int(self.anchors[FAST].num_prefix_tokens)

    def set_stitch(self, stitch_id: int) -> Stitch:
        """Select the stitch used by ``forward``; raises ``KeyError`` for an unknown id and ``TypeError`` for a
        value that is not an integer id (``True``, ``3.0``, ``"3"``)."""
        stitch = self.space[stitch_id]
        self.stitch_id = stitch.id
        return stitch

    def use_upstream_layers(self) -> None:
        """Switch both anchors to the layer math of SN-Netv2's depth code, in place (recorded in ``config()``)."""
        for anchor in self.anchors:
            use_upstream_layer_math(anchor)
        self.upstream_layers = True

    def stitching_layer(self, direction: str, position: int) -> StitchingLayer:
        return (self.stitch_s2l if direction == "s2l" else self.stitch_l2s)[position]

    def _projection_specs(self) -> List[LayerSpec]:
        """Sliding-window space: the dense-feature projection of each smaller anchor and stage (``feature_proj``,
        index ``anchor * stages + stage``), fit to the largest anchor's output at the same depth."""
        last, stages = self.space.num_anchors - 1, len(self.out_indices)
        return [LayerSpec("proj", a * stages + s, a, last, ((self.anchor_out_indices[a][s], self.out_indices[s]),))
                for a in range(last) for s in range(stages)]

    def layer_specs(self) -> List[LayerSpec]:
        """Every layer LS init fits: the space's stitching layers, then the dense-feature projections."""
        return list(self.space.layers) + (self._projection_specs() if self.space.window is not None else [])

    def _projection(self, anchor: int, stage: int, index: int) -> Tuple[Optional[nn.Module], Optional[str]]:
        """The layer mapping ``anchor``'s features of ``stage`` (its block ``index``) to the largest width."""
        if anchor == self.space.num_anchors - 1:
            return None, None
        if self.space.window is None:  # fast block b is stitching position b (fast depth <= slow depth)
            return self.stitch_s2l[index], f"stitch_s2l.{index}"
        position = anchor * len(self.out_indices) + stage
        return self.feature_proj[position], f"feature_proj.{position}"

    def config(self) -> Dict[str, Any]:
        """Architecture description stored in checkpoints and used to key caches.

        ``anchors`` (each anchor's signature) and the constructor's arguments describe the architecture;
        ``anchor_builds`` says how to build each anchor again (``build_anchor``'s arguments, ``None`` for an anchor
        made otherwise), which ``from_config`` (and so ``load_snnet(path)``) needs.
        """
        config = {
            "anchors": [anchor_signature(a) for a in self.anchors],
            "lora_rank": self.lora_rank,
            "lora_alpha": self.lora_alpha,
            "out_indices": list(self.out_indices),
            "route_types": list(self.space.route_types),
            "upstream_layers": self.upstream_layers,
            "backbone_lora_rank": self.backbone_lora_rank,
            ANCHOR_BUILDS: [anchor_build(a) for a in self.anchors],
        }
        if self.space.window is not None:  # only then: two-way configs (and caches keyed by them) stay as they were
            config["window"] = list(self.space.window)
        return config

    @classmethod
    def from_config(cls, config: Dict[str, Any]) -> "StitchedViT":
        """A new SN-Net (random weights) of the architecture ``config()`` describes.

        Raises ``ValueError`` when an anchor was not built by ``build_anchor`` with JSON-safe arguments (or the
        config predates ``anchor_builds``), or when a rebuilt anchor does not match its recorded signature.
        """
        builds = config.get(ANCHOR_BUILDS) or [None] * len(config["anchors"])
        if any(build is None for build in builds):
            names = ("fast", "slow") if len(builds) == 2 else [f"A{i}" for i in range(len(builds))]
            which = [name for name, build in zip(names, builds) if build is None]
            raise ValueError(f"the SN-Net config does not say how to build its {' and '.join(which)} anchor (built "
                             "without snnet_core.build_anchor, with an override JSON cannot hold, or saved before "
                             "anchor builds were recorded): build the SN-Net yourself and pass it, "
                             "load_snnet(path, net)")
        anchors = [build_anchor(**build) for build in builds]
        for anchor, signature, build in zip(anchors, config["anchors"], builds):
            if anchor_signature(anchor) != signature:
                raise ValueError(f"build_anchor({build}) gives {anchor_signature(anchor)}, not the recorded "
                                 f"anchor {signature} (another timm version?): build the SN-Net yourself and pass "
                                 "it, load_snnet(path, net)")
        return cls(*anchors, lora_rank=config["lora_rank"], out_indices=config["out_indices"],
                   route_types=config["route_types"], lora_alpha=config["lora_alpha"],
                   upstream_layers=config["upstream_layers"],
                   backbone_lora_rank=config.get("backbone_lora_rank", 0), window=config.get("window"))

    # ----------------------------------------------------------------------------------------------
    def plan(self, stitch_id: Optional[int] = None) -> RoutePlan:
        """The modules that stitch ``stitch_id`` (default: the selected one) runs, in order."""
        stitch = self.space[self.stitch_id if stitch_id is None else stitch_id]
        out_idx = self.anchor_out_indices
        layers: List[nn.Module] = []
        names: List[str] = []
        last_tap: Dict[int, Tuple[int, Tap]] = {}  # stage -> (layer position, Tap): a stage crossed twice: the later

        def tap(stage: int, anchor: int) -> None:
            projection, projection_name = self._projection(anchor, stage, out_idx[anchor][stage])
            last_tap[stage] = (len(layers) - 1, Tap(stage, projection, projection_name))

        for seg_i, seg in enumerate(stitch.segments):
            if seg_i > 0:
                link, prev = stitch.links[seg_i - 1], stitch.segments[seg_i - 1]
                layers.append(self.stitching_layer(link.direction, link.position))
                names.append(f"stitch_{link.direction}.{link.position}")
                for stage in range(len(self.out_indices)):  # jumped over (window routes only): the layer's output
                    if out_idx[prev.anchor][stage] >= prev.end and out_idx[seg.anchor][stage] < seg.start:
                        tap(stage, seg.anchor)
            blocks = self.anchors[seg.anchor].blocks
            for b in range(seg.start, seg.end):
                layers.append(blocks[b])
                names.append(f"anchors.{seg.anchor}.blocks.{b}")
                for stage, idx in enumerate(out_idx[seg.anchor]):
                    if idx == b:
                        tap(stage, seg.anchor)
        taps: Dict[int, List[Tap]] = {}
        for position, stage_tap in sorted(last_tap.values(), key=lambda pt: (pt[0], pt[1].stage)):
            taps.setdefault(position, []).append(stage_tap)
        return RoutePlan(
            embed=self.anchors[stitch.first_anchor],
            layers=layers,
            layer_names=names,
            taps=taps,
            finish=self.anchors[stitch.last_anchor],
            num_stages=len(self.out_indices),
        )

    def forward(self, images: torch.Tensor, stitch_id: Optional[int] = None, with_features: bool = True) -> RouteOutput:
        """Run one stitch on ``images`` ``(B, 3, H, W)``; see ``RouteOutput`` for the shapes."""
        return run_plan(self.plan(stitch_id), images, with_features)

    def classify(self, images: torch.Tensor, stitch_id: Optional[int] = None) -> torch.Tensor:
        """Logits ``(B, num_classes)`` through the final norm and head of the anchor the stitch ends in."""
        plan = self.plan(stitch_id)
        return classify(plan.finish, run_plan(plan, images, with_features=False).tokens)

    @torch.no_grad()
    def anchor_block_outputs(
        self, images: torch.Tensor, anchor: int, indices: Optional[Sequence[int]] = None
    ) -> Dict[int, torch.Tensor]:
        """Block outputs ``{block index: (B, P + H*W, C)}`` of one anchor run alone (used by LS init).

        Only ``indices`` are kept (default: every block; ``-1``: the embedded tokens before the first block); blocks
        after the last one asked for are not run.
        """
        model = self.anchors[anchor]
        keep = set(range(len(model.blocks)) if indices is None else indices)
        x, grid = embed_images(model, images)
        outputs = {-1: x} if -1 in keep else {}
        for b, block in enumerate(model.blocks[: max(keep) + 1]):
            x = run_layer(block, x, grid)
            if b in keep:
                outputs[b] = x
        return outputs
