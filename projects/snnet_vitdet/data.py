"""Datasets: detectron2's builtin COCO-2017 and COCO-format JSON + image folders named in the config.

Builtin ``coco_2017_train`` / ``coco_2017_val`` are registered by detectron2 itself under
``$DETECTRON2_DATASETS/coco`` (default ``./datasets/coco``). Any other COCO-format dataset is declared in
the config and registered by name before the loaders are built::

    datasets = dict(coco_json=dict(
        my_train=dict(json_file="/data/my/annotations/train.json", image_root="/data/my/train"),
    ))
    dataloader.train.dataset.names = "my_train"
"""
from __future__ import annotations

import logging
import os
from typing import Iterable, Mapping, Union

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances

logger = logging.getLogger(__name__)


def register_coco_json_datasets(specs: Mapping[str, Mapping[str, str]]) -> None:
    """Register ``{name: {json_file, image_root}}`` as COCO instance datasets (idempotent).

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
        register_coco_instances(name, {"snnet_registered": True}, json_file, image_root)
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
                f"{os.environ.get('DETECTRON2_DATASETS', 'datasets')!r})")
        json_file, image_root = meta.get("json_file", None), meta.get("image_root", None)
        if json_file is not None and not os.path.isfile(json_file):
            raise FileNotFoundError(f"dataset {name!r}: annotation file {json_file!r} does not exist{hint}")
        if image_root is not None and not os.path.isdir(image_root):
            raise FileNotFoundError(f"dataset {name!r}: image folder {image_root!r} does not exist{hint}")


def dataset_names(loader_cfg) -> list:
    """The dataset names of a ``build_detection_*_loader`` LazyCall config."""
    return _names(loader_cfg.dataset.names)
