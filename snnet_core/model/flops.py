"""Per-stitch FLOPs and parameter table, counted with fvcore and cached on disk.

FLOPs are additive over modules, so one fvcore trace of a probe that runs every component once (each
anchor's embedding, blocks, final norm and head; every stitching layer on tokens of its input width)
gives the count of each module; a stitch's FLOPs are the sum over the modules its route runs. This is
exact for fvcore (``tests/test_flops.py`` checks it against a trace of each stitch) and costs one trace
instead of one per stitch. A task head that sees the same features for every stitch (DPT, ViTDet) adds a
constant ``head_gflops`` that the caller measures once (``count_gflops``).

fvcore counts one multiply-add as one FLOP (the convention of the SN-Net and ViTDet papers).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import contextlib
import os
import time
from typing import Any, Dict, Iterator, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from fvcore.nn import FlopCountAnalysis
from fvcore.nn.jit_handles import get_shape

from snnet_core.io.atomic_io import write_json_atomic
from snnet_core.model.backbone_lora import base_linears, deployed_numel
from snnet_core.model.route import RoutePlan, classify, embed_images, run_layer
from snnet_core.model.snnet import StitchedViT
from snnet_core.model.stitch_space import FAST

logger = logging.getLogger(__name__)
CACHE_VERSION = 2  # 2: the cache carries a checksum of its content


def _sdpa_flop_jit(inputs: Sequence[Any], outputs: Sequence[Any]) -> int:
    """``scaled_dot_product_attention``: ``Q K^T`` and ``A V``, ``B*H*N*M*(d_qk + d_v)`` multiply-adds."""
    q, k, v = (get_shape(x) for x in inputs[:3])
    batch = 1
    for d in q[:-2]:
        batch *= d
    n, d_qk = q[-2], q[-1]
    m, d_v = k[-2], v[-1]
    return batch * n * m * (d_qk + d_v)


def flop_counter(model: nn.Module, inputs: Tuple[Any, ...]) -> FlopCountAnalysis:
    """fvcore ``FlopCountAnalysis`` with attention (SDPA) counted and unsupported-op warnings silenced."""
    analysis = FlopCountAnalysis(model, inputs)
    analysis.set_op_handle("aten::scaled_dot_product_attention", _sdpa_flop_jit)
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    return analysis


@contextlib.contextmanager
def rng_untouched(device: torch.device) -> Iterator[None]:
    """Restore torch's CPU (and ``device``'s CUDA) random state on exit: counting FLOPs builds modules whose
    initialisation draws numbers (``StitchingLayer.merged``), so without it a run that reads a cached table
    would draw other weights, crops and stitches than one that counts it, under the same seed."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        yield


def count_gflops(model: nn.Module, inputs: Tuple[Any, ...]) -> float:
    """Total GFLOPs of ``model(*inputs)`` (eval mode, no grad; torch's random state is left as it was)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters(), torch.empty(0)).device
    with torch.no_grad(), rng_untouched(device):
        total = flop_counter(model, inputs).total()
    model.train(was_training)
    return total / 1e9


class _ComponentProbe(nn.Module):
    """Runs every component of an SN-Net once so that one trace counts all of them.

    Module names match ``RoutePlan.layer_names`` (``anchors.0.blocks.3``, ``stitch_s2l.2``). Stitching
    layers are counted merged (LoRA folded in), as a deployed stitch runs them; so are the anchors' backbone-LoRA
    layers (``build_flops_table`` traces it under ``backbone_lora.base_linears``).
    """

    def __init__(self, snnet: StitchedViT, with_head: bool):
        super().__init__()
        self.anchors = snnet.anchors
        self.stitch_s2l = nn.ModuleList(layer.merged() for layer in snnet.stitch_s2l)
        self.stitch_l2s = nn.ModuleList(layer.merged() for layer in snnet.stitch_l2s)
        if hasattr(snnet, "feature_proj"):  # the sliding-window space's dense-feature projections
            self.feature_proj = nn.ModuleList(layer.merged() for layer in snnet.feature_proj)
        self.sources = {spec.name: spec.source for spec in snnet.layer_specs()}  # layer name -> input anchor
        self.with_head = with_head

    def forward(self, images: torch.Tensor):
        outs = []
        tokens = []
        for anchor in self.anchors:
            x, grid = embed_images(anchor, images)
            tokens.append(x)
            for block in anchor.blocks:
                x = run_layer(block, x, grid)
            outs.append(classify(anchor, x) if self.with_head else x)
        outs += [self.get_submodule(name)(tokens[source]) for name, source in self.sources.items()]
        return tuple(outs)


@dataclasses.dataclass
class FlopsTable:
    """GFLOPs and parameters (millions) of every stitch at one input size.

    Attributes:
        gflops: ``{stitch id: GFLOPs}`` including ``head_gflops``.
        params_m: ``{stitch id: parameters in millions}`` of the deployed stitch (LoRA merged) + head.
        input_size: ``(H, W)`` of the counted input.
        head_gflops / head_params_m: the constant task-head part included above.
    """

    gflops: Dict[int, float]
    params_m: Dict[int, float]
    input_size: Tuple[int, int]
    head_gflops: float = 0.0
    head_params_m: float = 0.0

    def to_json(self) -> Dict[str, Any]:
        """The cache file's content: the table, ``version`` and a ``checksum`` of the rest."""
        data = {
            "version": CACHE_VERSION,
            "gflops": {str(k): v for k, v in self.gflops.items()},
            "params_m": {str(k): v for k, v in self.params_m.items()},
            "input_size": list(self.input_size),
            "head_gflops": self.head_gflops,
            "head_params_m": self.head_params_m,
        }
        return dict(data, checksum=_checksum(data))

    @classmethod
    def from_json(cls, data: Dict[str, Any]) -> "FlopsTable":
        return cls(
            gflops={int(k): float(v) for k, v in data["gflops"].items()},
            params_m={int(k): float(v) for k, v in data["params_m"].items()},
            input_size=tuple(data["input_size"]),
            head_gflops=float(data["head_gflops"]),
            head_params_m=float(data["head_params_m"]),
        )


