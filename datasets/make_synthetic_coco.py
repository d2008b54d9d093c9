"""Write a small synthetic instance-segmentation dataset in the real COCO JSON layout.

Images hold a few filled shapes of several classes (circle, square, triangle, star, cross), each class
with its own hue (jittered, so that a detector trained for a few CPU minutes from scratch can name
what it finds), with sizes spanning COCO's small and medium ranges, rotations and overlaps, on a
textured background. Masks are the *visible* part of each shape (later shapes occlude earlier ones), stored as
polygons traced from the rasterised mask, exactly like COCO: ``segmentation`` (list of polygons),
``area`` (mask pixels), ``bbox`` ``[x, y, w, h]`` of the visible mask, ``iscrowd`` 0.

Layout written under ``--output``::

    annotations/instances_train.json   annotations/instances_val.json
    train/000000.png ...               val/000000.png ...

Usage::

    python -m datasets.make_synthetic_coco --output output/synthetic_coco --num-train 300 --num-val 60
"""
from __future__ import annotations

import os
import sys

# run as a script, the repository's packages (snnet_core, projects, datasets) are imported from the
# checkout: only snnet_core is installed, so that `projects`/`datasets` shadow nothing elsewhere
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse
import json
import logging
import math
import zlib
from typing import Dict, List, Optional, Tuple

import cv2
import numpy as np
from tqdm import tqdm

from snnet_core.cli import add_debug_argument, run_command

logger = logging.getLogger(__name__)

CATEGORIES = ("circle", "square", "triangle", "star", "cross")
CLASS_COLOURS = np.array([[220, 40, 40], [40, 180, 40], [40, 70, 230], [235, 200, 30], [200, 40, 210]], float)
COLOUR_JITTER = 30
MIN_VISIBLE_FRACTION = 0.35  # an object hidden more than this by later ones is dropped (not annotated)
MIN_AREA = 16  # pixels


def _regular_polygon(n: int, radius: float, angle: float, star_inner: Optional[float] = None) -> np.ndarray:
    """Vertices ``(K, 2)`` of a regular n-gon (or n-pointed star) centred at the origin."""
    if star_inner is None:
        t = angle + np.arange(n) * 2 * math.pi / n
        return np.stack([radius * np.cos(t), radius * np.sin(t)], axis=1)
    t = angle + np.arange(2 * n) * math.pi / n
    r = np.where(np.arange(2 * n) % 2 == 0, radius, radius * star_inner)
    return np.stack([r * np.cos(t), r * np.sin(t)], axis=1)


def _cross(radius: float, angle: float) -> np.ndarray:
    """Vertices ``(12, 2)`` of a plus sign with arm half-width ``radius / 3``."""
    a, b = radius, radius / 3
    pts = np.array([[b, a], [b, b], [a, b], [a, -b], [b, -b], [b, -a],
                    [-b, -a], [-b, -b], [-a, -b], [-a, b], [-b, b], [-b, a]], dtype=np.float64)
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    return pts @ rot.T


def shape_mask(category: str, center: Tuple[float, float], radius: float, angle: float,
               size: Tuple[int, int]) -> np.ndarray:
    """Boolean mask ``(H, W)`` of one shape of ``category`` with circumradius ``radius``."""
    h, w = size
    mask = np.zeros((h, w), dtype=np.uint8)
    cx, cy = center
    if category == "circle":
        cv2.circle(mask, (int(round(cx)), int(round(cy))), int(round(radius)), 1, thickness=-1)
        return mask.astype(bool)
    if category == "square":
        pts = _regular_polygon(4, radius, angle)
    elif category == "triangle":
        pts = _regular_polygon(3, radius, angle)
    elif category == "star":
        pts = _regular_polygon(5, radius, angle, star_inner=0.45)
    elif category == "cross":
        pts = _cross(radius, angle)
    else:
        raise ValueError(f"unknown shape category {category!r}; choose from {CATEGORIES}")
    pts = np.round(pts + np.array([cx, cy])).astype(np.int32)
    cv2.fillPoly(mask, [pts], 1)
    return mask.astype(bool)


