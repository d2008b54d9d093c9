"""ImageNet in torchvision's ``ImageFolder`` layout (``<root>/train/<class>/*.JPEG``, ``<root>/val/<class>/*.JPEG``,
as upstream's ``datasets.build_dataset`` reads it), checked before any work, and seeded per-image augmentation.

Checked before anything is trained or evaluated: each split directory exists and holds class folders with
images; train and val have the same class folders (the class index is the sorted folder name, so one missing
folder would shift every label after it); every image file opens as an image (its header is read, PIL's
decompression-bomb limit applies). Each error names the directory or file and the fix.
"""
from __future__ import annotations

import os
import random
from typing import Any, Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from tqdm import tqdm
from torchvision.datasets.folder import IMG_EXTENSIONS, default_loader, find_classes, make_dataset

from snnet_core.distributed import DistContext, gather_objects
from snnet_core.io.image_size import check_image_pixels

Sample = Tuple[str, int]


class ImageFolderSplit:
    """The images of one split: ``samples`` (path, class index) sorted as torchvision's ``ImageFolder`` sorts them,
    and ``classes`` (the folder names, sorted)."""

    def __init__(self, root: str, classes: List[str], samples: List[Sample]):
        self.root, self.classes, self.samples = root, classes, samples

    def __len__(self) -> int:
        return len(self.samples)


def read_split(root: str, split: str) -> ImageFolderSplit:
    """``<root>/<split>`` as an ``ImageFolderSplit``; ``FileNotFoundError`` naming the directory when it is
    missing or holds no class folder with images."""
    directory = os.path.join(root, split)
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"{directory} does not exist: dataloader.root must hold train/<class>/*.JPEG and "
                                "val/<class>/*.JPEG (torchvision's ImageFolder layout; projects/snnet_cls/README.md, "
                                "Data)")
    try:
        classes, index = find_classes(directory)
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"{directory} holds no class folders: expected {directory}/<class>/*.JPEG") from exc
    samples = make_dataset(directory, index, extensions=IMG_EXTENSIONS, allow_empty=True)
    empty = sorted(set(classes) - {classes[label] for _, label in samples})
    if empty:
        raise FileNotFoundError(f"{len(empty)} class folder(s) of {directory} hold no image ({', '.join(empty[:5])}"
                                f"{', ...' if len(empty) > 5 else ''}; extensions {', '.join(IMG_EXTENSIONS)}): "
                                "remove them or add their images")
    return ImageFolderSplit(directory, classes, samples)


def check_same_classes(train: ImageFolderSplit, val: ImageFolderSplit) -> None:
    """Refuse train and val splits whose class folders differ: labels are indices of the sorted folder names."""
    if train.classes == val.classes:
        return
    only_train = sorted(set(train.classes) - set(val.classes))
    only_val = sorted(set(val.classes) - set(train.classes))
    parts = [f"only in {train.root}: {', '.join(only_train[:5])}" if only_train else "",
             f"only in {val.root}: {', '.join(only_val[:5])}" if only_val else ""]
    raise ValueError(f"the class folders of {train.root} ({len(train.classes)}) and {val.root} ({len(val.classes)}) "
                     f"differ ({'; '.join(p for p in parts if p)}): a label is the index of its sorted folder name, "
                     "so both splits need the same class folders")


def check_num_classes(split: ImageFolderSplit, num_classes: int) -> None:
    """Refuse a split with more classes than the model's classifier has outputs."""
    if len(split.classes) > num_classes:
        raise ValueError(f"{split.root} has {len(split.classes)} class folders but model.num_classes={num_classes}: "
                         f"set model.num_classes={len(split.classes)}")


def check_images(split: ImageFolderSplit, limit: Optional[int] = None, ctx: DistContext = DistContext()) -> None:
    """Read the header of every image of ``split`` (the first ``limit``); ``ValueError`` naming the first file that
    is not an image PIL can open (or that exceeds its decompression-bomb limit).

    With several processes each reads every ``world_size``-th header and every rank raises the error of the first
    bad file any of them found: were rank 0 to read all of ImageNet's 1.3M headers alone, the others would wait in
    their next collective, past NCCL's 10-minute timeout on a slow disk."""
    samples = split.samples[:limit]
    shard = range(ctx.rank, len(samples), ctx.world_size)
    found: Optional[Tuple[int, str]] = None  # (index, error) of this rank's first bad file
    for index in tqdm(shard, desc=f"checking the images of {split.root}", unit="img", disable=not ctx.is_main):
        path = samples[index][0]
        try:
            with Image.open(path) as img:
                check_image_pixels(path, (img.height, img.width))
        except (OSError, SyntaxError) as exc:  # PIL.UnidentifiedImageError is an OSError
            found = (index, f"{path} is not an image PIL can read ({type(exc).__name__}: {exc}): delete or replace "
                            "it (every file with an image extension under a class folder is read)")
        except ValueError as exc:  # snnet_core.io.image_size.ImageTooLargeError names the file and the fix
            found = (index, str(exc))
        if found is not None:
            break
    errors = [error for error in gather_objects(ctx, found) if error is not None]
    if errors:
        raise ValueError(min(errors)[1])


def _seed_of(seed: int, epoch: int, index: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])


class SeededSamples(Dataset):
    """``(image tensor, class index)`` of ``samples`` through ``transform``; each item's random draws (Python's
    ``random``, numpy's and torch's generator) are seeded by (``seed``, epoch, index), the callers' generators left as
    they were: an image's augmentation is the same whatever the loader's workers or a resume. ``set_epoch``
    chooses the epoch. An image that cannot be read is a ``ValueError`` naming its file."""

    def __init__(self, samples: Sequence[Sample], transform: Callable[[Image.Image], Any], seed: int = 0,
                 loader: Callable[[str], Image.Image] = default_loader):
        self.samples, self.transform, self.seed, self.loader = list(samples), transform, seed, loader
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        try:
            image = self.loader(path)
        except (OSError, SyntaxError) as exc:
            raise ValueError(f"could not read the image {path} ({type(exc).__name__}: {exc})") from exc
        seed = _seed_of(self.seed, self.epoch, index)
        state, numpy_state = random.getstate(), np.random.get_state()
        random.seed(seed)
        np.random.seed(seed)  # timm's RandAugment draws its operations from numpy
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                return self.transform(image), label
        finally:
            random.setstate(state)
            np.random.set_state(numpy_state)
