#!/usr/bin/env python
"""Convert the official COCO-Stuff-10K release (``cocostuff-10k-v1.1``) to PNG label maps of its 171 classes.

Input (as downloaded from http://calvin.inf.ed.ac.uk/wp-content/uploads/data/cocostuffdataset/cocostuff-10k-v1.1.zip)::

    cocostuff-10k-v1.1/images/<name>.jpg
    cocostuff-10k-v1.1/annotations/<name>.mat        key S: 0 = unlabeled, 1..182 = COCO-Stuff ids
    cocostuff-10k-v1.1/imageLists/{train,test}.txt   one <name> per line (9000 / 1000)

Output, beside them (read by ``projects/snnet_setr/data.py`` as ``coco_stuff_10k_sem_seg_{train,test}``)::

    cocostuff-10k-v1.1/annotations_detectron2/{train,test}/<name>.png    0..170 = classes, 255 = ignore

COCO-Stuff id ``COCO_STUFF_IDS[k]`` becomes class ``k``, everything else (0 = unlabeled, and the 11 ids never
annotated) 255: the labels mmsegmentation trains on after its ``coco_stuff10k.py`` conversion and
``reduce_zero_label``. A ``.mat`` of MATLAB v7.3 (HDF5) is read with h5py. Every file is written atomically and
``annotations_detectron2/PREPARED.json`` last: a second run finds it and does nothing, an interrupted one is refused
(``--overwrite`` converts everything again).

Usage: ``python datasets/prepare_coco_stuff10k.py data/cocostuff-10k-v1.1``
"""
from __future__ import annotations

import os
import sys

# run as a script, the repository's packages (snnet_core, projects, datasets) are imported from the
# checkout: only snnet_core is installed, so that `projects`/`datasets` shadow nothing elsewhere
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import functools
from typing import Dict, List, Optional, Sequence

import numpy as np

from datasets.dataset_files import prepare_main, write_prepared
from projects.snnet_setr.classes import COCO_STUFF_IDS
from snnet_core.cli import run_command

SPLITS = ("train", "test")
OUTPUT_DIR = "annotations_detectron2"
IGNORE_LABEL = 255


def coco_stuff_lookup() -> np.ndarray:
    """``(65536,)`` uint8: COCO-Stuff id -> class (``COCO_STUFF_IDS[k]`` -> ``k``), every other id -> 255."""
    table = np.full(1 << 16, IGNORE_LABEL, dtype=np.uint8)
    table[list(COCO_STUFF_IDS)] = np.arange(len(COCO_STUFF_IDS), dtype=np.uint8)
    return table


def read_mat_labels(path: str) -> np.ndarray:
    """The ``S`` label map ``(H, W)`` of a COCO-Stuff ``.mat`` (MATLAB v5 through scipy, v7.3 through h5py)."""
    import scipy.io

    try:
        content = scipy.io.loadmat(path, variable_names=["S"])
    except NotImplementedError:  # MATLAB v7.3: HDF5, stored column-major
        import h5py

        with h5py.File(path, "r") as f:
            if "S" not in f:
                raise ValueError(f"annotation {path} holds no 'S' label map (keys: {sorted(f.keys())}): is it a "
                                 "COCO-Stuff-10K annotation?") from None
            return np.asarray(f["S"][()]).T
    except (OSError, ValueError, TypeError) as exc:
        problem = "is missing" if not os.path.isfile(path) else "could not be read (truncated or not a .mat file?)"
        raise OSError(f"annotation {path} {problem}: {exc}") from exc
    if "S" not in content:
        keys = sorted(name for name, _, _ in scipy.io.whosmat(path))
        raise ValueError(f"annotation {path} holds no 'S' label map (keys: {keys}): is it a COCO-Stuff-10K annotation?")
    return np.asarray(content["S"])


def coco_stuff_names(root: str, split: str) -> List[str]:
    """The image names of ``imageLists/<split>.txt``, after checking that each has its ``.jpg`` and ``.mat``."""
    list_file = os.path.join(root, "imageLists", f"{split}.txt")
    if not os.path.isfile(list_file):
        raise FileNotFoundError(
            f"{list_file} does not exist: give the cocostuff-10k-v1.1 folder of the official release, which holds "
            "images/*.jpg, annotations/*.mat and imageLists/{train,test}.txt")
    with open(list_file) as f:
        names = [line.strip() for line in f if line.strip()]
    if not names:
        raise ValueError(f"{list_file} lists no image")
    missing = [path for name in names for path in (os.path.join(root, "images", name + ".jpg"),
                                                   os.path.join(root, "annotations", name + ".mat"))
               if not os.path.isfile(path)]
    if missing:
        raise FileNotFoundError(f"{len(missing)} file(s) listed in {list_file} do not exist: "
                                f"{', '.join(missing[:5])}: restore them (or remove their names from the list)")
    return names


def prepare_coco_stuff10k(root: str, overwrite: bool = False) -> Dict[str, int]:
    """Write ``root/annotations_detectron2``; returns the number of label maps per split (also when the output was
    already complete, then nothing is written)."""
    names = {split: coco_stuff_names(root, split) for split in SPLITS}  # the whole input checked before writing
    return write_prepared(
        os.path.join(root, OUTPUT_DIR),
        {split: [(os.path.join(root, "annotations", name + ".mat"), name + ".png") for name in split_names]
         for split, split_names in names.items()},
        functools.partial(_converted, lookup=coco_stuff_lookup()),
        {"dataset": "cocostuff-10k-v1.1",
         "labels": "COCO_STUFF_IDS[k] -> k, others (0 = unlabeled, unused ids) -> 255"},
        overwrite)


def _converted(annotation: str, lookup: np.ndarray) -> np.ndarray:
    labels = read_mat_labels(annotation)
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer) or labels.min(initial=0) < 0:
        raise ValueError(f"annotation {annotation}: 'S' is a {labels.dtype} array of shape {labels.shape}, not a "
                         "label map (H, W) of non-negative COCO-Stuff ids")
    return lookup[labels.astype(np.int64).clip(0, len(lookup) - 1)]


def main(argv: Optional[Sequence[str]] = None) -> None:
    prepare_main(argv, __doc__, "the cocostuff-10k-v1.1 folder", prepare_coco_stuff10k, OUTPUT_DIR)


if __name__ == "__main__":
    run_command(main)
