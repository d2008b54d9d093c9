"""Interoperability with upstream SN-Netv2 (github.com/ziplab/SN-Netv2): stitch ids and checkpoints.

Upstream numbers its stitches in the order ``get_stitch_configs_bidirection`` builds them: the two
anchors, then one small-to-large config per small block ("sl", our FS; the last one, which runs the
whole small anchor and no large block, is never trained or evaluated), the large-to-small configs
("ls", our SF), large-small-large ("lsl", our SFS) and small-large-small ("sls", our FSF). Our ids put
FSF before SFS and skip the dead FS config, so only the anchors and FS keep their ids (12/24 blocks:
0-12 agree, 13 is upstream's dead config, upstream SF 14-24, SFS 25-79, FSF 80-134).

``load_upstream_checkpoint`` reads upstream's checkpoints (depth code: mmcv, mmseg-style DeiT3 anchors;
classification code: DeiT III anchors) into a ``StitchedViT``. Upstream's depth-code DeiT3 layer differs
from the standard one (its FFN adds its own input; LayerNorm eps 1e-5): ``StitchedViT.use_upstream_layers``
switches a net to that math so a converted checkpoint gives upstream's outputs for every stitch.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import re
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from snnet_core.io.file_claims import check_checkpoint_claims, check_checkpoint_path, state_bytes
from snnet_core.model.snnet import StitchedViT
from snnet_core.model.stitch_space import FAST, SLOW, Link, Segment, StitchSpace

_Route = Tuple[str, Tuple[Segment, ...], Tuple[Link, ...]]


def _upstream_routes(fast_depth: int, slow_depth: int) -> List[Optional[_Route]]:
    """Upstream's configs in upstream's id order as ``(kind, segments, links)``; ``None`` for the dead FS id.

    Upstream's inclusive block ranges ``[begin, end]`` become our half-open ``Segment(anchor, begin, end + 1)``.
    """
    ratio = slow_depth // fast_depth
    # Small block at each large position: upstream resamples range(fast_depth) to slow_depth positions
    # with nearest-neighbour F.interpolate (12/24: i -> i // 2).
    ids = torch.arange(fast_depth, dtype=torch.float32)[None, None]
    small_at = F.interpolate(ids, size=slow_depth, mode="nearest").flatten().long().tolist()
    # "sl": small blocks [0, i], then large blocks from (i + 1) * ratio, through s2l layer i.
    s2l = [(i, (i + 1) * ratio) for i in range(fast_depth)]
    # "ls": large blocks [0, i], then small blocks from small_at[i] + 1, through l2s layer i // ratio;
    # every odd large block except the last when the depths differ, every block but the last otherwise.
    l2s = [
        (i, small_at[i] + 1, i // ratio)
        for i in range(slow_depth - 1)
        if fast_depth == slow_depth or i % 2 == 1
    ]
    routes: List[Optional[_Route]] = [
        ("anchor", (Segment(FAST, 0, fast_depth),), ()),
        ("anchor", (Segment(SLOW, 0, slow_depth),), ()),
    ]
    for i, large_start in s2l:  # the last one runs no large block: upstream leaves its id out of training
        segs = (Segment(FAST, 0, i + 1), Segment(SLOW, large_start, slow_depth))
        routes.append(None if i == fast_depth - 1 else ("FS", segs, (Link("s2l", i),)))
    for i, small_start, layer in l2s:
        segs = (Segment(SLOW, 0, i + 1), Segment(FAST, small_start, fast_depth))
        routes.append(("SF", segs, (Link("l2s", layer),)))
    for i_large, small_start, layer in l2s:  # "lsl"
        for i_small, large_start in s2l[:-1]:
            if i_small >= small_start:
                segs = (Segment(SLOW, 0, i_large + 1), Segment(FAST, small_start, i_small + 1),
                        Segment(SLOW, large_start, slow_depth))
                routes.append(("SFS", segs, (Link("l2s", layer), Link("s2l", i_small))))
    for i_small, large_start in s2l:  # "sls"
        for i_large, small_start, layer in l2s:
            if i_large >= large_start:
                segs = (Segment(FAST, 0, i_small + 1), Segment(SLOW, large_start, i_large + 1),
                        Segment(FAST, small_start, fast_depth))
                routes.append(("FSF", segs, (Link("s2l", i_small), Link("l2s", layer))))
    return routes


@functools.lru_cache(maxsize=None)
def _id_tables(fast_depth: int, slow_depth: int) -> Tuple[Dict[int, int], Dict[int, int], int]:
    """``(ours -> upstream, upstream -> ours, number of upstream ids)``; ``ValueError`` if they differ."""
    ours = {(s.segments, s.links): s for s in StitchSpace(fast_depth, slow_depth)}
    routes = _upstream_routes(fast_depth, slow_depth)
    to_upstream: Dict[int, int] = {}
    for upstream_id, route in enumerate(routes):
        if route is None:
            continue
        kind, segments, links = route
        stitch = ours.get((segments, links))
        if stitch is None or stitch.kind != kind:
            raise ValueError(
                f"upstream's stitch enumeration for {fast_depth}/{slow_depth} blocks does not match this "
                f"space (its id {upstream_id}, {kind} {' -> '.join(map(str, segments))}, is not one of our "
                "routes); upstream's rules pair blocks like ours only for equal depths or a 1:2 depth ratio"
            )
        to_upstream[stitch.id] = upstream_id
    if len(to_upstream) != len(ours):
        missing = sorted(set(s.id for s in ours.values()) - set(to_upstream))
        raise ValueError(
            f"upstream's stitch enumeration for {fast_depth}/{slow_depth} blocks lacks our stitches {missing[:5]}"
        )
    return to_upstream, {u: o for o, u in to_upstream.items()}, len(routes)


def _check_v1_space(space: StitchSpace) -> None:
    """A sliding-window space is numbered as SN-Netv1's ``get_stitch_configs`` numbers its ``cfg_id`` (the anchors,
    then each neighbouring pair's window stitches) for two or three anchors; for four or more, SN-Netv1's
    "nearest stitching" removes only the DeiT-Ti/B combinations and keeps stitches of non-neighbours."""
    if space.num_anchors > 3:
        raise ValueError(f"SN-Netv1 numbers the nearest-stitching configs of two or three anchors only; this space has "
                         f"{space.num_anchors}")


def upstream_stitch_id(space: StitchSpace, stitch_id: int) -> int:
    """Upstream's id of our stitch ``stitch_id``: SN-Netv2's (e.g. 12/24 blocks: our SF 13 -> upstream 14), or for
    the sliding-window space SN-Netv1's ``cfg_id``, which is our id.

    Raises ``KeyError`` for an id not in ``space`` and ``ValueError`` for depths (or numbers of anchors) upstream's
    enumeration does not cover.
    """
    stitch = space[stitch_id]
    if space.window is not None:
        _check_v1_space(space)
        return stitch.id
    return _id_tables(*space.depths)[0][stitch.id]


def stitch_id_from_upstream(space: StitchSpace, upstream_id: int) -> int:
    """Our id of upstream SN-Netv2's stitch ``upstream_id`` (inverse of ``upstream_stitch_id``).

    Raises ``KeyError`` naming the id when upstream has no such stitch, when it is upstream's dead FS
    config (the whole small anchor followed by no large block), or when its route type is not in ``space``.
    """
    if space.window is not None:  # SN-Netv1's cfg_id is our id
        _check_v1_space(space)
        return space[upstream_id].id
    fast_depth, slow_depth = space.depths
    _, from_upstream, count = _id_tables(fast_depth, slow_depth)
    if upstream_id not in from_upstream:
        if upstream_id in range(count):
            raise KeyError(
                f"upstream stitch id {upstream_id} is upstream's unused FS config (all {fast_depth} small "
                "blocks, then no large block); upstream never trains or evaluates it, so it has no id here"
            )
        raise KeyError(
            f"unknown upstream stitch id {upstream_id!r}: upstream numbers the stitches of "
            f"{fast_depth}/{slow_depth} blocks 0..{count - 1}"
        )
    stitch_id = from_upstream[upstream_id]
    if stitch_id not in space:
        raise KeyError(
            f"upstream stitch id {upstream_id} is our {StitchSpace(fast_depth, slow_depth)[stitch_id].kind} "
            f"stitch {stitch_id}, outside this space (routes {', '.join(space.route_types)})"
        )
    return stitch_id


# ---------------------------------------------------------------------------------------------------
# Checkpoints.
#
# Upstream's backbone keys are ``anchors.{0,1}.<anchor key>`` and ``stitch_layers.{0,1}.{k}.transform.
# {weight,bias,lora_A,lora_B}`` (``stitch_layers[0]``: small-to-large layers, ``[1]``: large-to-small; the
# trailing ``nn.Identity`` has no keys). Anchor keys come in two layouts: the depth code's mmseg-style
# DeiT3 (``layers.i.ln1``, ``ffn.layers.0.0``, ``gamma_1``, ...) and the classification code's DeiT III
# ``vit_models`` (timm names except ``gamma_1``/``gamma_2``). Both store ``pos_embed`` as ``(1, H*W, C)``
# without a cls entry, as timm's DeiT3 (``no_embed_class``) does.
MMSEG, DEIT3, SNNET_V1 = "mmseg", "deit3", "snnet-v1"
_ANCHOR_RENAMES = (  # (pattern on the key after "anchors.k.", replacement)
    (r"patch_embed\.projection\.(weight|bias)", r"patch_embed.proj.\1"),
    (r"layers\.(\d+)\.ln([12])\.(weight|bias)", r"blocks.\1.norm\2.\3"),
    (r"layers\.(\d+)\.attn\.(qkv|proj)\.(weight|bias)", r"blocks.\1.attn.\2.\3"),
    (r"layers\.(\d+)\.ffn\.layers\.0\.0\.(weight|bias)", r"blocks.\1.mlp.fc1.\2"),
    (r"layers\.(\d+)\.ffn\.layers\.1\.(weight|bias)", r"blocks.\1.mlp.fc2.\2"),
    (r"(?:layers|blocks)\.(\d+)\.gamma_([12])", r"blocks.\1.ls\2.gamma"),
    (r"ln1\.(weight|bias)", r"norm.\1"),  # mmseg DeiT3's final norm (only saved with final_norm=True)
)
_LORA_RENAMES = {"weight": "weight", "bias": "bias", "lora_A": "lora_down", "lora_B": "lora_up"}
_STITCH_KEY = re.compile(r"stitch_layers\.([01])\.(\d+)\.transform\.(weight|bias|lora_A|lora_B)")
_ANCHOR_KEY = re.compile(r"anchors\.([01])\.(.+)")


@dataclasses.dataclass
class UpstreamConversion:
    """What ``convert_upstream_state_dict`` (or ``convert_v1_state_dict``) did.

    Attributes:
        layout: ``"mmseg"`` (depth_estimation's DeiT3), ``"deit3"`` (classification's DeiT III) or ``"snnet-v1"``
            (SN-Netv1's DeiT, timm keys).
        set_aside: checkpoint entries not loaded (decode head, optimizer, classifier the net lacks, ...).
        kept: the net's parameters the checkpoint does not hold, left as they were (final norm and
            classifier: upstream's depth anchors have neither; dense features use neither).
        resized: ``{key: (checkpoint grid, net grid)}`` of resampled position embeddings.
    """

    layout: str
    set_aside: List[str]
    kept: List[str]
    resized: Dict[str, Tuple[Tuple[int, int], Tuple[int, int]]]

    def __str__(self) -> str:
        lines = ["upstream SN-Netv1 checkpoint (timm DeiT anchors)" if self.layout == SNNET_V1 else
                 f"upstream SN-Netv2 checkpoint ({self.layout} anchors)"]
        lines += [f"  pos_embed {k}: {a[0]}x{a[1]} -> {b[0]}x{b[1]} grid" for k, (a, b) in self.resized.items()]
        if self.set_aside:
            lines.append(f"  set aside {len(self.set_aside)} entries: {_abbreviate(self.set_aside)}")
        if self.kept:
            lines.append(f"  kept the net's own {_abbreviate(self.kept)}")
        return "\n".join(lines)


def _abbreviate(keys: Sequence[str], limit: int = 6) -> str:
    return ", ".join(keys[:limit]) + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def _unwrap(checkpoint: Mapping[str, Any], source: str) -> Tuple[Dict[str, torch.Tensor], List[str]]:
    """The backbone's tensors (``backbone.`` prefix stripped) and the names of every other entry."""
    set_aside: List[str] = []
    state: Mapping[str, Any] = checkpoint
    for wrapper in ("state_dict", "model"):  # mmcv's {'state_dict', 'meta', ...}; classification's {'model', ...}
        if isinstance(checkpoint.get(wrapper), Mapping):
            state = checkpoint[wrapper]
            set_aside = [k for k in checkpoint if k != wrapper]
            break
    if any(k.startswith("backbone.") for k in state):
        set_aside += [k for k in state if not k.startswith("backbone.")]
        state = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    not_tensors = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if not state or not_tensors:
        raise ValueError(
            f"{source} is not an SN-Netv2 state dict (expected tensors under 'anchors.*' and "
            f"'stitch_layers.*', optionally in mmcv's {{'state_dict': ...}}); "
            + (f"non-tensor entries {_abbreviate(not_tensors)}" if not_tensors else "it holds no tensors")
        )
    return dict(state), set_aside


def _anchor_layout(keys: Iterable[str], source: str) -> str:
    keys = set(keys)
    if any(re.fullmatch(r"anchors\.[01]\.layers\.\d+\.ln1\.weight", k) for k in keys):
        return MMSEG
    if any(re.fullmatch(r"anchors\.[01]\.blocks\.\d+\.norm1\.weight", k) for k in keys):
        return DEIT3
    raise ValueError(
        f"{source} holds no upstream anchor blocks ('anchors.0.layers.0.ln1.weight' from the depth code or "
        "'anchors.0.blocks.0.norm1.weight' from the classification code); is it an SN-Netv2 checkpoint?"
    )


def _rename_anchor_key(key: str) -> str:
    for pattern, replacement in _ANCHOR_RENAMES:
        if re.fullmatch(pattern, key):
            return re.sub(pattern, replacement, key)
    return key


def resize_pos_embed(pos_embed: torch.Tensor, grid: Tuple[int, int]) -> torch.Tensor:
    """``(1, h*w, C)`` on a square ``h x w`` grid -> ``(1, grid[0]*grid[1], C)``, as upstream's DeiT3 does
    at run time when the input grid differs (bicubic, ``align_corners=False``, no antialiasing)."""
    n, dim = pos_embed.shape[1:]
    side = math.isqrt(n)
    if side * side != n:
        raise ValueError(f"pos_embed with {n} positions is not a square grid (upstream's configs use square "
                         "img_size); resize it to the net's grid before converting")
    pos = pos_embed.reshape(1, side, side, dim).permute(0, 3, 1, 2).float()
    pos = F.interpolate(pos, size=tuple(grid), mode="bicubic", align_corners=False)
    return pos.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], dim).to(pos_embed.dtype)


