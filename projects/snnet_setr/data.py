"""Segmentation datasets in detectron2's catalog, the mapper of mmseg's pipeline, and the checks before training.

Datasets (``$DETECTRON2_DATASETS``, which the projects set to ``data``):

- ADE20K as detectron2 registers it: ``ade20k_sem_seg_train`` / ``ade20k_sem_seg_val`` from
  ``ADEChallengeData2016/annotations_detectron2`` (``datasets/prepare_ade20k.py``); this module adds the palette.
- COCO-Stuff-10K: ``coco_stuff_10k_sem_seg_train`` / ``coco_stuff_10k_sem_seg_test`` from
  ``cocostuff-10k-v1.1`` (the images named by ``imageLists/{train,test}.txt``, the labels of
  ``annotations_detectron2``, written by ``datasets/prepare_coco_stuff10k.py``).
- Any other folder in either layout (e.g. ``datasets/make_synthetic_segmentation.py``'s) by
  ``register_sem_seg_datasets``, from the config's ``datasets.sem_seg``::

      datasets = dict(sem_seg=dict(my_ade=dict(root="output/synthetic_ade20k/ADEChallengeData2016", layout="ade20k")))
      # registers my_ade_train and my_ade_val (coco_stuff10k layout: <name>_train and <name>_test)

Every dataset's metadata has ``stuff_classes``, ``stuff_colors`` (the dataset's palette, RGB), ``ignore_label=255``
and ``evaluator_type="sem_seg"``. Dataset dicts hold ``file_name`` and ``sem_seg_file_name``;
``SemSegMapper`` turns one into ``{"image": uint8 (3, H, W) tensor, "sem_seg": int64 (H, W) tensor, "height",
"width", "file_name"}``. ``check_sem_seg_datasets`` reads every file once before training and names each problem.
"""
from __future__ import annotations

import concurrent.futures
import logging
import os
from typing import Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import cv2
import detectron2.data.transforms as T
import numpy as np
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_sem_seg
from detectron2.data.datasets.builtin_meta import ADE20K_SEM_SEG_CATEGORIES
from PIL import Image
from tqdm import tqdm

from projects.snnet_setr.classes import ADE20K_PALETTE, COCO_STUFF_CLASSES, COCO_STUFF_PALETTE
from snnet_core.io.label_maps import read_label_map

logger = logging.getLogger(__name__)

IGNORE_LABEL = 255
LAYOUTS = {  # layout: (dataset folder of the official release, {split suffix: folder or image list})
    "ade20k": ("ADEChallengeData2016", {"train": "training", "val": "validation"}),
    "coco_stuff10k": ("cocostuff-10k-v1.1", {"train": "train", "test": "test"}),
}
LABEL_DIR = "annotations_detectron2"
PREPARE_SCRIPTS = {"ade20k": "datasets/prepare_ade20k.py", "coco_stuff10k": "datasets/prepare_coco_stuff10k.py"}


# --- registration ---------------------------------------------------------------------------------
def _layout_metadata(layout: str) -> dict:
    if layout == "ade20k":
        return dict(stuff_classes=list(ADE20K_SEM_SEG_CATEGORIES), stuff_colors=[list(c) for c in ADE20K_PALETTE])
    return dict(stuff_classes=list(COCO_STUFF_CLASSES), stuff_colors=[list(c) for c in COCO_STUFF_PALETTE])


def load_listed_sem_seg(image_root: str, gt_root: str, image_list: str) -> List[dict]:
    """Dataset dicts of the images named in ``image_list`` (one name per line): ``image_root/<name>.jpg`` with
    the labels ``gt_root/<name>.png`` (COCO-Stuff-10K's layout)."""
    with open(image_list) as f:
        names = [line.strip() for line in f if line.strip()]
    return [{"file_name": os.path.join(image_root, name + ".jpg"),
             "sem_seg_file_name": os.path.join(gt_root, name + ".png")} for name in names]