def _checksum(data: Dict[str, Any]) -> str:
    """sha256 of a cache's content without its ``checksum`` field (floats round-trip JSON exactly)."""
    content = {k: v for k, v in data.items() if k != "checksum"}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def _is_positive_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def _cache_problem(data: Any, stitch_ids: Sequence[int], input_size: Tuple[int, int], head_gflops: float,
                  head_params_m: float) -> Optional[str]:
    """Why a FLOPs cache's parsed JSON cannot be used for this table (``None`` if it can).

    It must be a dict with exactly the fields ``to_json`` writes, one finite positive GFLOPs and parameter
    count for every stitch id of the space and no other, the requested input size and head cost, and a
    checksum that matches (an edited value is recounted rather than trusted).
    """
    if not isinstance(data, dict):
        return f"holds a JSON {type(data).__name__}, not a FLOPs table"
    if data.get("version") != CACHE_VERSION:
        return f"has format version {data.get('version')!r}, not {CACHE_VERSION}"
    fields = {"version", "gflops", "params_m", "input_size", "head_gflops", "head_params_m", "checksum"}
    if set(data) != fields:
        return f"has the fields {sorted(data)}, not {sorted(fields)}"
    ids = {str(i) for i in stitch_ids}
    for column in ("gflops", "params_m"):
        values = data[column]
        if not isinstance(values, dict):
            return f"has {column} as a JSON {type(values).__name__}, not a mapping of stitch ids"
        missing, extra = sorted(ids - set(values), key=int), sorted(set(values) - ids)
        if missing or extra:
            return (f"has {column} of other stitches than this space's (missing: {missing[:10]}, "
                    f"not in it: {extra[:10]})")
        bad = sorted((k for k, v in values.items() if not _is_positive_number(v)), key=int)
        if bad:
            return f"has {column} that are not finite positive numbers for stitches {bad[:10]}"
    if data["input_size"] != list(input_size):
        return f"was counted at input size {data['input_size']}, not {list(input_size)}"
    for field, expected in (("head_gflops", head_gflops), ("head_params_m", head_params_m)):
        value = data[field]
        if not isinstance(value, (int, float)) or not math.isclose(value, expected, rel_tol=1e-9, abs_tol=1e-12):
            return f"has {field}={value!r}, not this head's {expected!r}"
    if data["checksum"] != _checksum(data):
        return "does not match its checksum (it was edited after it was written)"
    return None


def _read_cache(path: str, snnet: StitchedViT, input_size: Tuple[int, int], head_gflops: float,
                head_params: int) -> Optional[FlopsTable]:
    """The table cached at ``path`` if it is intact and fits ``snnet``; ``None`` (warning why) if not."""
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError) as exc:  # ValueError: JSONDecodeError, UnicodeDecodeError
        problem = f"is unreadable ({type(exc).__name__}: {exc})"
    else:
        problem = _cache_problem(data, snnet.space.ids, input_size, head_gflops, head_params / 1e6)
    if problem is not None:
        logger.warning("FLOPs cache %s %s: recounting and rewriting it", path, problem)
        return None
    return FlopsTable.from_json(data)