def _check_lora(state: Mapping[str, torch.Tensor], net: StitchedViT, source: str) -> None:
    ranks = {int(v.shape[0]) for k, v in state.items() if k.endswith(".transform.lora_A")}
    if len(ranks) > 1:
        raise ValueError(f"{source} mixes LoRA ranks {sorted(ranks)} across its stitching layers")
    rank = ranks.pop() if ranks else 0
    if rank != net.lora_rank:
        raise ValueError(
            f"{source} has stitching layers of LoRA rank {rank} (lora_A is (rank, in)) but the net was built "
            f"with lora_rank={net.lora_rank}; build StitchedViT(..., lora_rank={rank}, lora_alpha=1)"
        )
    for layer in [*net.stitch_s2l, *net.stitch_l2s]:
        if rank > 0 and not math.isclose(layer.scaling, 1.0 / rank):
            raise ValueError(
                f"{source} was trained with upstream's LoRA scaling lora_alpha / r = 1/{rank}, but the net's "
                f"stitching layers scale by {layer.scaling:g}; build StitchedViT(..., lora_alpha=1)"
            )


def convert_upstream_state_dict(
    checkpoint: Mapping[str, Any], net: StitchedViT, source: str = "upstream state dict"
) -> Tuple[Dict[str, torch.Tensor], UpstreamConversion]:
    """Map an upstream SN-Netv2 state dict onto ``net``'s keys.

    Args:
        checkpoint: upstream's backbone state dict, bare, under ``backbone.`` (mmcv; other prefixes such as
            ``decode_head.`` are set aside), or wrapped as mmcv's ``{'state_dict', 'meta'}`` or the
            classification code's ``{'model', 'args', ...}``.
        net: the target; its anchors must be timm DeiT3-style (position embeddings without a cls entry),
            its LoRA rank must be the checkpoint's and its LoRA scale upstream's ``1 / rank``.
        source: name used in error messages (the file path when called by ``load_upstream_checkpoint``).

    Returns:
        ``(state, report)``: ``state`` holds exactly the keys of ``net`` the checkpoint provides, position
        embeddings resampled to each anchor's grid; ``report`` says what was set aside, kept and resized.

    Raises ``ValueError`` naming the keys when a mapped key is missing, unknown or of the wrong shape.
    """
    state, set_aside = _unwrap(checkpoint, source)
    layout = _anchor_layout(state, source)
    _check_lora(state, net, source)
    own = net.state_dict()
    converted: Dict[str, torch.Tensor] = {}
    origin: Dict[str, str] = {}
    resized: Dict[str, Tuple[Tuple[int, int], Tuple[int, int]]] = {}
    unknown: List[str] = []
    for key, value in state.items():
        anchor_key, stitch_key = _ANCHOR_KEY.fullmatch(key), _STITCH_KEY.fullmatch(key)
        if stitch_key:
            group, index, name = stitch_key.groups()
            new_key = f"{('stitch_s2l', 'stitch_l2s')[int(group)]}.{index}.{_LORA_RENAMES[name]}"
        elif anchor_key:
            index, name = int(anchor_key.group(1)), _rename_anchor_key(anchor_key.group(2))
            anchor = net.anchors[index]
            new_key = f"anchors.{index}.{name}"
            if (name == "cls_token" and anchor.cls_token is None) or (name.startswith("head.") and new_key not in own):
                set_aside.append(key)  # the net has no cls token / classifier
                continue
            if name == "pos_embed":
                grid = _pos_embed_grid(anchor, index, source)
                if value.shape[1] != grid[0] * grid[1]:
                    side = math.isqrt(value.shape[1])
                    value = resize_pos_embed(value, grid)
                    resized[key] = ((side, side), grid)
        else:
            unknown.append(key)
            continue
        converted[new_key], origin[new_key] = value, key
    unknown += [origin[k] for k in converted if k not in own]
    mismatched = [f"{origin[k]} {tuple(v.shape)} vs net {k} {tuple(own[k].shape)}"
                  for k, v in converted.items() if k in own and v.shape != own[k].shape]
    keepable = re.compile(r"anchors\.[01]\.(norm|head)\..+")
    missing = [k for k in own if k not in converted and not keepable.fullmatch(k)]
    if unknown or mismatched or missing:
        problems = [f"{label}: {_abbreviate(keys)}" for label, keys in
                    (("missing (net keys with no upstream entry)", missing), ("unknown keys", unknown),
                     ("shape mismatch", mismatched)) if keys]
        raise ValueError(
            f"{source} does not fit this SN-Net ({'/'.join(map(str, net.space.depths))} blocks, widths "
            f"{'/'.join(map(str, net.embed_dims))}, LoRA rank {net.lora_rank}): " + "; ".join(problems)
        )
    kept = [k for k in own if k not in converted]
    return converted, UpstreamConversion(layout, set_aside, kept, resized)


