"""Architecture figures of docs/fidelity.md's "Sources" table, counted from the code (random weights; fvcore GFLOPs
are multiply-adds, as in upstream's tables and the paper's figures), next to the reference values they are
checked against. Prints one Markdown table.

    python benchmarks/fidelity_figures.py          # about 30 s on one CPU thread

References, all from files of upstream SN-Netv2 (github.com/ziplab/SN-Netv2) or the paper:
- classification/results/stitches_res_s_l.txt: per-stitch FLOPs of DeiT3-S/L at 224 (cfg_id 0 and 1: anchors);
- depth_estimation/model_flops/flops_dpt_deit3_s_stitch_l_nyu.json: per-stitch FLOPs of DeiT3-S/L + DPT at
  480x640 (min and max over its 134 stitches); tests/test_dpt_model.py compares every stitch;
- the paper, Sec. 4.2: 13 FLOPs intervals for DeiT3-S/L; Table 1: DeiT3-S / DeiT3-L backbone at 512x512.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import List, Tuple

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from projects.snnet_dpt.model import ModelSpec, build_model, depth_flops_table  # noqa: E402
from snnet_core import StitchedViT, build_anchor, build_flops_table, flops_bins  # noqa: E402

FAST, SLOW = "deit3_small_patch16_224", "deit3_large_patch16_224"
UPSTREAM_CLS_GFLOPS = (4.608338304, 61.604135936)  # stitches_res_s_l.txt, cfg_id 0 and 1
UPSTREAM_DPT_GFLOPS = (208.875853824, 602.6084352)  # flops_dpt_deit3_s_stitch_l_nyu.json, min and max
PAPER_TABLE1_GFLOPS = (32.0, 363.0)  # paper Table 1, DeiT3-S / DeiT3-L at 512x512
PAPER_ROS_BINS = 13  # paper Sec. 4.2: anchors drawn with probability 2/13


def deit3_s_l(mode: str) -> StitchedViT:
    """DeiT3-S/L SN-Net (random weights, position tables at 224); ``mode`` "classify" keeps the classifiers."""
    classes = 1000 if mode == "classify" else 0
    fast, slow = (build_anchor(name, num_classes=classes) for name in (FAST, SLOW))
    return StitchedViT(fast, slow, lora_rank=4, out_indices=(4, 11, 17, 23)).eval()


def rows() -> List[Tuple[str, str, str, str]]:
    out = []
    net = deit3_s_l("classify")
    table = build_flops_table(net, (224, 224), mode="classify")
    params = [sum(p.numel() for p in a.parameters()) / 1e6 for a in net.anchors]
    for i, name in enumerate(("DeiT3-S", "DeiT3-L")):
        out.append((f"{name} GFLOPs / params at 224 (classifier)", f"{table.gflops[i]:.4f} G / {params[i]:.1f} M",
                    f"{UPSTREAM_CLS_GFLOPS[i]:.4f} G", "upstream stitches_res_s_l.txt"))
    out.append(("ROS bins, DeiT3-S/L at 224, t = 1 GFLOPs", str(len(flops_bins(table.gflops, 1.0))),
                str(PAPER_ROS_BINS), "paper Sec. 4.2"))

    backbone = build_flops_table(deit3_s_l("features"), (512, 512), mode="features")
    out.append(("DeiT3-S / DeiT3-L backbone GFLOPs at 512x512", f"{backbone.gflops[0]:.1f} / {backbone.gflops[1]:.1f}",
                f"{PAPER_TABLE1_GFLOPS[0]:.0f} / {PAPER_TABLE1_GFLOPS[1]:.0f}",
                "paper Table 1 (SETR; ours: backbone only)"))

    model = build_model(ModelSpec()).eval()
    dpt = depth_flops_table(model, (480, 640))
    head_params = sum(p.numel() for p in model.head.parameters())
    out.append(("DPT head params / GFLOPs at 480x640", f"{head_params / 1e6:.3f} M / {dpt.head_gflops:.2f} G",
                "toolbox DPTHead (same layers)", "tests/test_dpt_model.py re-implements it"))
    lo, hi = min(dpt.gflops.values()), max(dpt.gflops.values())
    out.append(("DeiT3-S/L + DPT GFLOPs at 480x640, 134 stitches", f"{lo:.3f} - {hi:.3f}",
                f"{UPSTREAM_DPT_GFLOPS[0]:.3f} - {UPSTREAM_DPT_GFLOPS[1]:.3f}",
                "upstream flops_dpt_deit3_s_stitch_l_nyu.json"))
    out.append(("ROS bins, DeiT3-S/L + DPT at 480x640, t = 10 GFLOPs", str(len(flops_bins(dpt.gflops, 10.0))),
                str(PAPER_ROS_BINS), "paper Sec. 4.2"))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    torch.set_num_threads(parser.parse_args().threads)
    print("| quantity | this project (counted) | reference | reference source |")
    print("|---|---|---|---|")
    for row in rows():
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