def plan_params(plan: RoutePlan, with_features: bool, with_head: bool) -> int:
    """Parameters a deployed stitch holds: embedding, its layers (+ dense projections) (+ norm/head), every LoRA
    (of the stitching layers and of the anchors) merged: the low-rank factors are not counted."""
    embed = plan.embed
    end = ("norm.", "fc_norm.", "head.", "neck.")  # the final norm (SAM: its neck) and classifier
    count = sum(p.numel() for n, p in embed.named_parameters() if not n.startswith(("blocks.", *end)))
    modules = {id(m): m for m in plan.layers}
    if with_features:
        modules.update({id(t.projection): t.projection for ts in plan.taps.values() for t in ts if t.projection})
    count += sum(deployed_numel(m) for m in modules.values())
    if with_head:
        count += sum(deployed_numel(m) for m in (plan.finish.norm, plan.finish.fc_norm, plan.finish.head))
    return count


def _plan_flops(plan: RoutePlan, snnet: StitchedViT, per_module: Dict[str, int], with_features: bool, with_head: bool) -> int:
    index = {id(anchor): i for i, anchor in enumerate(snnet.anchors)}
    first, last = index[id(plan.embed)], index[id(plan.finish)]
    total = per_module.get(f"anchors.{first}.patch_embed", 0) + per_module.get(f"anchors.{first}.norm_pre", 0)
    total += sum(per_module.get(name, 0) for name in plan.layer_names)
    if with_features:
        # every tap projection runs (also one that is a route's link layer too): count each run
        total += sum(per_module.get(t.projection_name, 0) for ts in plan.taps.values() for t in ts if t.projection_name)
    if with_head:
        total += sum(per_module.get(f"anchors.{last}.{m}", 0) for m in ("norm", "fc_norm", "head_drop", "head"))
    return total


def cache_key(snnet: StitchedViT, input_size: Tuple[int, int], mode: str, head_key: str) -> str:
    payload = json.dumps(
        {"v": CACHE_VERSION, "snnet": snnet.config(), "input": list(input_size), "mode": mode, "head": head_key},
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def build_flops_table(
    snnet: StitchedViT,
    input_size: Tuple[int, int],
    mode: str = "features",
    head_gflops: float = 0.0,
    head_params: int = 0,
    head_key: str = "",
    cache_dir: Optional[str] = None,
) -> FlopsTable:
    """Count GFLOPs and params of every stitch of ``snnet`` at ``input_size`` ``(H, W)``.

    Args:
        mode: ``"features"`` (route up to the dense features, as dense heads use it) or ``"classify"``
            (route + final norm + classifier).
        head_gflops / head_params: constant task-head cost added to every stitch.
        head_key: names the head in the cache key (e.g. ``"dpt-256"``); tables for different heads,
            anchors, input sizes or modes never share a cache entry.
        cache_dir: where to cache the table as JSON (``None``: no cache). A cache that is unreadable, edited
            or does not fit this SN-Net (``_cache_problem``) is recounted and rewritten, with a warning.

    Counting leaves torch's random state as it was, so a seeded run draws the same numbers whether it reads
    the cache or counts the table.

    Raises ``AtomicWriteError`` naming the cache file if it cannot be written (e.g. the disk is full).
    """
    if mode not in ("features", "classify"):
        raise ValueError(f"mode must be 'features' or 'classify', got {mode!r}")
    input_size = (int(input_size[0]), int(input_size[1]))
    path = None
    if cache_dir is not None:
        path = os.path.join(cache_dir, f"flops_{cache_key(snnet, input_size, mode, head_key)}.json")
        if os.path.isfile(path):
            table = _read_cache(path, snnet, input_size, head_gflops, head_params)
            if table is not None:
                return table
    start = time.perf_counter()
    with_head = mode == "classify"
    device = next(snnet.parameters()).device
    images = torch.zeros(1, snnet.anchors[FAST].patch_embed.proj.in_channels, *input_size, device=device)
    was_training = snnet.training
    snnet.eval()
    with torch.no_grad(), rng_untouched(device), base_linears(snnet.anchors):  # backbone LoRA counted merged
        probe = _ComponentProbe(snnet, with_head)  # merged stitching layers: nn.Linear draws its init
        per_module = dict(flop_counter(probe, (images,)).by_module())
    snnet.train(was_training)
    gflops, params = {}, {}
    for sid in snnet.space.ids:
        plan = snnet.plan(sid)
        gflops[sid] = _plan_flops(plan, snnet, per_module, not with_head, with_head) / 1e9 + head_gflops
        params[sid] = (plan_params(plan, not with_head, with_head) + head_params) / 1e6
    table = FlopsTable(gflops, params, input_size, head_gflops, head_params / 1e6)
    logger.info("FLOPs table of %d stitches counted in %.1fs", len(gflops), time.perf_counter() - start)
    if path is not None:
        write_json_atomic(path, table.to_json())
    return table