# SN-Netv1 (github.com/ziplab/SN-Net, stitching_deit): ``SNNet``'s keys are ``anchors.{i}.<timm ViT key>`` and
# ``stitch_layers.{pair}.{layer}.transform.{weight,bias}``, ``pair`` indexing its anchor combinations (0: Ti-S,
# 1: S-B under nearest stitching), which is our flat ``stitch_s2l.{pair * layers per pair + layer}``.
_V1_STITCH_KEY = re.compile(r"stitch_layers\.(\d+)\.(\d+)\.transform\.(weight|bias)")
_V1_KEPT = re.compile(r"(feature_proj\.\d+\..+|stitch_s2l\.\d+\.lora_(down|up))")  # ours only


def convert_v1_state_dict(
    checkpoint: Mapping[str, Any], net: StitchedViT, source: str = "SN-Netv1 state dict"
) -> Tuple[Dict[str, torch.Tensor], UpstreamConversion]:
    """Map an SN-Netv1 ``SNNet`` state dict (bare or its training checkpoint ``{'model', 'optimizer', 'args', ...}``)
    onto ``net``, a sliding-window SN-Net of the same anchors and window (e.g. DeiT-Ti/S/B, ``window=(2, 1)``).

    The anchors keep their timm keys; stitching layer ``layer`` of anchor pair ``pair`` becomes
    ``stitch_s2l.{pair * L + layer}`` (``L`` layers per pair). The net's dense-feature projections and LoRA factors
    (SN-Netv1 trains its layers in full: use ``lora_rank=0``) are not in the file and are kept (``report.kept``).
    SN-Netv1's ``SNNet.forward`` ends a stitch (not an anchor) with ``forward_head`` alone, without the end anchor's
    final norm, which ``classify`` here applies: its stitches' logits (and its results file's FLOPs, 5 per element of
    that norm fewer) differ from this engine's for the same weights.
    Returns ``(state, report)``; raises ``ValueError`` naming the keys that are missing, unknown or of another shape.
    """
    if net.space.window is None:
        raise ValueError(f"{source}: an SN-Netv1 checkpoint fits a sliding-window SN-Net (StitchedViT(*anchors, "
                         "window=(k, s)), e.g. DeiT-Ti/S/B), not the two-way space")
    state, set_aside = _unwrap(checkpoint, source)
    own = net.state_dict()
    per_pair = net.space.num_s2l // (net.space.num_anchors - 1)
    converted: Dict[str, torch.Tensor] = {}
    origin: Dict[str, str] = {}
    for key, value in state.items():
        stitch_key = _V1_STITCH_KEY.fullmatch(key)
        if stitch_key:
            pair, layer, name = stitch_key.groups()
            new_key = f"stitch_s2l.{int(pair) * per_pair + int(layer)}.{name}" if int(layer) < per_pair else key
        else:
            new_key = key
        converted[new_key], origin[new_key] = value, key
    unknown = [origin[k] for k in converted if k not in own]
    mismatched = [f"{origin[k]} {tuple(v.shape)} vs net {k} {tuple(own[k].shape)}"
                  for k, v in converted.items() if k in own and v.shape != own[k].shape]
    kept = [k for k in own if k not in converted and _V1_KEPT.fullmatch(k)]
    missing = [k for k in own if k not in converted and k not in kept]
    if unknown or mismatched or missing:
        problems = [f"{label}: {_abbreviate(keys)}" for label, keys in
                    (("missing (net keys with no SN-Netv1 entry)", missing), ("unknown keys", unknown),
                     ("shape mismatch", mismatched)) if keys]
        raise ValueError(f"{source} does not fit this SN-Net ({net.space.describe()}, widths "
                         f"{'/'.join(map(str, net.embed_dims))}): " + "; ".join(problems))
    return converted, UpstreamConversion(SNNET_V1, set_aside, kept, {})


