"""Print and save the stitch table (id, type, route, GFLOPs, params) of two timm anchors.

    python -m snnet_core.stitch_table --anchors deit3_small_patch16_224 deit3_large_patch16_224 \\
        --img-size 224 --output-dir output/stitch_table
"""
from __future__ import annotations

import argparse
import csv
import json
import os
from typing import List, Optional

from .anchors import build_anchor
from .flops import build_flops_table
from .sampling import flops_bins
from .snnet import StitchedViT
from .stitch_space import ROUTE_TYPES


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--anchors", nargs=2, default=["deit3_small_patch16_224", "deit3_large_patch16_224"],
                        metavar=("FAST", "SLOW"), help="timm model names of the small and large anchor")
    parser.add_argument("--img-size", nargs="+", type=int, default=[224], help="H [W] of the input")
    parser.add_argument("--mode", choices=["features", "classify"], default="classify")
    parser.add_argument("--route-types", nargs="+", default=list(ROUTE_TYPES), choices=ROUTE_TYPES)
    parser.add_argument("--flops-step", type=float, default=1.0, help="ROS bin width in GFLOPs")
    parser.add_argument("--output-dir", default="output/stitch_table")
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> None:
    args = parse_args(argv)
    size = (args.img_size[0], args.img_size[-1])
    fast, slow = (build_anchor(name, img_size=size, num_classes=1000) for name in args.anchors)
    net = StitchedViT(fast, slow, route_types=args.route_types)
    table = build_flops_table(net, size, mode=args.mode, cache_dir=os.path.join(args.output_dir, "cache"))
    bins = flops_bins(table.gflops, args.flops_step)
    bin_of = {sid: b for b, ids in enumerate(bins) for sid in ids}
    rows = [
        {"id": s.id, "type": s.kind, "route": s.route, "gflops": round(table.gflops[s.id], 3),
         "params_m": round(table.params_m[s.id], 2), "ros_bin": bin_of[s.id]}
        for s in sorted(net.space, key=lambda s: table.gflops[s.id])
    ]
    os.makedirs(args.output_dir, exist_ok=True)
    with open(os.path.join(args.output_dir, "stitches.json"), "w") as f:
        json.dump({"anchors": args.anchors, "input_size": size, "mode": args.mode, "stitches": rows}, f, indent=1)
    with open(os.path.join(args.output_dir, "stitches.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"{len(rows)} stitches of {args.anchors[0]} + {args.anchors[1]} at {size[0]}x{size[1]} "
          f"({', '.join(f'{k} {v}' for k, v in net.space.count_by_type().items())}); "
          f"{len(bins)} FLOPs bins of {args.flops_step:g} GFLOPs")
    print(f"{'id':>4} {'type':<6} {'GFLOPs':>8} {'params(M)':>9}  route")
    for r in rows:
        print(f"{r['id']:>4} {r['type']:<6} {r['gflops']:>8.2f} {r['params_m']:>9.1f}  {r['route']}")
    print(f"wrote {args.output_dir}/stitches.json and stitches.csv")


if __name__ == "__main__":
    main()
