"""Print and save the stitch table (id, upstream id, type, route, GFLOPs, params, ROS bin) of timm anchors.

    python -m snnet_core.stitch_table --anchors deit3_small_patch16_224 deit3_large_patch16_224 \\
        --img-size 224 --output-dir output/stitch_table [--sort upstream_id]
    python -m snnet_core.stitch_table --anchors deit_tiny_patch16_224 deit_small_patch16_224 \\
        deit_base_patch16_224 --window-kernel 2 --window-stride 1 --output-dir output/stitch_table_v1

Two anchors give SN-Netv2's two-way space; three or more (or ``--space v1`` with two) SN-Netv1's sliding-window
space with nearest stitching, whose routes name the anchors ``A0`` (smallest) .. ``A{N-1}``.
``upstream_id`` is the stitch's id in upstream's code: SN-Netv2's (its per-stitch result files and
``reset_stitch_id``), or for the sliding-window space SN-Netv1's ``cfg_id`` (``results/stitches_res.txt``); it is
empty where upstream's enumeration does not cover the anchors.
"""
from __future__ import annotations

import argparse
import csv
import os
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

from snnet_core.io.atomic_io import write_atomic, write_json_atomic
from .cli import add_debug_argument, run_command
from snnet_core.training.sampling import flops_bins
from snnet_core.model.stitch_space import ROUTE_TYPES, V1_WINDOW

if TYPE_CHECKING:  # imported where used: --help needs neither torch nor timm
    from snnet_core.model.flops import FlopsTable
    from snnet_core.model.snnet import StitchedViT

SORT_KEYS = ("gflops", "id", "upstream_id")
SPACES = ("two-way", "v1")


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--anchors", nargs="+", default=["deit3_small_patch16_224", "deit3_large_patch16_224"],
                        metavar="NAME", help="timm model names of the anchors, smallest first (two or more)")
    parser.add_argument("--space", choices=SPACES, default=None,
                        help="two-way (SN-Netv2; the default for two anchors) or v1 (SN-Netv1's sliding window with "
                             "nearest stitching; the default, and the only one, for three or more)")
    parser.add_argument("--window-kernel", type=int, default=None, metavar="K",
                        help=f"blocks in SN-Netv1's sliding window (implies --space v1; default {V1_WINDOW[0]})")
    parser.add_argument("--window-stride", type=int, default=None, metavar="S",
                        help=f"stride of SN-Netv1's sliding window (implies --space v1; default {V1_WINDOW[1]})")
    parser.add_argument("--img-size", nargs="+", type=int, default=[224], help="H [W] of the input")
    parser.add_argument("--mode", choices=["features", "classify"], default="classify")
    parser.add_argument("--route-types", nargs="+", default=None, choices=ROUTE_TYPES,
                        help="keep these route types (default: every type of the space)")
    parser.add_argument("--flops-step", type=float, default=1.0, help="ROS bin width in GFLOPs")
    parser.add_argument("--sort", choices=SORT_KEYS, default="gflops",
                        help="row order (upstream_id: as upstream's per-stitch result files, SN-Netv2's or, for the "
                             "sliding-window space, SN-Netv1's cfg_id)")
    parser.add_argument("--output-dir", default="output/stitch_table")
    add_debug_argument(parser)
    args = parser.parse_args(argv)
    args.window = _window(parser, args)
    return args


