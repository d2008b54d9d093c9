"""Training pieces of the stitched ViTDet that know Mask R-CNN: where its SN-Net is, and the LS init of its
stitching layers from training images as the backbone sees them. The checkpointer and hooks are detectron2's
shared ones (``snnet_core.d2``)."""
from __future__ import annotations

from typing import Iterable, Iterator, List

import torch
import torch.nn as nn
from detectron2.modeling import GeneralizedRCNN

from snnet_core.d2.hooks import ls_init_on_main, unwrap

from .backbone import StitchedViTDetBackbone


def stitched_backbone(model: nn.Module) -> StitchedViTDetBackbone | None:
    """The ``StitchedViTDetBackbone`` inside a ViTDet model, ``None`` for a single-ViT baseline."""
    net = getattr(unwrap(model).backbone, "net", None)
    return net if isinstance(net, StitchedViTDetBackbone) else None


def calibration_images(model: GeneralizedRCNN, data_loader: Iterable[List[dict]]) -> Iterator[torch.Tensor]:
    """Normalised, padded image batches ``(B, 3, H, W)`` exactly as the backbone sees them."""
    for inputs in data_loader:
        yield model.preprocess_image(inputs).tensor


def ls_init_detector(model: nn.Module, data_loader: Iterable[List[dict]], num_images: int) -> None:
    """LS-initialise the stitching layers on the main process and broadcast them to every rank.

    ``data_loader`` gives detectron2 inputs (lists of dicts); only the main process iterates it.
    """
    ls_init_on_main(stitched_backbone(model).snnet, calibration_images(unwrap(model), data_loader), num_images)
