"""Engine benchmarks, each printed as a ratio measured side by side in one run (DeiT3-S/L shapes, random init).

1. Stitching overhead: forward time of a stitch / forward time of the same blocks without stitching layers.
2. LS init peak memory (RSS growth over the resident model) for 10 vs 100 calibration images, at 224 and
   480x640, under glibc's default allocator settings and with a fixed mmap threshold (which returns freed
   large blocks to the OS, so RSS follows live memory).
3. FLOPs table: build time of the 134-stitch table, and the cached second call.
4. Shared route prefixes (``run_stitches``): backbone GFLOPs executed to evaluate all 134 stitches once with
   every shared prefix run once / stitch by stitch (fvcore per-module counts at 480x640), and the wall time of
   both on one batch.

    python benchmarks/bench_core.py [--quick] [--threads N] [--only overhead|memory|flops|prefix]
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import List, Tuple

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from snnet_core import (StitchedViT, build_anchor, build_flops_table, ls_init_stitching_layers,  # noqa: E402
                        prefix_sharing_cost, run_stitches)
from snnet_core.evaluation.prefix_trie import route_step_gflops  # noqa: E402
from snnet_core.model.route import embed_images  # noqa: E402

FAST, SLOW = "deit3_small_patch16_224", "deit3_large_patch16_224"


def build_snnet(lora_rank: int = 16) -> StitchedViT:
    """DeiT3-S/L SN-Net, random weights, position tables at 224 (resampled to any input, as in training)."""
    torch.manual_seed(0)
    return StitchedViT(build_anchor(FAST), build_anchor(SLOW), lora_rank=lora_rank,
                       out_indices=(4, 11, 17, 23)).eval()


@torch.no_grad()
def stitching_overhead(repeats: int, batch: int) -> None:
    net = build_snnet()
    x = torch.randn(batch, 3, 224, 224)
    print(f"\n[1] stitching overhead, DeiT3-S/L at 224, batch {batch}, median of {repeats} (LoRA rank 16, unmerged)")
    print(f"{'stitch':<34} {'stitched ms':>12} {'blocks only ms':>15} {'ratio':>7}")
    for sid in (12, 2, 40, 100):  # FS, FS, FSF, SFS of different lengths
        plan = net.plan(sid)
        # the same blocks without stitching layers: each segment starts from a tensor of its own width
        segments, current = [], []
        for layer, name in zip(plan.layers, plan.layer_names):
            if name.startswith("stitch_"):
                segments.append(current)
                current = []
            else:
                current.append(layer)
        segments.append(current)
        tokens, _ = embed_images(plan.embed, x)
        seg_inputs = [torch.randn(batch, tokens.shape[1], seg[0].norm1.normalized_shape[0]) for seg in segments]

        def blocks_only():
            embed_images(plan.embed, x)
            for seg, h in zip(segments, seg_inputs):
                for block in seg:
                    h = block(h)

        def stitched():
            net(x, sid, with_features=False)

        stitched(), blocks_only()  # warm-up
        t_s, t_b = [], []
        for _ in range(repeats):  # interleaved so both see the same machine state
            for fn, acc in ((stitched, t_s), (blocks_only, t_b)):
                start = time.perf_counter()
                fn()
                acc.append(time.perf_counter() - start)
        ms, mb = statistics.median(t_s) * 1e3, statistics.median(t_b) * 1e3
        print(f"{net.space[sid].route:<34} {ms:>12.1f} {mb:>15.1f} {ms / mb:>7.3f}")


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def ls_memory_child(num_images: int, height: int, width: int) -> None:
    """Run in a subprocess: print the RSS growth during LS init over the resident model."""
    net = build_snnet()
    gen = torch.Generator().manual_seed(0)
    batch = 5

    def batches():
        for _ in range((num_images + batch - 1) // batch):
            yield torch.randn(batch, 3, height, width, generator=gen)

    baseline = _rss_bytes()
    peak = [baseline]
    done = threading.Event()

    def watch():
        while not done.is_set():
            peak[0] = max(peak[0], _rss_bytes())
            time.sleep(0.002)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    start = time.perf_counter()
    ls_init_stitching_layers(net, batches(), num_images=num_images, progress=False)
    done.set()
    watcher.join()
    print(f"RESULT {peak[0] - baseline} {baseline} {time.perf_counter() - start:.1f}")


ALLOCATORS = {  # glibc's default moves its mmap threshold up as large blocks are freed, then keeps them
    "glibc default": {},
    "fixed mmap threshold": {"MALLOC_MMAP_THRESHOLD_": str(1 << 20)},
}


def ls_memory(sizes: List[Tuple[int, int]], counts: Tuple[int, int], allocators: List[str]) -> None:
    print(f"\n[2] LS init peak memory growth over the resident DeiT3-S/L (batches of 5 images), "
          f"{counts[0]} vs {counts[1]} images")
    print(f"{'input':<9} {'allocator':<21} {'images':>6} {'growth MiB':>11} {'model RSS MiB':>14} {'time s':>7}")
    for h, w in sizes:
        for allocator in allocators:
            growth = []
            for n in counts:
                out = subprocess.run([sys.executable, __file__, "--ls-child", str(n), str(h), str(w)],
                                     capture_output=True, text=True, check=True,
                                     env=dict(os.environ, **ALLOCATORS[allocator])).stdout
                line = next(l for l in out.splitlines() if l.startswith("RESULT"))
                g, base, secs = line.split()[1:]
                growth.append(int(g))
                print(f"{h}x{w:<5} {allocator:<21} {n:>6} {int(g) / 2**20:>11.0f} {int(base) / 2**20:>14.0f} "
                      f"{float(secs):>7.1f}")
            print(f"{'':<9} {allocator:<21} ratio {counts[1]} / {counts[0]} images: {growth[1] / growth[0]:.3f}")


def flops_table_timing() -> None:
    net = build_snnet()
    with tempfile.TemporaryDirectory() as cache:
        start = time.perf_counter()
        build_flops_table(net, (224, 224), mode="classify", cache_dir=cache)
        first = time.perf_counter() - start
        start = time.perf_counter()
        build_flops_table(net, (224, 224), mode="classify", cache_dir=cache)
        second = time.perf_counter() - start
    print(f"\n[3] FLOPs table of {len(net.space)} stitches at 224: built in {first:.2f}s, cached call "
          f"{second * 1e3:.1f} ms (ratio {first / second:.0f}x)")


@torch.no_grad()
def prefix_sharing(size: Tuple[int, int], time_size: Tuple[int, int], repeats: int) -> None:
    net = build_snnet()
    shared, naive = prefix_sharing_cost(net, route_step_gflops(net, size))
    print(f"\n[4] shared route prefixes, all {len(net.space)} stitches of DeiT3-S/L")
    print(f"backbone GFLOPs at {size[0]}x{size[1]}: {shared:.0f} with sharing / {naive:.0f} stitch by stitch "
          f"= {shared / naive:.3f} (target <= 0.40)")
    x = torch.randn(1, 3, *time_size)

    def each():
        for sid in net.space.ids:
            net(x, sid)

    def together():
        for _ in run_stitches(net, x):
            pass

    times = {each: [], together: []}
    for _ in range(repeats):  # interleaved
        for fn in times:
            start = time.perf_counter()
            fn()
            times[fn].append(time.perf_counter() - start)
    t_each, t_together = statistics.median(times[each]), statistics.median(times[together])
    print(f"wall time at {time_size[0]}x{time_size[1]}, batch 1, dense features, median of {repeats}: "
          f"{t_together:.1f} s shared / {t_each:.1f} s stitch by stitch = {t_together / t_each:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="fewer repeats; LS memory at 224 with the fixed mmap threshold only")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--only", choices=["overhead", "memory", "flops", "prefix"], help="run one benchmark")
    parser.add_argument("--ls-child", nargs=3, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.ls_child:
        ls_memory_child(*args.ls_child)
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU")
    if args.only in (None, "overhead"):
        stitching_overhead(repeats=5 if args.quick else 15, batch=1)
    if args.only in (None, "memory"):
        if args.quick:
            ls_memory([(224, 224)], (10, 100), ["fixed mmap threshold"])
        else:
            ls_memory([(224, 224), (480, 640)], (10, 100), list(ALLOCATORS))
    if args.only in (None, "flops"):
        flops_table_timing()
    if args.only in (None, "prefix"):
        prefix_sharing((480, 640), (224, 224), repeats=1 if args.quick else 3)


if __name__ == "__main__":
    main()