def _window(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Optional[Tuple[int, int]]:
    """The ``(kernel, stride)`` of the sliding-window space the flags ask for; ``None`` for the two-way space."""
    window_flags = args.window_kernel is not None or args.window_stride is not None
    if len(args.anchors) < 2:
        parser.error(f"--anchors needs at least two timm model names, got {args.anchors}")
    if args.space == "two-way" and (len(args.anchors) > 2 or window_flags):
        parser.error("--space two-way stitches two anchors without a window: drop --window-kernel/--window-stride "
                     "and pass two --anchors, or use --space v1")
    if args.space != "v1" and len(args.anchors) == 2 and not window_flags:
        return None
    kernel = V1_WINDOW[0] if args.window_kernel is None else args.window_kernel
    stride = V1_WINDOW[1] if args.window_stride is None else args.window_stride
    if kernel < 1 or stride < 1:
        parser.error(f"--window-kernel and --window-stride must be >= 1, got {kernel} and {stride}")
    return kernel, stride


def stitch_rows(net: StitchedViT, table: FlopsTable, flops_step: float, sort: str = "gflops") -> List[Dict[str, Any]]:
    """One row per stitch of ``net``: ids (ours and upstream's, ``None`` where upstream has none), type,
    route, GFLOPs, params (M) and ROS bin index, ordered by ``sort`` (one of ``SORT_KEYS``)."""
    if sort not in SORT_KEYS:
        raise ValueError(f"sort must be one of {SORT_KEYS}, got {sort!r}")
    from snnet_core.model.upstream import upstream_stitch_id

    try:
        upstream = {s.id: upstream_stitch_id(net.space, s.id) for s in net.space}
    except ValueError:  # upstream's enumeration does not cover these depths
        upstream = {s.id: None for s in net.space}
    bin_of = {sid: b for b, ids in enumerate(flops_bins(table.gflops, flops_step)) for sid in ids}
    rows = [
        {"id": s.id, "upstream_id": upstream[s.id], "type": s.kind, "route": s.route,
         "gflops": round(table.gflops[s.id], 3), "params_m": round(table.params_m[s.id], 2), "ros_bin": bin_of[s.id]}
        for s in net.space
    ]
    order = {"gflops": lambda r: (table.gflops[r["id"]], r["id"]), "id": lambda r: r["id"],
             "upstream_id": lambda r: (r["upstream_id"] is None, r["upstream_id"] or 0, r["id"])}[sort]
    return sorted(rows, key=order)


def main(argv: Optional[List[str]] = None) -> None:
    args = parse_args(argv)
    from snnet_core.model.anchors import build_anchor
    from snnet_core.model.flops import build_flops_table
    from snnet_core.model.snnet import StitchedViT

    size = (args.img_size[0], args.img_size[-1])
    anchors = [build_anchor(name, img_size=size, num_classes=1000) for name in args.anchors]
    net = StitchedViT(*anchors, route_types=args.route_types, window=args.window)
    table = build_flops_table(net, size, mode=args.mode, cache_dir=os.path.join(args.output_dir, "cache"))
    rows = stitch_rows(net, table, args.flops_step, args.sort)
    num_bins = len({r["ros_bin"] for r in rows})
    summary = {"anchors": args.anchors, "input_size": size, "mode": args.mode, "stitches": rows}
    if args.window is not None:
        summary["window"] = {"kernel": args.window[0], "stride": args.window[1]}
    write_json_atomic(os.path.join(args.output_dir, "stitches.json"), summary)

    def write_csv(f) -> None:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)

    write_atomic(os.path.join(args.output_dir, "stitches.csv"), write_csv)
    named = " + ".join(args.anchors) if args.window is None else ", ".join(
        f"{letter} = {name}" for letter, name in zip(net.space.names, args.anchors))
    print(f"{len(rows)} stitches of {named} at {size[0]}x{size[1]} ({net.space.describe()}; "
          f"{', '.join(f'{k} {v}' for k, v in net.space.count_by_type().items())}); "
          f"{num_bins} FLOPs bins of {args.flops_step:g} GFLOPs")
    print(f"{'id':>4} {'upstream':>8} {'type':<6} {'GFLOPs':>8} {'params(M)':>9}  route")
    for r in rows:
        upstream = "-" if r["upstream_id"] is None else r["upstream_id"]
        print(f"{r['id']:>4} {upstream:>8} {r['type']:<6} {r['gflops']:>8.2f} {r['params_m']:>9.1f}  {r['route']}")
    print(f"wrote {args.output_dir}/stitches.json and stitches.csv")


if __name__ == "__main__":
    run_command(main, "python -m snnet_core.stitch_table")
