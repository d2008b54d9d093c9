"""Datasets: detectron2's builtin COCO-2017 and COCO-format JSON + image folders named in the config.

Builtin ``coco_2017_train`` / ``coco_2017_val`` are registered by detectron2 itself under
``$DETECTRON2_DATASETS/coco`` (``train_net.py`` sets the default to ``./data``). Any other COCO-format dataset is
declared in the config and registered by name before the loaders are built::

    datasets = dict(coco_json=dict(
        my_train=dict(json_file="/data/my/annotations/train.json", image_root="/data/my/train"),
    ))
    dataloader.train.dataset.names = "my_train"

Such files are checked when loaded (complete JSON, unique image ids, annotations of declared categories), and
``check_num_classes`` checks the categories against the model. Training data comes from the engine's
``snnet_core.training.data_order.build_resumable_train_loader``: the batch of iteration ``i`` (images, order and
augmentation) is a pure function of ``(seed, i)``, so a resumed run sees the data of the uninterrupted one.
"""
from __future__ import annotations

import json
import logging
import math
import os
from collections import Counter
from typing import Callable, Iterable, List, Mapping, Optional, Union

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json

logger = logging.getLogger(__name__)


def load_checked_coco_json(json_file: str, image_root: str, name: str) -> List[dict]:
    """detectron2's ``load_coco_json`` after checking what it would get wrong silently or unclearly: a
    truncated file (named), repeated image ids (detectron2 keeps one image per id and trains on), and
    annotations whose category is not declared."""
    try:
        with open(json_file) as f:
            data = json.load(f)
    except json.JSONDecodeError as exc:
        raise ValueError(f"dataset {name!r}: annotation file {json_file!r} is not valid JSON ({exc}); it is "
                         "truncated or corrupt: regenerate or download it again") from exc
    missing = {"images", "annotations", "categories"} - set(data if isinstance(data, dict) else ())
    if missing:
        raise ValueError(f"dataset {name!r}: {json_file!r} is not a COCO instances file (no {sorted(missing)})")
    repeated = sorted(i for i, n in Counter(image["id"] for image in data["images"]).items() if n > 1)
    if repeated:
        raise ValueError(f"dataset {name!r}: {json_file!r} lists {len(repeated)} image id(s) more than once "
                         f"(e.g. {repeated[:5]}); COCO image ids must be unique: renumber the images")
    declared = {c["id"] for c in data["categories"]}
    undeclared = sorted({a["category_id"] for a in data["annotations"]} - declared)
    if undeclared:
        raise ValueError(f"dataset {name!r}: {json_file!r} has annotations of category ids {undeclared[:5]} that "
                         f"are not in its 'categories' ({sorted(declared)[:10]}); declare them or fix the ids")
    broken = [a.get("image_id") for a in data["annotations"] if "bbox" in a and not _valid_box(a["bbox"])]
    if broken:
        raise ValueError(f"dataset {name!r}: {json_file!r} has {len(broken)} annotation(s) whose bbox is not 4 finite "
                         f"numbers [x, y, w, h] with w, h >= 0 (NaN, inf or negative sizes; images "
                         f"{sorted(set(broken))[:5]}); detectron2 would drop them without a word: repair or remove them")
    del data
    return load_coco_json(json_file, image_root, name)


def _valid_box(box) -> bool:
    """A COCO ``[x, y, w, h]`` of finite numbers with non-negative sizes."""
    numbers = isinstance(box, list) and len(box) == 4 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in box)
    return numbers and box[2] >= 0 and box[3] >= 0


def check_trainable(names: Union[str, Iterable[str]]) -> None:
    """Raise ``ValueError`` naming the annotation file if a declared training dataset (``datasets.coco_json``) has
    no image detectron2 would train on: it drops images without annotations and images whose annotations are
    all crowd (``iscrowd=1``), then fails with ``AssertionError: No valid data found``. Builtin datasets (COCO)
    are not loaded here."""
    for name in _names(names):
        meta = MetadataCatalog.get(name)
        if not meta.get("snnet_registered", False):
            continue
        dicts = DatasetCatalog.get(name)
        crowd_only = sum(1 for d in dicts if d.get("annotations") and all(a.get("iscrowd", 0) for a in d["annotations"]))
        empty = sum(1 for d in dicts if not d.get("annotations"))
        if empty + crowd_only == len(dicts):
            raise ValueError(f"dataset {name!r}: annotation file {meta.json_file!r} has no image to train on: of its "
                             f"{len(dicts)} images, {empty} have no annotations and {crowd_only} only crowd ones "
                             "(iscrowd=1), which training drops. Check that its annotations' image_id values match "
                             "its images' ids, or train on another dataset")


