#!/usr/bin/env python
"""Convert the official ADE20K scene-parsing release (``ADEChallengeData2016``) to the layout detectron2's builtin
``ade20k_sem_seg_train`` / ``ade20k_sem_seg_val`` read.

Input (as downloaded from http://data.csail.mit.edu/places/ADEchallenge/ADEChallengeData2016.zip)::

    ADEChallengeData2016/images/{training,validation}/ADE_*.jpg
    ADEChallengeData2016/annotations/{training,validation}/ADE_*.png    0 = "other", 1..150 = classes

Output, beside them::

    ADEChallengeData2016/annotations_detectron2/{training,validation}/ADE_*.png    0..149 = classes, 255 = ignore

Each label becomes ``label - 1`` and 0 becomes 255 (mmsegmentation's ``reduce_zero_label``, detectron2's
conversion). Every file is written atomically and ``annotations_detectron2/PREPARED.json`` last: a second run
finds it and does nothing, an interrupted one is refused (``--overwrite`` converts everything again).

Usage: ``python datasets/prepare_ade20k.py data/ADEChallengeData2016`` (detectron2 finds it under
``$DETECTRON2_DATASETS``; the projects set that to ``data``).
"""
from __future__ import annotations

import os
import sys

# run as a script, the repository's packages (snnet_core, projects, datasets) are imported from the
# checkout: only snnet_core is installed, so that `projects`/`datasets` shadow nothing elsewhere
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from datasets.dataset_files import prepare_main, write_prepared
from snnet_core.cli import run_command
from snnet_core.io.label_maps import read_label_map

SPLIT_DIRS = ("training", "validation")  # detectron2: ade20k_sem_seg_train, ade20k_sem_seg_val
OUTPUT_DIR = "annotations_detectron2"
NUM_CLASSES = 150


def reduce_zero_label(labels: np.ndarray) -> np.ndarray:
    """``(H, W)`` uint8 ADE20K labels (0 = other, 1..150) as trained: ``label - 1``, 0 -> 255 (ignore)."""
    return labels - np.uint8(1)  # uint8 arithmetic: 0 wraps to 255


def _stems(folder: str, extension: str) -> Dict[str, str]:
    return {os.path.splitext(name)[0]: os.path.join(folder, name) for name in sorted(os.listdir(folder))
            if name.lower().endswith(extension)}


def ade20k_pairs(root: str, split_dir: str) -> List[Tuple[str, str]]:
    """``(image, annotation)`` paths of one split of the official layout under ``root``; raises naming the missing
    folder, or the first images without annotation (and annotations without image)."""
    folders = {kind: os.path.join(root, kind, split_dir) for kind in ("images", "annotations")}
    for folder in folders.values():
        if not os.path.isdir(folder):
            raise FileNotFoundError(
                f"{folder} does not exist: give the ADEChallengeData2016 folder of the official release, which holds "
                "images/{training,validation}/*.jpg and annotations/{training,validation}/*.png")
    images, labels = _stems(folders["images"], ".jpg"), _stems(folders["annotations"], ".png")
    if not labels:
        raise FileNotFoundError(f"{folders['annotations']} holds no .png annotation")
    unmatched = [f"image {images[s]} has no annotation {os.path.join(folders['annotations'], s + '.png')}"
                 for s in sorted(set(images) - set(labels))]
    unmatched += [f"annotation {labels[s]} has no image {os.path.join(folders['images'], s + '.jpg')}"
                  for s in sorted(set(labels) - set(images))]
    if unmatched:
        raise FileNotFoundError(f"{len(unmatched)} file(s) of {root} have no partner: " + "; ".join(unmatched[:5])
                                + ": restore the missing files (or remove the unpaired ones)")
    return [(images[s], labels[s]) for s in sorted(labels)]


def prepare_ade20k(root: str, overwrite: bool = False) -> Dict[str, int]:
    """Write ``root/annotations_detectron2``; returns the number of label maps per split folder (also when the
    output was already complete, then nothing is written)."""
    pairs = {split: ade20k_pairs(root, split) for split in SPLIT_DIRS}  # the whole input checked before writing
    return write_prepared(
        os.path.join(root, OUTPUT_DIR),
        {split: [(annotation, os.path.basename(annotation)) for _, annotation in p] for split, p in pairs.items()},
        _converted, {"dataset": "ADEChallengeData2016", "labels": "label - 1, 0 -> 255 (reduce_zero_label)"},
        overwrite)


def _converted(annotation: str) -> np.ndarray:
    labels = read_label_map(annotation)
    if labels.max(initial=0) > NUM_CLASSES:
        raise ValueError(f"annotation {annotation} holds label {int(labels.max())}, above ADE20K's {NUM_CLASSES} "
                         f"classes (0 = other, 1..{NUM_CLASSES}): is it an ADE20K scene-parsing annotation?")
    return reduce_zero_label(labels)


def main(argv: Optional[Sequence[str]] = None) -> None:
    prepare_main(argv, __doc__, "the ADEChallengeData2016 folder", prepare_ade20k, OUTPUT_DIR)


if __name__ == "__main__":
    run_command(main)