def register_sem_seg_dataset(name: str, root: str, layout: str) -> Tuple[str, ...]:
    """Register the splits of the dataset folder ``root`` (``layout``: ``ade20k`` or ``coco_stuff10k``, prepared by
    ``datasets/prepare_*.py``) as ``<name>_<split>``; returns the registered names. A name registered before with the
    same folder is kept; one of this module with another folder is registered again; a builtin one is refused."""
    if layout not in LAYOUTS:
        raise ValueError(f"dataset {name!r}: layout {layout!r} is not one of {sorted(LAYOUTS)}")
    names = []
    for split, folder in LAYOUTS[layout][1].items():
        split_name = f"{name}_{split}"
        if layout == "ade20k":
            image_root, gt_root = os.path.join(root, "images", folder), os.path.join(root, LABEL_DIR, folder)
            extra = {}
        else:
            image_root, gt_root = os.path.join(root, "images"), os.path.join(root, LABEL_DIR, folder)
            extra = {"image_list": os.path.join(root, "imageLists", f"{folder}.txt")}
        names.append(split_name)
        if split_name in DatasetCatalog.list():
            meta = MetadataCatalog.get(split_name)
            if meta.get("image_root", None) == image_root and meta.get("sem_seg_root", None) == gt_root:
                continue
            if not meta.get("snnet_registered", False):
                raise ValueError(f"dataset name {split_name!r} is already registered (builtin?); choose another name")
            DatasetCatalog.remove(split_name)
            MetadataCatalog.remove(split_name)
        if layout == "ade20k":
            DatasetCatalog.register(split_name, lambda x=image_root, y=gt_root: load_sem_seg(y, x, "png", "jpg"))
        else:
            DatasetCatalog.register(split_name, lambda x=image_root, y=gt_root, z=extra["image_list"]:
                                    load_listed_sem_seg(x, y, z))
        MetadataCatalog.get(split_name).set(image_root=image_root, sem_seg_root=gt_root, evaluator_type="sem_seg",
                                            ignore_label=IGNORE_LABEL, layout=layout, snnet_registered=True,
                                            **extra, **_layout_metadata(layout))
    return tuple(names)


def register_sem_seg_datasets(specs: Mapping[str, Mapping[str, str]]) -> None:
    """``register_sem_seg_dataset`` for each ``{name: {root, layout}}`` of the config's ``datasets.sem_seg``."""
    for name, spec in specs.items():
        missing = {"root", "layout"} - set(spec)
        if missing:
            raise KeyError(f"datasets.sem_seg.{name} in the config needs {sorted(missing)}")
        register_sem_seg_dataset(name, str(spec["root"]), str(spec["layout"]))


def register_builtin(root: str) -> None:
    """The palette of detectron2's builtin ADE20K names, and COCO-Stuff-10K under ``root/cocostuff-10k-v1.1``."""
    for name in ("ade20k_sem_seg_train", "ade20k_sem_seg_val"):
        if name in DatasetCatalog.list() and not MetadataCatalog.get(name).get("stuff_colors", None):
            MetadataCatalog.get(name).set(stuff_colors=[list(c) for c in ADE20K_PALETTE], layout="ade20k")
    register_sem_seg_dataset("coco_stuff_10k_sem_seg", os.path.join(root, LAYOUTS["coco_stuff10k"][0]),
                             "coco_stuff10k")


