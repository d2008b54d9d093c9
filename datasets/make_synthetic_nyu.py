#!/usr/bin/env python
"""Write a small synthetic NYUv2 in both real layouts, for tests and CPU demos.

Scenes are ray-cast rooms (floor, ceiling, side and back walls, boxes standing on the floor) seen by a
pinhole camera with NYUv2's focal length; the depth is the z-depth of the first hit (0.9 to 9.6 m). The
image is learnable from depth cues: surfaces carry a world-space checker texture (finer in the image the
farther it is), Lambertian shading and a distance falloff of brightness.

Layouts written under ``--output``:

* official: ``nyu_depth_v2_labeled.mat`` as MATLAB v7.3 (HDF5 with the 512-byte MAT header), column-major
  like MATLAB writes it: ``images`` (N, 3, W, H) uint8, ``depths`` (N, W, H) float32 metres (dense, the
  in-painted ground truth) and ``rawDepths`` (N, W, H) float32 metres (the same depth with sensor holes set
  to 0); ``splits.mat`` (v5, read by scipy) with 1-based ``trainNdxs`` / ``testNdxs`` (interleaved, like the
  real split).
* sync (BTS): ``sync/<scene>/rgb_XXXXX.jpg`` + ``sync_depth_XXXXX.png`` for train,
  ``official_splits/test/<scene>/...`` for test, split files ``nyudepthv2_{train,test}_files_with_gt.txt``
  (``rgb depth focal`` per line). The sync frames are the labeled file's images and ``rawDepths`` (holes
  included) as uint16 millimetres, truncated like BTS's extraction of the official test split.

Usage: ``python datasets/make_synthetic_nyu.py --output data/nyu_synthetic --train 40 --test 10 --size 240 320``
"""
from __future__ import annotations

import os
import sys

# run as a script, the repository's packages (snnet_core, projects, datasets) are imported from the
# checkout: only snnet_core is installed, so that `projects`/`datasets` shadow nothing elsewhere
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse
import io
import time
from typing import Dict, List, Sequence, Tuple

import cv2
import numpy as np

from datasets.dataset_files import write_image
from snnet_core.io.atomic_io import write_atomic
from snnet_core.cli import add_debug_argument, run_command

NYU_FOCAL = 518.8579  # at 640 pixels wide
NYU_SIZE = (480, 640)
MAT_HEADER_BYTES = 512