def _pos_embed_grid(anchor: nn.Module, index: int, source: str) -> Tuple[int, int]:
    """The patch grid of ``anchor``, whose position embeddings must, like upstream's, have no cls entry."""
    grid = tuple(int(g) for g in anchor.patch_embed.grid_size)
    if not getattr(anchor, "no_embed_class", False) or anchor.pos_embed.shape[1] != grid[0] * grid[1]:
        raise ValueError(
            f"{source}: upstream position embeddings have no cls entry, but anchor {index} keeps one; build "
            "the anchors as timm DeiT3 models (no_embed_class=True, e.g. deit3_small_patch16_224)"
        )
    return grid


def load_upstream_checkpoint(path: str, net: StitchedViT, upstream_layers: bool = True) -> UpstreamConversion:
    """Load an upstream checkpoint file into ``net``: SN-Netv2's into a two-way net (``convert_upstream_state_dict``),
    SN-Netv1's into a sliding-window net (``convert_v1_state_dict``).

    Args:
        path: a ``.pth`` written by SN-Netv2's depth (mmcv) or classification code, or SN-Netv1's ``main.py``; read
            with ``torch.load(weights_only=True)`` (``argparse.Namespace``, which the classification codes
            store as ``args``, is the one extra type allowed).
        net: the target SN-Net.
        upstream_layers: for depth-code (mmseg layout) checkpoints, also switch the anchors to upstream's
            layer math (``StitchedViT.use_upstream_layers``, recorded in ``net.config()``) so that every stitch
            reproduces upstream's outputs.

    Returns the conversion report. Raises ``FileNotFoundError``, ``RuntimeError`` for an unreadable file
    and ``ValueError`` naming the file and keys for a checkpoint that does not fit ``net`` or claiming far more
    data than it holds (``snnet_core.io.file_claims``, checked before the file is read).

    The LoRA update is assumed unmerged, as upstream saves it while training (mmcv's CheckpointHook runs
    before evaluation); a file written in eval mode (e.g. mmcv ``save_best``) holds ``W + s B A`` as its
    weight and cannot be told apart.
    """
    check_checkpoint_path(path, "upstream checkpoint")
    check_checkpoint_claims(path, state_bytes(net), "upstream checkpoint")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # not a torch file, truncated, or holding arbitrary objects
        raise RuntimeError(f"could not read upstream checkpoint {path!r} ({type(exc).__name__}: {exc})") from exc
    if not isinstance(checkpoint, Mapping):
        raise RuntimeError(f"upstream checkpoint {path!r} holds a {type(checkpoint).__name__}, not a state dict")
    convert = convert_upstream_state_dict if net.space.window is None else convert_v1_state_dict
    state, report = convert(checkpoint, net, source=f"upstream checkpoint {path!r}")
    net.load_state_dict(state, strict=False)
    if upstream_layers and report.layout == MMSEG:
        net.use_upstream_layers()
    return report