class CheckedCocoJson:
    """The ``DatasetCatalog`` loader of a declared COCO-format dataset: ``load_checked_coco_json`` on the first
    call, the same list of dicts on later ones (a training start asks twice: the training and the LS init
    loaders). detectron2's mappers copy each dict before changing it, so the list is never modified."""

    def __init__(self, json_file: str, image_root: str, name: str):
        self.json_file, self.image_root, self.name = json_file, image_root, name
        self._dicts: Optional[List[dict]] = None

    def __call__(self) -> List[dict]:
        if self._dicts is None:
            self._dicts = load_checked_coco_json(self.json_file, self.image_root, self.name)
        return self._dicts


def register_coco_json_datasets(specs: Mapping[str, Mapping[str, str]]) -> None:
    """Register ``{name: {json_file, image_root}}`` as COCO instance datasets (idempotent), each read once
    per process (``CheckedCocoJson``).

    A name registered earlier with other files is re-registered with the new ones; a builtin name
    cannot be redefined.
    """
    for name, spec in specs.items():
        missing = {"json_file", "image_root"} - set(spec)
        if missing:
            raise KeyError(f"dataset {name!r} in the config needs {sorted(missing)}")
        json_file, image_root = str(spec["json_file"]), str(spec["image_root"])
        if name in DatasetCatalog.list():
            meta = MetadataCatalog.get(name)
            if meta.get("json_file") == json_file and meta.get("image_root") == image_root:
                continue
            if not meta.get("snnet_registered", False):
                raise ValueError(f"dataset name {name!r} is already registered (builtin?); choose another name")
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
        DatasetCatalog.register(name, CheckedCocoJson(json_file, image_root, name))
        MetadataCatalog.get(name).set(json_file=json_file, image_root=image_root, evaluator_type="coco",
                                      snnet_registered=True)
        logger.info("registered COCO-format dataset %r: %s, %s", name, json_file, image_root)


def _names(names: Union[str, Iterable[str]]) -> list:
    return [names] if isinstance(names, str) else list(names)


def check_dataset_files(names: Union[str, Iterable[str]]) -> None:
    """Raise a clear error if a dataset is unknown or its annotation file / image folder is missing."""
    for name in _names(names):
        if name not in DatasetCatalog.list():
            raise KeyError(
                f"dataset {name!r} is not registered: use a detectron2 builtin name (e.g. coco_2017_train) "
                "or declare it under `datasets.coco_json` in the config"
            )
        meta = MetadataCatalog.get(name)
        hint = ("" if meta.get("snnet_registered", False) else
                f" (builtin datasets live under $DETECTRON2_DATASETS, now "
                f"{os.environ.get('DETECTRON2_DATASETS', 'data')!r})")
        json_file, image_root = meta.get("json_file", None), meta.get("image_root", None)
        if json_file is not None and not os.path.isfile(json_file):
            raise FileNotFoundError(f"dataset {name!r}: annotation file {json_file!r} does not exist{hint}")
        if image_root is not None and not os.path.isdir(image_root):
            raise FileNotFoundError(f"dataset {name!r}: image folder {image_root!r} does not exist{hint}")


def dataset_names(loader_cfg) -> list:
    """The dataset names of a ``build_detection_*_loader`` LazyCall config."""
    return _names(loader_cfg.dataset.names)


def check_num_classes(names: Union[str, Iterable[str]], num_classes: int) -> None:
    """Raise if a dataset (already loaded, so its categories are known) has more categories than the model
    predicts: detectron2 would train on class ids outside the classifier (or fail deep inside a loss)."""
    for name in _names(names):
        classes = MetadataCatalog.get(name).get("thing_classes", None)
        if classes is not None and len(classes) > num_classes:
            raise ValueError(f"dataset {name!r} has {len(classes)} categories but the model predicts "
                             f"model.roi_heads.num_classes={num_classes}: set model.roi_heads.num_classes="
                             f"{len(classes)} (or train on a dataset with at most {num_classes} categories)")


# --- training data ----------------------------------------------------------------------------------
class NamedImageErrors:
    """A dataset mapper whose failures to read an image (missing, truncated, not an image: ``OSError``) name the image
    and the annotation file listing it, instead of a traceback from PIL."""

    def __init__(self, mapper: Callable[[dict], Optional[dict]], names: Union[str, Iterable[str]]):
        self.mapper = mapper
        files = [MetadataCatalog.get(name).get("json_file", None) or name for name in _names(names)]
        self.source = " or ".join(repr(f) for f in files)

    def __call__(self, item: dict) -> Optional[dict]:
        try:
            return self.mapper(item)
        except OSError as exc:
            image = item.get("file_name")
            problem = "is missing" if image and not os.path.isfile(image) else "could not be read"
            raise OSError(f"image {image!r} (image id {item.get('image_id')}, listed in {self.source}) {problem} "
                          f"({type(exc).__name__}: {exc}); restore the file or remove the image from the annotation "
                          "file") from exc
