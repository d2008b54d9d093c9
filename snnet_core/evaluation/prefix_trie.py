"""Evaluate many stitches on one batch while running each shared route prefix once.

Stitches of one SN-Net share long prefixes: every FS stitch starts with ``S[0:k]``, every SF and SFS stitch with
``L[0:b]``, and the anchors contain those prefixes too. ``run_stitches`` arranges the requested stitches' plans
(``StitchedViT.plan``) in a trie keyed by what each step runs (the embedding anchor, then each block or
stitching layer, with the dense features read after it) and walks it depth first: every trie node, patch embedding included, runs once per batch, and
only the activations on the current root-to-node path are held (one per trie level). A stitch's outputs are
computed by the same modules, in the same order, on the same inputs as ``net(images, stitch_id)``, so they are
equal (bit for bit on deterministic kernels; in train mode stochastic layers such as drop path draw in another
order).
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Dict, Hashable, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from snnet_core.model.flops import count_gflops
from snnet_core.model.route import RouteOutput, RoutePlan, Tap, classify, embed_images
from snnet_core.model.snnet import StitchedViT


@dataclasses.dataclass
class _Node:
    """One step of a route: ``module`` applied to the parent's activation (the root's children embed images)."""

    name: str
    module: nn.Module
    taps: List[Tap] = dataclasses.field(default_factory=list)
    children: Dict[Tuple[str, tuple], "_Node"] = dataclasses.field(default_factory=dict)  # by (name, taps read)
    ends: List[Tuple[int, RoutePlan]] = dataclasses.field(default_factory=list)  # stitches whose route ends here


def _embed_name(plan: RoutePlan, net: StitchedViT) -> str:
    return f"anchors.{next(i for i, anchor in enumerate(net.anchors) if anchor is plan.embed)}.embed"


def build_trie(net: StitchedViT, stitch_ids: Sequence[int]) -> _Node:
    """The prefix trie of the routes of ``stitch_ids`` (validated; each id once)."""
    if len(set(stitch_ids)) != len(stitch_ids):
        raise ValueError(f"stitch ids must be distinct, got {list(stitch_ids)}")
    root = _Node("", nn.Identity())
    for sid in stitch_ids:
        plan = net.plan(sid)
        embed = _embed_name(plan, net)
        node = root.children.setdefault((embed, ()), _Node(embed, plan.embed))
        for position, (name, layer) in enumerate(zip(plan.layer_names, plan.layers)):
            # one layer may read other features in other routes (SN-Netv1's windows): such steps are not shared
            taps = plan.taps.get(position, [])
            key = (name, tuple((t.stage, t.projection_name) for t in taps))
            if key not in node.children:
                node.children[key] = _Node(name, layer, list(taps))
            node = node.children[key]
        node.ends.append((net.space[sid].id, plan))
    return root


def run_stitches(
    net: StitchedViT, images: torch.Tensor, stitch_ids: Optional[Sequence[int]] = None, with_features: bool = True
) -> Iterator[Tuple[int, RouteOutput]]:
    """Yield ``(stitch_id, RouteOutput)`` for every stitch of ``stitch_ids`` (default: the whole space) on
    ``images`` ``(B, 3, H, W)``, sharing every route prefix (see the module docstring).

    Stitches come in depth-first trie order, not in the order asked. Each ``RouteOutput`` is the same as
    ``net(images, stitch_id, with_features)`` would give. Under ``torch.no_grad()`` memory stays at one
    activation per trie level (plus the dense features of the current path).
    """
    ids = net.space.ids if stitch_ids is None else list(stitch_ids)
    root = build_trie(net, ids)
    num_stages = len(net.out_indices)
    for embed_node in root.children.values():
        x, grid = embed_images(embed_node.module, images)
        prefix = int(embed_node.module.num_prefix_tokens)
        yield from _walk(embed_node, x, [None] * num_stages, grid, prefix, with_features)


def _walk(node: _Node, x: torch.Tensor, features: List[Optional[torch.Tensor]], grid: Tuple[int, int],
          prefix: int, with_features: bool) -> Iterator[Tuple[int, RouteOutput]]:
    for child in node.children.values():
        y = child.module(x)
        child_features = features
        if with_features and child.taps:
            child_features = list(features)
            for tap in child.taps:
                child_features[tap.stage] = y if tap.projection is None else tap.projection(y)
        for sid, _ in child.ends:
            if with_features and any(f is None for f in child_features):
                raise RuntimeError(f"route of stitch {sid} did not cross every dense stage")
            yield sid, RouteOutput(y, list(child_features) if with_features else [], grid, prefix)
        yield from _walk(child, y, child_features, grid, prefix, with_features)


def classify_stitches(
    net: StitchedViT, images: torch.Tensor, stitch_ids: Optional[Sequence[int]] = None
) -> Iterator[Tuple[int, torch.Tensor]]:
    """Yield ``(stitch_id, logits (B, num_classes))`` as ``net.classify`` gives, sharing route prefixes."""
    finish = {sid: net.plan(sid).finish for sid in (net.space.ids if stitch_ids is None else stitch_ids)}
    for sid, out in run_stitches(net, images, list(finish), with_features=False):
        yield sid, classify(finish[sid], out.tokens)


def prefix_sharing_cost(
    net: StitchedViT, cost: Callable[[str], float], stitch_ids: Optional[Sequence[int]] = None
) -> Tuple[float, float]:
    """``(shared, naive)`` cost of running ``stitch_ids`` once each: with every trie node once, and stitch by
    stitch. ``cost(name)`` gives a step's cost from its name (``anchors.A.embed``, ``anchors.A.blocks.i``,
    ``stitch_s2l.k``; dense-feature projections are not counted)."""
    ids = net.space.ids if stitch_ids is None else list(stitch_ids)
    shared = 0.0

    def visit(node: _Node) -> None:
        nonlocal shared
        for child in node.children.values():
            shared += cost(child.name)
            visit(child)

    visit(build_trie(net, ids))
    naive = 0.0
    for sid in ids:
        plan = net.plan(sid)
        naive += cost(_embed_name(plan, net)) + sum(cost(name) for name in plan.layer_names)
    return shared, naive


def route_step_gflops(
    net: StitchedViT, size: Tuple[int, int], block_kind: Callable[[int, int], Hashable] = lambda anchor, index: 0
) -> Callable[[str], float]:
    """``cost(step name)`` for ``prefix_sharing_cost``: fvcore GFLOPs at input ``size`` of an embedding, a block
    and a stitching layer (LoRA merged). Blocks are counted once per anchor and ``block_kind(anchor, index)``
    (default: all blocks of an anchor cost the same; e.g. ViTDet keys windowed and global blocks apart)."""
    images = torch.zeros(1, 3, *size)
    tokens = [embed_images(anchor, images)[0] for anchor in net.anchors]
    embed = [count_gflops(anchor.patch_embed, (images,)) for anchor in net.anchors]
    ends = {spec.name: (spec.source, spec.target) for spec in net.layer_specs()}  # layer -> (input, output) anchor
    layers: Dict[Tuple[int, int], float] = {}  # stitching layers cost the same between the same two anchors
    blocks: Dict[Tuple[int, Hashable], float] = {}

    def cost(name: str) -> float:
        if name in ends:
            if ends[name] not in layers:
                layers[ends[name]] = count_gflops(net.get_submodule(name).merged(), (tokens[ends[name][0]],))
            return layers[ends[name]]
        parts = name.split(".")
        anchor = int(parts[1])
        if parts[2] == "embed":
            return embed[anchor]
        index = int(parts[3])
        key = (anchor, block_kind(anchor, index))
        if key not in blocks:
            blocks[key] = count_gflops(net.anchors[anchor].blocks[index], (tokens[anchor],))
        return blocks[key]

    return cost


def stitch_groups(net: StitchedViT, stitch_ids: Sequence[int], group_size: int) -> List[List[int]]:
    """``stitch_ids`` in depth-first order of their route-prefix trie, cut into groups of ``group_size`` (the
    last may be smaller): consecutive stitches share the longest prefixes, so each group keeps most of the
    sharing while a group's results can be flushed (and an interruption loses at most one group)."""
    if group_size < 1:
        raise ValueError(f"the stitch group size must be >= 1, got {group_size}")
    order: List[int] = []

    def visit(node: _Node) -> None:
        order.extend(sid for sid, _ in node.ends)
        for child in node.children.values():
            visit(child)

    visit(build_trie(net, list(stitch_ids)))
    return [order[i:i + group_size] for i in range(0, len(order), group_size)]