def _ray_box(dirs: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Slab test of rays from the origin with directions ``(H, W, 3)`` against an axis-aligned box.

    Returns the entry distance (``inf`` on a miss) and the index of the entry face's axis.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        t1, t2 = lo / dirs, hi / dirs
    t_near, t_far = np.minimum(t1, t2), np.maximum(t1, t2)
    t_near = np.nan_to_num(t_near, nan=-np.inf)
    t_far = np.nan_to_num(t_far, nan=np.inf)
    entry, exit_ = t_near.max(axis=-1), t_far.min(axis=-1)
    hit = (entry <= exit_) & (entry > 0)
    return np.where(hit, entry, np.inf), t_near.argmax(axis=-1)


def render_frame(index: int, size: Tuple[int, int] = NYU_SIZE, seed: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """Render frame ``index``: ``image`` ``(H, W, 3)`` uint8 RGB and ``depth`` ``(H, W)`` float32 metres."""
    rng = np.random.default_rng([seed, index])
    h, w = size
    focal = NYU_FOCAL * w / NYU_SIZE[1]
    v, u = np.mgrid[0:h, 0:w].astype(np.float64)
    dirs = np.stack([(u - (w - 1) / 2) / focal, (v - (h - 1) / 2) / focal, np.ones_like(u)], axis=-1)  # y down
    cam_height = rng.uniform(1.1, 1.6)
    room = {"floor": cam_height, "ceiling": -(2.8 - cam_height), "left": -rng.uniform(1.5, 3.0),
            "right": rng.uniform(1.5, 3.0), "back": rng.uniform(4.5, 9.5)}
    # surfaces: (distance t along each ray, axis of the surface normal)
    with np.errstate(divide="ignore"):
        candidates = [
            (np.where(dirs[..., 1] > 0, room["floor"] / dirs[..., 1], np.inf), 1),
            (np.where(dirs[..., 1] < 0, room["ceiling"] / dirs[..., 1], np.inf), 1),
            (np.where(dirs[..., 0] < 0, room["left"] / dirs[..., 0], np.inf), 0),
            (np.where(dirs[..., 0] > 0, room["right"] / dirs[..., 0], np.inf), 0),
            (np.full((h, w), room["back"]), 2),
        ]
    for _ in range(int(rng.integers(1, 4))):
        bw, bh, bd = rng.uniform(0.4, 1.2), rng.uniform(0.4, 1.4), rng.uniform(0.4, 1.0)
        z0 = rng.uniform(1.5, room["back"] - bd - 0.2)
        x0 = rng.uniform(room["left"] + 0.1, room["right"] - bw - 0.1)
        t, axis = _ray_box(dirs, np.array([x0, cam_height - bh, z0]), np.array([x0 + bw, cam_height, z0 + bd]))
        candidates.append((t, axis))
    t_all = np.stack([c[0] for c in candidates])
    surface = t_all.argmin(axis=0)
    depth = np.take_along_axis(t_all, surface[None], axis=0)[0]  # dirs z = 1: t is the z-depth
    normal_axis = np.zeros((h, w), dtype=np.int64)
    for k, (_, axis) in enumerate(candidates):
        normal_axis = np.where(surface == k, axis, normal_axis)
    albedo = rng.uniform(0.35, 1.0, size=(len(candidates), 3))
    point = dirs * depth[..., None]
    # checker on the two world axes spanning each surface, 0.25 m tiles
    tangent = [np.where(normal_axis == 0, point[..., 2], point[..., 0]),
               np.where(normal_axis == 1, point[..., 2], point[..., 1])]
    checker = (np.floor(tangent[0] / 0.25) + np.floor(tangent[1] / 0.25)) % 2
    light = np.array([0.3, -0.8, -0.5]) / np.linalg.norm([0.3, -0.8, -0.5])
    lambert = 0.45 + 0.55 * np.abs(light[normal_axis])
    shade = (0.7 + 0.3 * checker) * lambert * np.exp(-depth / 7.0)
    image = albedo[surface] * shade[..., None] * 255.0 * 1.6
    image += rng.normal(0.0, 2.0, size=image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), depth.astype(np.float32)


def sensor_holes(depth: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``depth`` with a few rectangular holes (0) like Kinect dropouts."""
    out = depth.copy()
    h, w = depth.shape
    for _ in range(3):
        y, x = int(rng.integers(h)), int(rng.integers(w))
        out[y:y + max(1, h // 20), x:x + max(1, w // 20)] = 0
    return out


def mat73_header() -> bytes:
    """The 128-byte MAT-file header that MATLAB puts in the user block of a v7.3 (HDF5) file."""
    created = time.strftime("%a %b %d %H:%M:%S %Y")
    text = f"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: {created} HDF5 schema 1.00 ."
    return text.encode().ljust(116, b" ") + b" " * 8 + b"\x00\x02" + b"IM"


def write_labeled_mat(path: str, frames: Sequence[Tuple[np.ndarray, np.ndarray]],
                      raw_depths: Sequence[np.ndarray]) -> None:
    """``frames`` [(image (H, W, 3), filled depth (H, W))] and ``raw_depths`` [(H, W), 0 = hole] as the official
    labeled file (column-major HDF5: ``images``, ``depths``, ``rawDepths``)."""
    import h5py

    n = len(frames)
    h, w = frames[0][1].shape
    buffer = io.BytesIO()  # built in memory, then written atomically
    with h5py.File(buffer, "w", userblock_size=MAT_HEADER_BYTES) as f:
        images = f.create_dataset("images", (n, 3, w, h), dtype=np.uint8, chunks=(1, 3, w, h))
        depths = f.create_dataset("depths", (n, w, h), dtype=np.float32, chunks=(1, w, h))
        raw = f.create_dataset("rawDepths", (n, w, h), dtype=np.float32, chunks=(1, w, h))
        for i, ((image, depth), raw_depth) in enumerate(zip(frames, raw_depths)):
            images[i] = image.transpose(2, 1, 0)  # MATLAB images(H, W, 3, N) seen reversed by HDF5
            depths[i] = depth.T
            raw[i] = raw_depth.T
        for name, cls in (("images", "uint8"), ("depths", "single"), ("rawDepths", "single")):
            f[name].attrs["MATLAB_class"] = np.bytes_(cls)
    header = mat73_header()
    buffer.getbuffer()[:len(header)] = header
    write_atomic(path, lambda f: f.write(buffer.getbuffer()), binary=True)


def write_splits_mat(path: str, train_ids: Sequence[int], test_ids: Sequence[int]) -> None:
    """``splits.mat`` with 1-based column vectors (doubles, as MATLAB saves them)."""
    import scipy.io

    splits = {"trainNdxs": np.asarray(train_ids, dtype=np.float64)[:, None] + 1,
              "testNdxs": np.asarray(test_ids, dtype=np.float64)[:, None] + 1}
    write_atomic(path, lambda f: scipy.io.savemat(f, splits), binary=True)


def write_sync_split(root: str, list_path: str, frames: Dict[int, Tuple[np.ndarray, np.ndarray]],
                     leading_slash: bool) -> None:
    """``frames`` {index: (image (H, W, 3), raw depth (H, W) metres)} as ``<root>/<scene>/rgb_XXXXX.jpg`` +
    ``sync_depth_XXXXX.png`` (uint16 mm, holes = 0) and their split file."""
    focal = NYU_FOCAL * next(iter(frames.values()))[1].shape[1] / NYU_SIZE[1]
    lines: List[str] = []
    for i, (image, depth) in frames.items():
        scene = f"synthetic_room_{i // 5:04d}"
        rgb_rel, depth_rel = f"{scene}/rgb_{i:05d}.jpg", f"{scene}/sync_depth_{i:05d}.png"
        write_image(os.path.join(root, rgb_rel), cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
        depth_mm = np.floor(depth * 1000.0).astype(np.uint16)  # truncated, like BTS's test-set extraction
        write_image(os.path.join(root, depth_rel), depth_mm)
        prefix = "/" if leading_slash else ""
        lines.append(f"{prefix}{rgb_rel} {prefix}{depth_rel} {focal:.4f}")
    write_atomic(list_path, lambda f: f.write("\n".join(lines) + "\n"))


def make_synthetic_nyu(output: str, num_train: int = 40, num_test: int = 10, size: Tuple[int, int] = NYU_SIZE,
                       seed: int = 0, layouts: Sequence[str] = ("mat", "sync")) -> Dict[str, List[int]]:
    """Render ``num_train + num_test`` frames and write them in ``layouts``; returns the 0-based split ids."""
    if num_train < 1 or num_test < 1:
        raise ValueError("need at least one train and one test frame")
    os.makedirs(output, exist_ok=True)
    n = num_train + num_test
    frames = [render_frame(i, size, seed) for i in range(n)]
    raw_depths = [sensor_holes(depth, np.random.default_rng([seed, i, 1])) for i, (_, depth) in enumerate(frames)]
    # interleave like the official split: every k-th frame is a test frame
    stride = n / num_test
    test_ids = sorted({int(k * stride + stride / 2) for k in range(num_test)})
    train_ids = [i for i in range(n) if i not in set(test_ids)]
    if "mat" in layouts:
        write_labeled_mat(os.path.join(output, "nyu_depth_v2_labeled.mat"), frames, raw_depths)
        write_splits_mat(os.path.join(output, "splits.mat"), train_ids, test_ids)
    if "sync" in layouts:
        raw_frames = {i: (image, raw) for i, ((image, _), raw) in enumerate(zip(frames, raw_depths))}
        write_sync_split(os.path.join(output, "sync"), os.path.join(output, "nyudepthv2_train_files_with_gt.txt"),
                         {i: raw_frames[i] for i in train_ids}, leading_slash=True)
        write_sync_split(os.path.join(output, "official_splits", "test"),
                         os.path.join(output, "nyudepthv2_test_files_with_gt.txt"),
                         {i: raw_frames[i] for i in test_ids}, leading_slash=False)
    return {"train": train_ids, "test": test_ids}


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", required=True)
    p.add_argument("--train", type=int, default=40, help="training frames")
    p.add_argument("--test", type=int, default=10, help="test frames")
    p.add_argument("--size", type=int, nargs=2, default=NYU_SIZE, metavar=("H", "W"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--layouts", nargs="+", choices=("mat", "sync"), default=("mat", "sync"))
    add_debug_argument(p)
    args = p.parse_args(argv)
    splits = make_synthetic_nyu(args.output, args.train, args.test, tuple(args.size), args.seed, args.layouts)
    print(f"wrote {len(splits['train'])} train + {len(splits['test'])} test frames of {args.size[0]}x{args.size[1]} "
          f"({', '.join(args.layouts)} layout) to {args.output}")


if __name__ == "__main__":
    run_command(main)
