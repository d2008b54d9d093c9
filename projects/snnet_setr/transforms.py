"""mmsegmentation's default ADE20K / COCO-Stuff training pipeline as detectron2 augmentations.

mmseg (``configs/_base_/datasets/ade20k.py``, ``coco-stuff10k.py``) trains on::

    RandomResize(scale=(2048, 512), ratio_range=(0.5, 2.0), keep_ratio=True)
    RandomCrop(crop_size=(512, 512), cat_max_ratio=0.75)
    RandomFlip(prob=0.5)
    PhotoMetricDistortion()
    (SegDataPreProcessor: normalise, then pad to 512x512 with 0, the labels with 255)

and tests on ``Resize(scale=(2048, 512), keep_ratio=True)`` of the image alone. Here: ``RandomRescale``,
``CategoryCappedCrop``, detectron2's ``RandomFlip``, ``PhotoMetricDistortion`` and ``PadToSize``, applied to the
BGR uint8 image as mmseg's pipeline sees it (cv2 resizing, bilinear for images and nearest for labels, as mmcv's
``imrescale``). Random draws come from numpy's global RNG, in mmseg's order (the training loader seeds it per
item: ``snnet_core.training.data_order``).
"""
from __future__ import annotations

import functools
from typing import Optional, Sequence, Tuple

import cv2
import detectron2.data.transforms as T
import numpy as np

__all__ = ["CategoryCappedCrop", "CvResizeTransform", "PadToSize", "PerChannelPadTransform",
           "PhotoMetricDistortion", "RandomRescale", "photometric_distortion", "rescaled_size"]


def rescaled_size(height: int, width: int, scale: Tuple[int, int]) -> Tuple[int, int]:
    """mmcv's ``imrescale`` size: the largest ``(H, W)`` of the image's aspect ratio whose long side is at most
    ``max(scale)`` and short side at most ``min(scale)``, each side rounded half up."""
    factor = min(max(scale) / max(height, width), min(scale) / min(height, width))
    return int(height * factor + 0.5), int(width * factor + 0.5)


class CvResizeTransform(T.Transform):
    """Resize ``(h, w) -> (new_h, new_w)`` with cv2: bilinear for the image, nearest for the label map (mmcv's
    ``imresize`` with its cv2 backend; detectron2's ``ResizeTransform`` resizes uint8 images with PIL)."""

    def __init__(self, h: int, w: int, new_h: int, new_w: int):
        super().__init__()
        self._set_attributes(locals())

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        return cv2.resize(img, (self.new_w, self.new_h), interpolation=cv2.INTER_LINEAR)

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        return cv2.resize(segmentation, (self.new_w, self.new_h), interpolation=cv2.INTER_NEAREST)

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        coords[:, 0] = coords[:, 0] * (self.new_w * 1.0 / self.w)
        coords[:, 1] = coords[:, 1] * (self.new_h * 1.0 / self.h)
        return coords


class RandomRescale(T.Augmentation):
    """mmseg's ``RandomResize(scale, ratio_range, keep_ratio=True)``: draw ``ratio`` uniformly in ``ratio_range``,
    then rescale the image to fit ``(int(scale[0] * ratio), int(scale[1] * ratio))`` (long side, short side) at
    its aspect ratio. ``ratio_range=None``: the fixed ``Resize(scale, keep_ratio=True)`` of the test pipeline."""

    def __init__(self, scale: Tuple[int, int], ratio_range: Optional[Tuple[float, float]] = None):
        super().__init__()
        self._init(locals())

    def get_transform(self, image: np.ndarray) -> CvResizeTransform:
        scale = self.scale
        if self.ratio_range is not None:
            low, high = self.ratio_range
            ratio = np.random.random_sample() * (high - low) + low
            scale = (int(scale[0] * ratio), int(scale[1] * ratio))
        h, w = image.shape[:2]
        return CvResizeTransform(h, w, *rescaled_size(h, w, scale))


class CategoryCappedCrop(T.Augmentation):
    """mmseg's ``RandomCrop(crop_size, cat_max_ratio)``: a random window of ``crop_size`` ``(h, w)`` (the whole
    side where the image is smaller), redrawn up to 10 times while one class covers ``cat_max_ratio`` or more of
    its labelled (not ``ignore_label``) pixels, or it holds fewer than two classes; after 10 refusals an 11th
    window is taken unchecked. detectron2's ``RandomCrop_CategoryAreaConstraint`` keeps the 10th refused window
    instead."""

    def __init__(self, crop_size: Tuple[int, int], cat_max_ratio: float = 1.0, ignore_label: int = 255):
        super().__init__()
        self._init(locals())

    def _window(self, h: int, w: int) -> Tuple[int, int, int, int]:
        y0 = np.random.randint(0, max(h - self.crop_size[0], 0) + 1)
        x0 = np.random.randint(0, max(w - self.crop_size[1], 0) + 1)
        return x0, y0, min(self.crop_size[1], w - x0), min(self.crop_size[0], h - y0)

    def get_transform(self, image: np.ndarray, sem_seg: np.ndarray) -> T.CropTransform:
        h, w = sem_seg.shape
        x0, y0, cw, ch = self._window(h, w)
        if self.cat_max_ratio < 1.0:
            for _ in range(10):
                labels, counts = np.unique(sem_seg[y0:y0 + ch, x0:x0 + cw], return_counts=True)
                counts = counts[labels != self.ignore_label]
                if len(counts) > 1 and counts.max() / counts.sum() < self.cat_max_ratio:
                    break
                x0, y0, cw, ch = self._window(h, w)
        return T.CropTransform(x0, y0, cw, ch)