def mask_to_polygons(mask: np.ndarray) -> List[List[float]]:
    """COCO polygons ``[[x0, y0, x1, y1, ...], ...]`` tracing the outer contours of a boolean mask."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    polygons = []
    for contour in contours:
        if len(contour) >= 3:  # COCO needs at least 3 points (6 numbers)
            polygons.append([float(v) + 0.5 for v in contour.reshape(-1)])  # pixel centres
    return polygons


def _background(rng: np.random.Generator, size: Tuple[int, int]) -> np.ndarray:
    """Smooth colour gradient plus noise, ``(H, W, 3)`` uint8."""
    h, w = size
    c0, c1 = rng.uniform(40, 215, size=(2, 3))
    direction = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:h, 0:w]
    t = (np.cos(direction) * xx / w + np.sin(direction) * yy / h + 1) / 2
    img = c0[None, None] * (1 - t[..., None]) + c1[None, None] * t[..., None]
    img += rng.normal(0, 8, size=img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def render_image(rng: np.random.Generator, size: Tuple[int, int], max_objects: int
                 ) -> Tuple[np.ndarray, List[Dict]]:
    """One image ``(H, W, 3)`` (RGB) and its visible-instance annotations (category index, mask)."""
    h, w = size
    img = _background(rng, size)
    placed = []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        category = int(rng.integers(len(CATEGORIES)))
        # log-uniform radius: small, medium and large objects in COCO's sense
        radius = float(np.exp(rng.uniform(np.log(7), np.log(0.45 * min(h, w)))))
        center = (rng.uniform(0.1 * w, 0.9 * w), rng.uniform(0.1 * h, 0.9 * h))
        mask = shape_mask(CATEGORIES[category], center, radius, rng.uniform(0, 2 * math.pi), size)
        if mask.sum() < MIN_AREA:
            continue
        colour = CLASS_COLOURS[category] + rng.uniform(-COLOUR_JITTER, COLOUR_JITTER, size=3)
        img[mask] = np.clip(colour + rng.normal(0, 6, size=(int(mask.sum()), 3)), 0, 255).astype(np.uint8)
        placed.append({"category": category, "mask": mask})
    annotations = []
    occluder = np.zeros((h, w), dtype=bool)
    for obj in reversed(placed):  # later shapes are on top
        visible = obj["mask"] & ~occluder
        occluder |= obj["mask"]
        if visible.sum() >= max(MIN_AREA, MIN_VISIBLE_FRACTION * obj["mask"].sum()):
            annotations.append({"category": obj["category"], "mask": visible})
    return img, annotations[::-1]


def annotation_record(mask: np.ndarray, category: int, image_id: int, ann_id: int) -> Optional[Dict]:
    """A COCO annotation dict for a visible mask, or ``None`` if it has no traceable polygon."""
    polygons = mask_to_polygons(mask)
    if not polygons:
        return None
    ys, xs = np.nonzero(mask)
    x0, y0 = int(xs.min()), int(ys.min())
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": category + 1,
        "segmentation": polygons,
        "area": float(mask.sum()),
        "bbox": [float(x0), float(y0), float(xs.max() - x0 + 1), float(ys.max() - y0 + 1)],
        "iscrowd": 0,
    }


def write_split(output: str, split: str, num_images: int, image_size: int, max_objects: int, seed: int) -> str:
    """Render ``num_images`` images of one split; returns the annotation JSON path."""
    rng = np.random.default_rng([seed, zlib.crc32(split.encode())])  # splits differ, runs repeat
    image_dir = os.path.join(output, split)
    os.makedirs(image_dir, exist_ok=True)
    os.makedirs(os.path.join(output, "annotations"), exist_ok=True)
    images, annotations = [], []
    for image_id in tqdm(range(1, num_images + 1), desc=f"synthetic COCO {split}", unit="img"):
        # mild aspect-ratio variation around the nominal size
        h = image_size
        w = int(image_size * rng.choice([0.75, 1.0, 1.0, 1.25]))
        img, objects = render_image(rng, (h, w), max_objects)
        file_name = f"{image_id:06d}.png"
        cv2.imwrite(os.path.join(image_dir, file_name), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
        images.append({"id": image_id, "file_name": file_name, "height": h, "width": w, "license": 1})
        for obj in objects:
            record = annotation_record(obj["mask"], obj["category"], image_id, len(annotations) + 1)
            if record is not None:
                annotations.append(record)
    data = {
        "info": {"description": "SN-Netv2 synthetic shapes (COCO instance format)", "version": "1.0",
                 "year": 2024, "contributor": "datasets/make_synthetic_coco.py", "date_created": "2024-01-01"},
        "licenses": [{"id": 1, "name": "CC0 1.0", "url": "https://creativecommons.org/publicdomain/zero/1.0/"}],
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(CATEGORIES)],
    }
    path = os.path.join(output, "annotations", f"instances_{split}.json")
    with open(path, "w") as f:
        json.dump(data, f)
    logger.info("%s: %d images, %d instances -> %s", split, len(images), len(annotations), path)
    return path


def make_synthetic_coco(output: str, num_train: int = 300, num_val: int = 60, image_size: int = 128,
                        max_objects: int = 5, seed: int = 0) -> Dict[str, str]:
    """Write the train and val splits; returns ``{split: annotation json path}``."""
    return {split: write_split(output, split, n, image_size, max_objects, seed)
            for split, n in (("train", num_train), ("val", num_val))}


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", default="output/synthetic_coco", help="dataset root to write")
    parser.add_argument("--num-train", type=int, default=300)
    parser.add_argument("--num-val", type=int, default=60)
    parser.add_argument("--image-size", type=int, default=128, help="image height (width varies 0.75-1.25x)")
    parser.add_argument("--max-objects", type=int, default=5, help="shapes drawn per image (1..N)")
    parser.add_argument("--seed", type=int, default=0)
    add_debug_argument(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    make_synthetic_coco(args.output, args.num_train, args.num_val, args.image_size, args.max_objects, args.seed)


if __name__ == "__main__":
    run_command(main)
