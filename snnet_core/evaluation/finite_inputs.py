"""Test images holding NaN or inf values, found while evaluating: left out of the metrics and named once.

A NaN pixel reaches every output of a ViT (attention mixes all tokens): kept, one such image turns the summed
metrics of every stitch into NaN, hours of a per-stitch evaluation for nothing. The projects' evaluation loops
pass each batch through ``NonFiniteImages.keep`` and evaluate the images it keeps; ``warn`` names the others
(count and the first few) once per evaluation, whatever the number of stitches or passes over the test set.
A uint8 image (what both projects' readers give) is never looked at: it cannot hold NaN.
"""
from __future__ import annotations

import logging
from typing import Callable, Dict, List, Sequence, Union

import torch

__all__ = ["NonFiniteImages"]

SHOWN = 5  # image names in the warning


class NonFiniteImages:
    """The images of one evaluation that hold NaN or inf (``keep`` records them, ``warn`` names them once)."""

    def __init__(self) -> None:
        self.names: Dict[str, None] = {}  # insertion-ordered set
        self.warned = False

    def keep(self, images: Union[torch.Tensor, Sequence[torch.Tensor]], name_of: Callable[[int], str]) -> List[int]:
        """Indices of the images of a batch (a ``(B, ...)`` tensor, or ``B`` tensors of any shapes) whose values
        are all finite; the others are recorded by ``name_of(index)``."""
        if isinstance(images, torch.Tensor):
            finite = (torch.isfinite(images.flatten(1)).all(1).tolist() if images.is_floating_point()
                      else [True] * len(images))
        else:
            finite = [not image.is_floating_point() or bool(torch.isfinite(image).all()) for image in images]
        for index, ok in enumerate(finite):
            if not ok:
                self.names.setdefault(name_of(index))
        return [index for index, ok in enumerate(finite) if ok]

    def warn(self, logger: logging.Logger, consequence: str) -> None:
        """One warning naming the recorded images (count and the first ``SHOWN``) and ``consequence`` (what their
        leaving out does to the metrics); later calls, and calls with none recorded, say nothing."""
        if not self.names or self.warned:
            return
        self.warned = True
        names = list(self.names)
        shown = ", ".join(names[:SHOWN]) + (f", ... ({len(names)} in all)" if len(names) > SHOWN else "")
        logger.warning("%d test image(s) hold NaN or inf values and are left out of the evaluation: %s. %s. They come "
                       "from a float image file or a corrupt decode: repair or remove them", len(names), shown,
                       consequence)
