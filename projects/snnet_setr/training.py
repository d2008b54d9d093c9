"""Training pieces of the stitched SETR that know the segmentor: where its SN-Net is, and the LS init of its
stitching layers from training images as the backbone sees them. The checkpointer and hooks are detectron2's
shared ones (``snnet_core.d2``)."""
from __future__ import annotations

from typing import Iterable, Iterator, List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from snnet_core import StitchedViT
from snnet_core.d2.hooks import ls_init_on_main, unwrap

from .model import SETR, StitchedSETR


def stitched_setr(model: nn.Module) -> Optional[StitchedSETR]:
    """The ``StitchedSETR`` of ``model`` (inside a DDP wrapper too), ``None`` for a single-ViT baseline."""
    model = unwrap(model)
    return model if isinstance(model, StitchedSETR) else None


def snnet_of(model: nn.Module) -> StitchedViT:
    """The ``StitchedViT`` of a stitched SETR (``TypeError`` for another model)."""
    setr = stitched_setr(model)
    if setr is None:
        raise TypeError(f"the model is a {type(unwrap(model)).__name__}, not a StitchedSETR")
    return setr.backbone


def calibration_images(model: SETR, data_loader: Iterable[List[dict]]) -> Iterator[torch.Tensor]:
    """Training batches as the backbone sees them in training: normalised, padded at the bottom/right to the
    batch's largest size and at least the crop (``SETR.forward_train``'s padding), cut to multiples of the patch
    size: ``(B, 3, H, W)``. Upstream initialises its stitching layers from the training loader's batches too."""
    patch = model.backbone.patch_size
    for inputs in data_loader:
        height = max([model.crop_size[0]] + [int(x["image"].shape[-2]) for x in inputs])
        width = max([model.crop_size[1]] + [int(x["image"].shape[-1]) for x in inputs])
        images = [model.normalize(x["image"]) for x in inputs]
        images = torch.stack([F.pad(im, (0, width - im.shape[-1], 0, height - im.shape[-2])) for im in images])
        yield images[..., : height // patch * patch, : width // patch * patch]


def ls_init_setr(model: nn.Module, data_loader: Iterable[List[dict]], num_images: int) -> None:
    """LS-initialise the stitching layers on the main process and broadcast them to every rank.

    ``data_loader`` gives detectron2 inputs (lists of dicts); only the main process iterates it.
    """
    ls_init_on_main(snnet_of(model), calibration_images(unwrap(model), data_loader), num_images)