def _scaled(img: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
    """mmseg's ``PhotoMetricDistortion.convert``: ``img * alpha + beta`` in float32, clipped, truncated to uint8."""
    return np.clip(img.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)


def photometric_distortion(img: np.ndarray, brightness: Optional[float], contrast: Optional[float],
                           contrast_first: bool, saturation: Optional[float], hue: Optional[int]) -> np.ndarray:
    """Apply drawn distortions to a BGR uint8 image ``(H, W, 3)`` in mmseg's order: brightness (add), contrast
    (multiply) if ``contrast_first``, saturation (multiply S in HSV), hue (shift H, modulo 180), contrast if not
    ``contrast_first``. ``None`` skips a step."""
    if brightness is not None:
        img = _scaled(img, beta=brightness)
    if contrast is not None and contrast_first:
        img = _scaled(img, alpha=contrast)
    if saturation is not None:
        hsv = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)
        hsv[:, :, 1] = _scaled(hsv[:, :, 1], alpha=saturation)
        img = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)
    if hue is not None:
        hsv = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)
        hsv[:, :, 0] = (hsv[:, :, 0].astype(int) + hue) % 180
        img = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)
    if contrast is not None and not contrast_first:
        img = _scaled(img, alpha=contrast)
    return img


class PhotoMetricDistortion(T.Augmentation):
    """mmseg's ``PhotoMetricDistortion`` on BGR uint8 images: brightness ``+U(-32, 32)``, contrast ``xU(0.5, 1.5)``
    (second or last, at random), saturation ``xU(0.5, 1.5)``, hue ``+randint(-18, 18)``, each with probability
    0.5, drawn in mmseg's order. The label map is untouched (detectron2's ``ColorTransform``)."""

    def __init__(self, brightness_delta: int = 32, contrast_range: Tuple[float, float] = (0.5, 1.5),
                 saturation_range: Tuple[float, float] = (0.5, 1.5), hue_delta: int = 18):
        super().__init__()
        self._init(locals())

    def get_transform(self, image: np.ndarray) -> T.ColorTransform:
        brightness = (np.random.uniform(-self.brightness_delta, self.brightness_delta) if np.random.randint(2)
                      else None)
        contrast_first = bool(np.random.randint(2))  # mmseg's mode 1
        contrast = None
        if contrast_first and np.random.randint(2):
            contrast = np.random.uniform(*self.contrast_range)
        saturation = np.random.uniform(*self.saturation_range) if np.random.randint(2) else None
        hue = int(np.random.randint(-self.hue_delta, self.hue_delta)) if np.random.randint(2) else None
        if not contrast_first and np.random.randint(2):
            contrast = np.random.uniform(*self.contrast_range)
        return T.ColorTransform(functools.partial(photometric_distortion, brightness=brightness, contrast=contrast,
                                                  contrast_first=contrast_first, saturation=saturation, hue=hue))


class PerChannelPadTransform(T.PadTransform):
    """detectron2's ``PadTransform`` whose image ``pad_value`` may be one value per channel."""

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        h, w = img.shape[:2]
        out = np.empty((self.y0 + h + self.y1, self.x0 + w + self.x1) + img.shape[2:], dtype=img.dtype)
        out[...] = np.asarray(self.pad_value, dtype=img.dtype)
        out[self.y0:self.y0 + h, self.x0:self.x0 + w] = img
        return out


class PadToSize(T.Augmentation):
    """Pad the bottom and right of a smaller image to ``size`` ``(h, w)``: the image with ``pad_value`` (one value,
    or one per channel), the label map with ``seg_pad_value`` (mmseg's ``stack_batch``)."""

    def __init__(self, size: Tuple[int, int], pad_value: Sequence[float] = (0.0,), seg_pad_value: int = 255):
        super().__init__()
        self._init(locals())

    def get_transform(self, image: np.ndarray) -> PerChannelPadTransform:
        h, w = image.shape[:2]
        return PerChannelPadTransform(0, 0, max(self.size[1] - w, 0), max(self.size[0] - h, 0), w, h,
                                      pad_value=tuple(self.pad_value), seg_pad_value=self.seg_pad_value)
