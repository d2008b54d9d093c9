#!/usr/bin/env python
"""Write a small synthetic semantic-segmentation set in the on-disk layout of ADE20K or COCO-Stuff-10K.

Scenes are a sky above a floor (the horizon at a random height) with a few filled shapes in front (circle, square,
triangle, star, cross, as ``make_synthetic_coco.py`` draws them). Every class has its own hue (jittered, with
pixel noise and a texture on the two backgrounds), so a tiny model trained for a few CPU minutes learns to label
it. The seven classes carry real class ids of the dataset (``SYNTHETIC_CLASSES``: sky, floor, and five object
classes); a one-pixel outline around each shape is unlabeled, as object boundaries often are in the real data.

Both layouts are written under ``--output``, the official release's and, beside it, the prepared labels
(``prepare_ade20k.py`` / ``prepare_coco_stuff10k.py`` run on it)::

    --layout ade20k (default --output output/synthetic_ade20k):
        ADEChallengeData2016/images/{training,validation}/ADE_{train,val}_XXXXXXXX.jpg
        ADEChallengeData2016/annotations/{training,validation}/*.png               0 = other, ADE20K ids 1..150
        ADEChallengeData2016/annotations_detectron2/{training,validation}/*.png    0..149, 255 = ignore
    --layout coco_stuff10k (default --output output/synthetic_coco_stuff10k):
        cocostuff-10k-v1.1/images/COCO_{train,val}2014_XXXXXXXXXXXX.jpg
        cocostuff-10k-v1.1/annotations/*.mat             S: 0 = unlabeled, COCO-Stuff ids 1..182
        cocostuff-10k-v1.1/imageLists/{train,test}.txt
        cocostuff-10k-v1.1/annotations_detectron2/{train,test}/*.png             0..170, 255 = ignore

Deterministic: the same arguments write the same files. An existing dataset folder is refused (``--overwrite``
replaces it).

Usage: ``python datasets/make_synthetic_segmentation.py --layout ade20k --num-train 48 --num-val 12``
"""
from __future__ import annotations

import os
import sys

# run as a script, the repository's packages (snnet_core, projects, datasets) are imported from the
# checkout: only snnet_core is installed, so that `projects`/`datasets` shadow nothing elsewhere
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse
import io
import math
import shutil
import zlib
from typing import List, NamedTuple, Optional, Sequence, Tuple

import cv2
import numpy as np
from tqdm import tqdm

from datasets.dataset_files import write_image
from datasets.make_synthetic_coco import CATEGORIES, shape_mask
from datasets.prepare_ade20k import prepare_ade20k
from datasets.prepare_coco_stuff10k import prepare_coco_stuff10k
from snnet_core.cli import add_debug_argument, run_command
from snnet_core.io.atomic_io import write_atomic

LAYOUTS = ("ade20k", "coco_stuff10k")
DATASET_DIRS = {"ade20k": "ADEChallengeData2016", "coco_stuff10k": "cocostuff-10k-v1.1"}
DEFAULT_OUTPUTS = {"ade20k": "output/synthetic_ade20k", "coco_stuff10k": "output/synthetic_coco_stuff10k"}
COLOUR_JITTER = 25


class SyntheticClass(NamedTuple):
    name: str
    ade20k_id: int  # in the official annotations (1..150; trained as id - 1)
    coco_stuff_id: int  # in the official .mat files (1..182)
    colour: Tuple[int, int, int]  # RGB


# sky and floor, then one class per shape of CATEGORIES, in its order
SYNTHETIC_CLASSES = (
    SyntheticClass("sky", 3, 157, (110, 170, 235)),  # COCO-Stuff: sky-other
    SyntheticClass("floor", 4, 115, (150, 110, 70)),  # COCO-Stuff: floor-other
    SyntheticClass("person", 13, 1, (220, 40, 40)),  # circle
    SyntheticClass("car", 21, 3, (40, 180, 40)),  # square
    SyntheticClass("tree", 5, 169, (40, 70, 230)),  # triangle
    SyntheticClass("grass", 10, 124, (235, 200, 30)),  # star
    SyntheticClass("lamp / clock", 37, 85, (200, 40, 210)),  # cross (ADE20K: lamp, COCO-Stuff: clock)
)


