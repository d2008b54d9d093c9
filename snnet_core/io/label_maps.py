"""Semantic-segmentation label maps on disk: one 8-bit channel of class ids per pixel, stored as PNG."""
from __future__ import annotations

import os

import numpy as np
from PIL import Image

__all__ = ["read_label_map"]


def read_label_map(path: str) -> np.ndarray:
    """The label map ``(H, W)`` uint8 stored in the image file ``path``, as stored: no colour conversion (a palette
    PNG gives its indices, as mmsegmentation's ``LoadAnnotations`` reads it). ``OSError`` naming the file if it is
    missing or cannot be decoded, ``ValueError`` naming it if it is not one 8-bit channel."""
    try:
        with Image.open(path) as image:
            labels = np.asarray(image)
    except (OSError, SyntaxError, ValueError) as exc:
        problem = "is missing" if not os.path.isfile(path) else "could not be read (truncated, or not an image?)"
        raise OSError(f"label map {path} {problem}: {exc}") from exc
    if labels.ndim != 2 or labels.dtype != np.uint8:
        raise ValueError(f"label map {path} is a {labels.dtype} image of shape {labels.shape}, not one channel of "
                         "8-bit class ids (H, W): store the class id of each pixel, not a colour rendering")
    return labels
