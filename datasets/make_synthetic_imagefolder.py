"""Write a small synthetic image-classification dataset in torchvision's ``ImageFolder`` layout (ImageNet's).

Each class is a shape (circle, square, triangle, cross, then more polygons for more classes) in its own colour
(jittered; the classes' colours also differ in brightness, which grayscale keeps) drawn at a random position and
size on a noisy gray background: a tiny ViT trained from scratch for a few CPU seconds learns the classes, and the
colour and grayscale augmentations of the training recipe leave them apart. Images are real JPEG files; every
image is a function of (seed, split, index).

Layout written under ``--output`` (class folders sorted by name give the class indices)::

    train/circle/00000.JPEG ...   train/cross/...   train/square/...   train/triangle/...
    val/circle/00000.JPEG ...     ...

Usage::

    python datasets/make_synthetic_imagefolder.py --output data/imagefolder_synthetic --train 64 --val 16 --size 32
"""
from __future__ import annotations

import os
import sys

# run as a script, the repository's packages (snnet_core, projects, datasets) are imported from the
# checkout: only snnet_core is installed, so that `projects`/`datasets` shadow nothing elsewhere
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse
import math
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw

from snnet_core.cli import add_debug_argument, run_command

SHAPES = ("circle", "square", "triangle", "cross", "pentagon", "hexagon", "star", "diamond")
COLOURS = ((230, 60, 50), (40, 200, 60), (60, 80, 240), (250, 230, 70), (200, 70, 220), (70, 220, 230),
           (255, 150, 40), (140, 90, 40))  # one per shape, of different brightness


def _polygon(kind: str, cx: float, cy: float, r: float, angle: float) -> List[Tuple[float, float]]:
    corners = {"triangle": 3, "square": 4, "diamond": 4, "pentagon": 5, "hexagon": 6}
    if kind == "star":
        return [(cx + (r if k % 2 == 0 else r / 2.5) * math.cos(angle + k * math.pi / 5),
                 cy + (r if k % 2 == 0 else r / 2.5) * math.sin(angle + k * math.pi / 5)) for k in range(10)]
    n = corners[kind]
    offset = angle + (math.pi / 4 if kind == "square" else 0.0)
    return [(cx + r * math.cos(offset + 2 * math.pi * k / n), cy + r * math.sin(offset + 2 * math.pi * k / n))
            for k in range(n)]


def draw_image(kind: str, size: int, rng: np.random.Generator) -> Image.Image:
    """One ``size x size`` RGB image of a ``kind`` shape in its class colour on gray noise."""
    background = rng.uniform(60, 140)
    noise = rng.normal(0, 20, (size, size, 3))
    img = Image.fromarray(np.clip(background + noise, 0, 255).astype(np.uint8))
    colour = tuple(int(np.clip(c + rng.normal(0, 15), 0, 255)) for c in COLOURS[SHAPES.index(kind)])
    r = size * rng.uniform(0.25, 0.4)
    cx, cy = rng.uniform(r + 1, size - r - 1, 2)
    draw = ImageDraw.Draw(img)
    if kind == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
    elif kind == "cross":
        w = r / 3
        draw.rectangle([cx - r, cy - w, cx + r, cy + w], fill=colour)
        draw.rectangle([cx - w, cy - r, cx + w, cy + r], fill=colour)
    else:
        draw.polygon(_polygon(kind, cx, cy, r, rng.uniform(0, 2 * math.pi) if kind != "square" else 0.0),
                     fill=colour)
    return img


def make_synthetic_imagefolder(output: str, num_train: int = 64, num_val: int = 16, size: int = 32,
                               classes: int = 4, seed: int = 0) -> Dict[str, List[str]]:
    """Write ``num_train`` / ``num_val`` images per class into ``<output>/{train,val}/<class>/NNNNN.JPEG``; returns
    the files written per split."""
    if not 1 <= classes <= len(SHAPES):
        raise ValueError(f"--classes {classes}: choose 1 to {len(SHAPES)} ({', '.join(SHAPES)})")
    if size < 16:
        raise ValueError(f"--size {size}: images need at least 16 pixels a side")
    written: Dict[str, List[str]] = {}
    for split_index, (split, count) in enumerate((("train", num_train), ("val", num_val))):
        if count < 1:
            raise ValueError(f"--{split} {count}: give at least one image per class")
        written[split] = []
        for label, kind in enumerate(SHAPES[:classes]):
            folder = os.path.join(output, split, kind)
            os.makedirs(folder, exist_ok=True)
            for index in range(count):
                rng = np.random.default_rng([seed, split_index, label, index])
                path = os.path.join(folder, f"{index:05d}.JPEG")
                draw_image(kind, size, rng).save(path, format="JPEG", quality=95)
                written[split].append(path)
    return written


def main(argv: Optional[Sequence[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", required=True, help="dataset root to write")
    p.add_argument("--train", type=int, default=64, help="training images per class")
    p.add_argument("--val", type=int, default=16, help="validation images per class")
    p.add_argument("--size", type=int, default=32, help="image side in pixels")
    p.add_argument("--classes", type=int, default=4, help=f"number of classes (up to {len(SHAPES)})")
    p.add_argument("--seed", type=int, default=0)
    add_debug_argument(p)
    args = p.parse_args(argv)
    written = make_synthetic_imagefolder(args.output, args.train, args.val, args.size, args.classes, args.seed)
    print(f"wrote {len(written['train'])} train + {len(written['val'])} val images of {args.size}x{args.size} "
          f"({args.classes} classes) to {args.output}")


if __name__ == "__main__":
    run_command(main)
