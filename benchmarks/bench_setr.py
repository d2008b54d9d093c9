#!/usr/bin/env python
"""SN-Netv2 + SETR-Naive benchmarks with real DeiT3 shapes (weights zero: FLOPs do not depend on them).

``flops``: the per-stitch GFLOPs (fvcore, multiply-adds) of a SETR config's model at its ``snnet.flops_input_size``
(512x512): the stitched backbone up to its dense features + the decode head, auxiliary heads never counted
(``projects.snnet_setr.model.setr_flops_table``), written to ``setr_flops_<H>x<W>.csv`` (columns ``id``, ``route``,
``gflops``; routes as ``python -m snnet_core.stitch_table`` writes them), with the ROS bins at ``snnet.ros_step_gflops``.
``--compare-upstream JSON`` compares the table with upstream SN-Netv2's per-stitch FLOPs file (e.g. its
``segmentation/model_flops/snnet_flops_setr_naive_512x512_160k_b16_ade20k_deit_3_s_l_224_snnetv2.json``, FLOPs by
upstream stitch id) and prints the largest absolute difference.

    python benchmarks/bench_setr.py --sections flops --output-dir output/bench_setr \\
        [--config-file projects/snnet_setr/configs/ADE20K/setr_naive_snnetv2_deit3_s_l_160k.py] \\
        [--compare-upstream snnet_flops_setr_naive_512x512_160k_b16_ade20k_deit_3_s_l_224_snnetv2.json]
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from typing import Dict

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from detectron2.config import LazyConfig  # noqa: E402

from projects.snnet_setr.model import StitchedSETR, model_for_counting, setr_flops_table  # noqa: E402
from snnet_core import FlopsTable  # noqa: E402
from snnet_core.io.atomic_io import write_atomic  # noqa: E402
from snnet_core.model.upstream import stitch_id_from_upstream  # noqa: E402
from snnet_core.training.sampling import flops_bins  # noqa: E402

DEFAULT_CONFIG = "projects/snnet_setr/configs/ADE20K/setr_naive_snnetv2_deit3_s_l_160k.py"


def flops_section(model: StitchedSETR, size, step: float, output_dir: str) -> FlopsTable:
    start = time.perf_counter()
    table = setr_flops_table(model, size)
    space = model.space
    path = os.path.join(output_dir, f"setr_flops_{size[0]}x{size[1]}.csv")

    def write_csv(f) -> None:
        writer = csv.writer(f)
        writer.writerow(["id", "route", "gflops"])
        for i in space.ids:
            writer.writerow([i, space[i].route, f"{table.gflops[i]:.9f}"])

    write_atomic(path, write_csv)
    g = table.gflops
    print(f"{len(g)} stitches at {size[0]}x{size[1]}: {min(g.values()):.1f} - {max(g.values()):.1f} GFLOPs "
          f"(decode head {table.head_gflops:.2f} G), counted in {time.perf_counter() - start:.0f} s -> {path}")
    print(f"small anchor {g[0]:.4f} G, large anchor {g[1]:.4f} G; ROS at t = {step:g}: "
          f"{len(flops_bins(g, step))} bins")
    return table


def compare_upstream(model: StitchedSETR, table: FlopsTable, path: str) -> None:
    """Print the largest |this table - upstream's| over upstream's stitches and the stitches that differ."""
    with open(path) as f:
        upstream: Dict[str, float] = json.load(f)
    diffs = {}
    for key, flops in upstream.items():
        stitch_id = stitch_id_from_upstream(model.space, int(key))
        diffs[stitch_id] = (int(key), table.gflops[stitch_id] - float(flops) / 1e9)
    equal = [s for s, (_, d) in diffs.items() if abs(d) < 1e-6]
    worst = max(diffs, key=lambda s: abs(diffs[s][1]))
    print(f"upstream {path}: {len(diffs)} stitches, {len(equal)} equal; max |difference| "
          f"{abs(diffs[worst][1]):.3g} GFLOPs (stitch {worst}, upstream {diffs[worst][0]}: {model.space[worst].route})")
    for stitch_id in sorted(set(diffs) - set(equal), key=lambda s: (-abs(diffs[s][1]), s)):
        upstream_id, d = diffs[stitch_id]
        print(f"  {stitch_id:>4} (upstream {upstream_id:>3}) {model.space[stitch_id].route:<32} {d:+.6f} G")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", default=DEFAULT_CONFIG, help="a SETR SN-Net LazyConfig")
    p.add_argument("--sections", nargs="+", choices=("flops",), default=("flops",))
    p.add_argument("--output-dir", default="output/bench_setr")
    p.add_argument("--compare-upstream", metavar="JSON", help="upstream SN-Netv2's per-stitch FLOPs file")
    args = p.parse_args()
    cfg = LazyConfig.load(args.config_file)
    size = tuple(int(s) for s in cfg.snnet.flops_input_size)
    os.makedirs(args.output_dir, exist_ok=True)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.config_file}")
    model = model_for_counting(cfg.model)
    if "flops" in args.sections:
        table = flops_section(model, size, float(cfg.snnet.ros_step_gflops), args.output_dir)
        if args.compare_upstream:
            compare_upstream(model, table, args.compare_upstream)


if __name__ == "__main__":
    main()