def render_scene(rng: np.random.Generator, size: Tuple[int, int], max_objects: int
                 ) -> Tuple[np.ndarray, np.ndarray]:
    """One scene: image ``(H, W, 3)`` uint8 RGB and label map ``(H, W)`` int64 of indices into
    ``SYNTHETIC_CLASSES``, -1 for unlabeled pixels."""
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    horizon = int(rng.uniform(0.3, 0.7) * h)
    labels = np.where(yy < horizon, 0, 1).astype(np.int64)
    colours = np.array([c.colour for c in SYNTHETIC_CLASSES], float)
    colours += rng.uniform(-COLOUR_JITTER, COLOUR_JITTER, size=colours.shape)
    image = colours[labels]
    image[:horizon] *= (0.8 + 0.2 * yy[:horizon] / max(horizon, 1))[..., None]  # sky: brighter to the horizon
    image[horizon:] *= (0.85 + 0.15 * ((xx[horizon:] // 6 + yy[horizon:] // 6) % 2))[..., None]  # floor tiles
    outline = np.zeros((h, w), dtype=bool)
    for _ in range(int(rng.integers(1, max_objects + 1))):
        shape = int(rng.integers(len(CATEGORIES)))
        radius = float(rng.uniform(0.12, 0.3) * min(h, w))
        center = (rng.uniform(0.15 * w, 0.85 * w), rng.uniform(0.15 * h, 0.85 * h))
        mask = shape_mask(CATEGORIES[shape], center, radius, rng.uniform(0, 2 * math.pi), size)
        labels[mask] = 2 + shape
        image[mask] = colours[2 + shape]
        ring = cv2.dilate(mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool) & ~mask
        outline = (outline & ~mask) | ring
    labels[outline] = -1
    image += rng.normal(0, 6, size=image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), labels


def raw_labels(labels: np.ndarray, layout: str) -> np.ndarray:
    """``render_scene``'s labels as the official release stores them: ADE20K ids (0 = other) or COCO-Stuff ids
    (0 = unlabeled), uint8."""
    ids = [c.ade20k_id if layout == "ade20k" else c.coco_stuff_id for c in SYNTHETIC_CLASSES]
    table = np.array([0] + ids, dtype=np.uint8)  # index 0: the unlabeled -1
    return table[labels + 1]


def _write_mat(path: str, labels: np.ndarray) -> None:
    """``labels`` as the ``S`` of a MATLAB v5 file whose 116-byte header text has no creation time (the same
    arguments write the same bytes)."""
    import scipy.io

    buffer = io.BytesIO()
    scipy.io.savemat(buffer, {"S": labels})
    buffer.getbuffer()[:116] = b"MATLAB 5.0 MAT-file, written by datasets/make_synthetic_segmentation.py".ljust(116)
    write_atomic(path, lambda f: f.write(buffer.getvalue()), binary=True)


def write_split(root: str, layout: str, split: str, num_images: int, image_size: int, max_objects: int,
                seed: int) -> List[str]:
    """Render ``num_images`` scenes of ``split`` (``train`` or ``val``) into the official layout under ``root``;
    returns their file names without extension."""
    rng = np.random.default_rng([seed, zlib.crc32(f"{layout}/{split}".encode())])  # splits differ, runs repeat
    names = []
    for index in tqdm(range(1, num_images + 1), desc=f"synthetic {layout} {split}", unit="img"):
        h = image_size
        w = int(image_size * rng.choice([0.75, 1.0, 1.25, 1.5]))
        image, labels = render_scene(rng, (h, w), max_objects)
        bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
        if layout == "ade20k":
            folder = {"train": "training", "val": "validation"}[split]
            name = f"ADE_{split}_{index:08d}"
            write_image(os.path.join(root, "images", folder, name + ".jpg"), bgr, [cv2.IMWRITE_JPEG_QUALITY, 95])
            write_image(os.path.join(root, "annotations", folder, name + ".png"), raw_labels(labels, layout))
        else:
            name = f"COCO_{split}2014_{index:012d}"
            write_image(os.path.join(root, "images", name + ".jpg"), bgr, [cv2.IMWRITE_JPEG_QUALITY, 95])
            _write_mat(os.path.join(root, "annotations", name + ".mat"), raw_labels(labels, layout))
        names.append(name)
    if layout == "coco_stuff10k":
        list_file = os.path.join(root, "imageLists", {"train": "train", "val": "test"}[split] + ".txt")
        write_atomic(list_file, lambda f: f.write("\n".join(names) + "\n"))
    return names


def make_synthetic_segmentation(output: Optional[str] = None, layout: str = "ade20k", num_train: int = 48,
                                num_val: int = 12, image_size: int = 96, max_objects: int = 3, seed: int = 0,
                                overwrite: bool = False) -> str:
    """Write both splits in the official layout of ``layout`` and prepare them; returns the dataset folder
    (``output/ADEChallengeData2016`` or ``output/cocostuff-10k-v1.1``)."""
    if layout not in LAYOUTS:
        raise ValueError(f"--layout {layout!r}: choose one of {', '.join(LAYOUTS)}")
    if num_train < 1 or num_val < 1:
        raise ValueError(f"--num-train {num_train} --num-val {num_val}: need at least one image in each split")
    root = os.path.join(output or DEFAULT_OUTPUTS[layout], DATASET_DIRS[layout])
    if os.path.lexists(root):
        if not overwrite:
            raise FileExistsError(f"{root} already exists: pass --overwrite to replace it, or give another --output")
        shutil.rmtree(root)
    for split, n in (("train", num_train), ("val", num_val)):
        write_split(root, layout, split, n, image_size, max_objects, seed)
    (prepare_ade20k if layout == "ade20k" else prepare_coco_stuff10k)(root)
    return root


def main(argv: Optional[Sequence[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layout", choices=LAYOUTS, default="ade20k")
    p.add_argument("--output", help=f"folder to write the dataset folder in (default: {DEFAULT_OUTPUTS})")
    p.add_argument("--num-train", type=int, default=48)
    p.add_argument("--num-val", type=int, default=12)
    p.add_argument("--image-size", type=int, default=96, help="image height (width 0.75-1.5x)")
    p.add_argument("--max-objects", type=int, default=3, help="shapes drawn per image (1..N)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset folder")
    add_debug_argument(p)
    args = p.parse_args(argv)
    root = make_synthetic_segmentation(args.output, args.layout, args.num_train, args.num_val, args.image_size,
                                       args.max_objects, args.seed, args.overwrite)
    print(f"wrote {args.num_train} train + {args.num_val} val images ({args.layout} layout, raw and prepared) "
          f"to {root}")


if __name__ == "__main__":
    run_command(main)