# as detectron2 registers its builtin datasets: on import, under $DETECTRON2_DATASETS
register_builtin(os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets")))


# --- checks before training -------------------------------------------------------------------------
def _names(names: Union[str, Iterable[str]]) -> List[str]:
    return [names] if isinstance(names, str) else list(names)


def _pairing_problems(meta) -> List[str]:
    """Images without labels and labels without images in the folders of a folder-layout dataset (detectron2's
    ``load_sem_seg`` silently keeps the pairs)."""
    images = {os.path.splitext(n)[0] for n in os.listdir(meta.image_root) if n.endswith(".jpg")}
    labels = {os.path.splitext(n)[0] for n in os.listdir(meta.sem_seg_root) if n.endswith(".png")}
    return ([f"image {os.path.join(meta.image_root, s + '.jpg')} has no label map in {meta.sem_seg_root}"
             for s in sorted(images - labels)]
            + [f"label map {os.path.join(meta.sem_seg_root, s + '.png')} has no image in {meta.image_root}"
               for s in sorted(labels - images)])


def _file_problems(item: dict, num_classes: int) -> List[str]:
    """What is wrong with one dataset dict's files: missing, unreadable, sizes that differ, labels outside
    ``[0, num_classes)`` other than 255."""
    image_path, label_path = item["file_name"], item["sem_seg_file_name"]
    problems = [f"{kind} {path} does not exist" for kind, path in (("image", image_path),
                                                                      ("label map", label_path))
                if not os.path.isfile(path)]
    if problems:
        return problems
    size = None
    try:
        with Image.open(image_path) as image:
            image.load()  # decodes it all: a truncated file raises here (cv2 would fill in grey and go on)
            size = image.size
    except (OSError, SyntaxError, ValueError) as exc:
        problems.append(f"image {image_path} could not be read (truncated, or not an image?): {exc}")
    try:
        labels = read_label_map(label_path)
    except (OSError, ValueError) as exc:
        return problems + [str(exc)]
    if size is not None and size != (labels.shape[1], labels.shape[0]):
        problems.append(f"label map {label_path} is {labels.shape[1]}x{labels.shape[0]} but its image {image_path} "
                        f"is {size[0]}x{size[1]} (width x height)")
    bad = np.unique(labels[(labels >= num_classes) & (labels != IGNORE_LABEL)])
    if bad.size:
        problems.append(f"label map {label_path} holds values {bad[:8].tolist()} outside the {num_classes} classes "
                        f"(0..{num_classes - 1}, {IGNORE_LABEL} = ignore)")
    return problems


def check_sem_seg_datasets(names: Union[str, Iterable[str]], num_classes: int,
                           num_classes_key: str = "num_classes", workers: Optional[int] = None) -> None:
    """Before any training or evaluation: raise one error naming every problem of the datasets ``names`` and its
    fix: an unknown name, a missing folder, a class count other than the config's ``num_classes_key`` (=
    ``num_classes``), unpaired, missing or unreadable image/label files, label maps whose size is not their image's,
    label values outside ``[0, num_classes)`` other than 255. Every file is decoded (``workers`` threads)."""
    for name in _names(names):
        if name not in DatasetCatalog.list():
            raise KeyError(f"dataset {name!r} is not registered: use ade20k_sem_seg_{{train,val}}, "
                           "coco_stuff_10k_sem_seg_{train,test}, or declare it under datasets.sem_seg in the config")
        meta = MetadataCatalog.get(name)
        layout = meta.get("layout", "ade20k")
        for folder in (meta.image_root, meta.sem_seg_root):
            if not os.path.isdir(folder):
                hint = ("" if meta.get("snnet_registered", False) else " (builtin datasets live under "
                        f"$DETECTRON2_DATASETS, now {os.environ.get('DETECTRON2_DATASETS', 'datasets')!r})")
                raise FileNotFoundError(f"dataset {name!r}: folder {folder} does not exist{hint}: download the "
                                        f"official release and run {PREPARE_SCRIPTS[layout]} on it")
        if meta.get("image_list", None) is not None and not os.path.isfile(meta.image_list):
            raise FileNotFoundError(f"dataset {name!r}: image list {meta.image_list} does not exist")
        if len(meta.stuff_classes) != num_classes:
            raise ValueError(f"dataset {name!r} has {len(meta.stuff_classes)} classes but the config's "
                             f"{num_classes_key}={num_classes}: set {num_classes_key}={len(meta.stuff_classes)}")
        problems = [] if meta.get("image_list", None) is not None else _pairing_problems(meta)
        if problems:  # before loading: detectron2's load_sem_seg keeps the pairs (or asserts on no label map)
            _raise_problems(name, problems, layout)
        items = DatasetCatalog.get(name)
        if not items:
            raise ValueError(f"dataset {name!r} has no image ({meta.image_root})")
        with concurrent.futures.ThreadPoolExecutor(workers or min(16, os.cpu_count() or 1)) as pool:
            found = pool.map(lambda item: _file_problems(item, num_classes), items)
            for item_problems in tqdm(found, total=len(items), desc=f"checking {name}", unit="img", leave=False):
                problems += item_problems
        if problems:
            _raise_problems(name, problems, layout)


def _raise_problems(name: str, problems: List[str], layout: str) -> None:
    shown = "\n  ".join(problems[:10]) + (f"\n  ... ({len(problems)} problems)" if len(problems) > 10 else "")
    raise ValueError(f"dataset {name!r} cannot be trained or evaluated on:\n  {shown}\nrestore or re-prepare these "
                     f"files ({PREPARE_SCRIPTS[layout]}), or remove them")


# --- mapping ---------------------------------------------------------------------------------------
def read_bgr_image(path: str) -> np.ndarray:
    """The image file ``path`` as BGR uint8 ``(H, W, 3)``, decoded by cv2 as mmseg's ``LoadImageFromFile`` does;
    ``OSError`` naming the file if it is missing or cannot be decoded."""
    image = cv2.imread(path, cv2.IMREAD_COLOR)
    if image is None:
        problem = "is missing" if not os.path.isfile(path) else "could not be read (truncated, or not an image?)"
        raise OSError(f"image {path} {problem}")
    return image


class SemSegMapper:
    """A segmentation dataset dict -> the model's input.

    Reads the image (BGR, cv2) and its label map, applies ``augmentations`` (to both in training; to the image alone
    otherwise, whose labels stay at the original size, as mmseg's test pipeline loads them after resizing) and
    returns ``{"image": uint8 (3, H, W) tensor in ``image_format``, "sem_seg": int64 (H, W) tensor, "height",
    "width" (of the file), "file_name"}``.
    """

    def __init__(self, is_train: bool, augmentations: Sequence[T.Augmentation], image_format: str = "BGR"):
        if image_format not in ("BGR", "RGB"):
            raise ValueError(f"image_format {image_format!r}: the mapper gives BGR or RGB images")
        self.is_train, self.image_format = is_train, image_format
        self.augmentations = T.AugmentationList(list(augmentations))

    def __call__(self, dataset_dict: dict) -> dict:
        image = read_bgr_image(dataset_dict["file_name"])
        labels = read_label_map(dataset_dict["sem_seg_file_name"])
        height, width = image.shape[:2]
        if labels.shape != (height, width):
            raise ValueError(f"label map {dataset_dict['sem_seg_file_name']} is {labels.shape[1]}x{labels.shape[0]} "
                             f"but its image {dataset_dict['file_name']} is {width}x{height} (width x height)")
        aug_input = T.AugInput(image, sem_seg=labels if self.is_train else None)
        self.augmentations(aug_input)
        image = aug_input.image if self.image_format == "BGR" else aug_input.image[:, :, ::-1]
        return {
            "file_name": dataset_dict["file_name"],
            "height": height,
            "width": width,
            "image": torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1))),
            "sem_seg": torch.as_tensor((aug_input.sem_seg if self.is_train else labels).astype(np.int64)),
        }


def dataset_names(loader_cfg) -> List[str]:
    """The dataset names of a loader config whose ``dataset`` is ``get_detection_dataset_dicts(names=...)``."""
    return _names(loader_cfg.dataset.names)
