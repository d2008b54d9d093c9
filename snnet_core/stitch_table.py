"""Print and save the stitch table (id, upstream id, type, route, GFLOPs, params, ROS bin) of two timm anchors.

    python -m snnet_core.stitch_table --anchors deit3_small_patch16_224 deit3_large_patch16_224 \\
        --img-size 224 --output-dir output/stitch_table [--sort upstream_id]

``upstream_id`` is the stitch's id in upstream SN-Netv2's code (its per-stitch result files and
``reset_stitch_id``); it is empty for depth pairs upstream's enumeration does not cover.
"""
from __future__ import annotations

import argparse
import csv
import os
from typing import TYPE_CHECKING, Any, Dict, List, Optional

from snnet_core.io.atomic_io import write_atomic, write_json_atomic
from .cli import add_debug_argument, run_command
from snnet_core.training.sampling import flops_bins
from snnet_core.model.stitch_space import ROUTE_TYPES

if TYPE_CHECKING:  # imported where used: --help needs neither torch nor timm
    from snnet_core.model.flops import FlopsTable
    from snnet_core.model.snnet import StitchedViT

SORT_KEYS = ("gflops", "id", "upstream_id")


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--anchors", nargs=2, default=["deit3_small_patch16_224", "deit3_large_patch16_224"],
                        metavar=("FAST", "SLOW"), help="timm model names of the small and large anchor")
    parser.add_argument("--img-size", nargs="+", type=int, default=[224], help="H [W] of the input")
    parser.add_argument("--mode", choices=["features", "classify"], default="classify")
    parser.add_argument("--route-types", nargs="+", default=list(ROUTE_TYPES), choices=ROUTE_TYPES)
    parser.add_argument("--flops-step", type=float, default=1.0, help="ROS bin width in GFLOPs")
    parser.add_argument("--sort", choices=SORT_KEYS, default="gflops",
                        help="row order (upstream_id: as upstream SN-Netv2's per-stitch result files)")
    parser.add_argument("--output-dir", default="output/stitch_table")
    add_debug_argument(parser)
    return parser.parse_args(argv)


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
    fast, slow = (build_anchor(name, img_size=size, num_classes=1000) for name in args.anchors)
    net = StitchedViT(fast, slow, route_types=args.route_types)
    table = build_flops_table(net, size, mode=args.mode, cache_dir=os.path.join(args.output_dir, "cache"))
    rows = stitch_rows(net, table, args.flops_step, args.sort)
    num_bins = len({r["ros_bin"] for r in rows})
    write_json_atomic(os.path.join(args.output_dir, "stitches.json"),
                      {"anchors": args.anchors, "input_size": size, "mode": args.mode, "stitches": rows})

    def write_csv(f) -> None:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)

    write_atomic(os.path.join(args.output_dir, "stitches.csv"), write_csv)
    print(f"{len(rows)} stitches of {args.anchors[0]} + {args.anchors[1]} at {size[0]}x{size[1]} "
          f"({', '.join(f'{k} {v}' for k, v in net.space.count_by_type().items())}); "
          f"{num_bins} FLOPs bins of {args.flops_step:g} GFLOPs")
    print(f"{'id':>4} {'upstream':>8} {'type':<6} {'GFLOPs':>8} {'params(M)':>9}  route")
    for r in rows:
        upstream = "-" if r["upstream_id"] is None else r["upstream_id"]
        print(f"{r['id']:>4} {upstream:>8} {r['type']:<6} {r['gflops']:>8.2f} {r['params_m']:>9.1f}  {r['route']}")
    print(f"wrote {args.output_dir}/stitches.json and stitches.csv")


if __name__ == "__main__":
    run_command(main, "python -m snnet_core.stitch_table")
