"""Training augmentation and evaluation preprocessing of NYUv2 frames (DPT / depth-toolbox recipe).

Training, in the toolbox's order (``NYUCrop``, ``RandomRotate``, ``RandomFlip``, ``RandomCrop``, ``ColorAug``):
NYU border crop ``[45:472, 43:608]`` of a 480x640 frame (drops the white frame border), random rotation of
+-2.5 degrees (bilinear image, nearest depth, new corners invalid), horizontal flip, random crop to
416x544, gamma/brightness/colour jitter. Evaluation: the full frame. Both normalise with
mean = std = 127.5 (images to ``[-1, 1]``; SN-Netv2's depth config, which overrides the dataset's ImageNet
statistics).

Randomness comes from a ``numpy.random.Generator`` passed in per sample (``DepthDataset`` derives it from
the seed, the epoch and the frame index), so a resumed run repeats its augmentations exactly.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from .metrics import NYU_SIZE

PIXEL_MEAN = PIXEL_STD = 127.5  # upstream snnetv2_dpt_deit3_s_l_nyu.py img_norm_cfg
NYU_CROP = (45, 472, 43, 608)  # toolbox NYUCrop: top, bottom, left, right of a 480x640 frame


def scale_box(box: Sequence[int], height: int, width: int) -> Tuple[int, int, int, int]:
    """``(top, bottom, left, right)`` of a 480x640 frame's ``box``, scaled (rounded half up) to ``height x width``."""
    sy, sx = height / NYU_SIZE[0], width / NYU_SIZE[1]
    top, bottom, left, right = box
    return tuple(math.floor(v + 0.5) for v in (top * sy, bottom * sy, left * sx, right * sx))


def to_tensors(image: np.ndarray, depth: np.ndarray) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(H, W, 3)`` RGB in [0, 255] and ``(H, W)`` metres -> normalised ``(3, H, W)`` and ``(1, H, W)`` float32."""
    img = (np.asarray(image, dtype=np.float32) - PIXEL_MEAN) / PIXEL_STD
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))), torch.from_numpy(
        np.ascontiguousarray(depth, dtype=np.float32))[None]


class TrainAugmentation:
    """The training augmentation; ``__call__(image, depth, rng)`` -> tensors of ``crop_size``.

    Args:
        crop_size: ``(h, w)`` of the random crop (416x544 for 480x640 frames).
        border_crop: ``(top, bottom, left, right)`` cut first, given for a 480x640 frame and scaled for
            other frame sizes (the toolbox's ``NYUCrop``).
        rotate_degrees / rotate_prob: rotation range and probability.
        flip_prob: horizontal flip probability.
        color_prob, gamma, brightness, colour: photometric jitter probability and ranges
            (``img**gamma * brightness * colour[c]``, clipped to the value range).
        gamma_on_raw_values: True (the toolbox's ``ColorAug``): ``img**gamma`` on the raw 0-255 values, so
            gamma 1.1 brightens a value of 100 to 158; False: on ``[0, 1]`` values (BTS), a milder change.
    """

    def __init__(
        self,
        crop_size: Sequence[int] = (416, 544),
        border_crop: Sequence[int] = NYU_CROP,
        rotate_degrees: float = 2.5,
        rotate_prob: float = 0.5,
        flip_prob: float = 0.5,
        color_prob: float = 0.5,
        gamma: Tuple[float, float] = (0.9, 1.1),
        brightness: Tuple[float, float] = (0.75, 1.25),
        colour: Tuple[float, float] = (0.9, 1.1),
        gamma_on_raw_values: bool = True,
    ):
        self.crop_size = (int(crop_size[0]), int(crop_size[1]))
        self.border_crop = tuple(int(v) for v in border_crop)
        self.rotate_degrees, self.rotate_prob = rotate_degrees, rotate_prob
        self.flip_prob, self.color_prob = flip_prob, color_prob
        self.gamma, self.brightness, self.colour = gamma, brightness, colour
        self.gamma_on_raw_values = gamma_on_raw_values

    def __call__(self, image: np.ndarray, depth: np.ndarray,
                 rng: np.random.Generator) -> Tuple[torch.Tensor, torch.Tensor]:
        top, bottom, left, right = scale_box(self.border_crop, *depth.shape)
        image, depth = image[top:bottom, left:right], depth[top:bottom, left:right]
        if rng.random() < self.rotate_prob:
            image, depth = rotate(image, depth, rng.uniform(-self.rotate_degrees, self.rotate_degrees))
        if rng.random() < self.flip_prob:
            image, depth = image[:, ::-1], depth[:, ::-1]
        image, depth = self._random_crop(image, depth, rng)
        if rng.random() < self.color_prob:
            image = self._jitter(image, rng)
        return to_tensors(image, depth)

    def _random_crop(self, image: np.ndarray, depth: np.ndarray, rng: np.random.Generator):
        h, w = depth.shape
        ch, cw = self.crop_size
        if ch > h or cw > w:
            raise ValueError(f"training crop {ch}x{cw} is larger than the border-cropped frame {h}x{w}: lower "
                             "dataloader.augmentation.crop_size (or widen dataloader.augmentation.border_crop)")
        y, x = int(rng.integers(h - ch + 1)), int(rng.integers(w - cw + 1))
        return image[y:y + ch, x:x + cw], depth[y:y + ch, x:x + cw]

    def _jitter(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        scale = 1.0 if self.gamma_on_raw_values else 255.0
        img = (image.astype(np.float32) / scale) ** rng.uniform(*self.gamma)
        img = img * rng.uniform(*self.brightness) * rng.uniform(*self.colour, size=3).astype(np.float32)
        return np.clip(img * scale, 0.0, 255.0)


def rotate(image: np.ndarray, depth: np.ndarray, degrees: float) -> Tuple[np.ndarray, np.ndarray]:
    """Rotate about the centre: bilinear image, nearest depth; pixels from outside become 0 (invalid)."""
    h, w = depth.shape
    matrix = cv2.getRotationMatrix2D(((w - 1) / 2.0, (h - 1) / 2.0), degrees, 1.0)
    image = cv2.warpAffine(np.ascontiguousarray(image), matrix, (w, h), flags=cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    depth = cv2.warpAffine(np.ascontiguousarray(depth), matrix, (w, h), flags=cv2.INTER_NEAREST,
                           borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return image, depth


class DepthDataset(Dataset):
    """A frame reader (``len`` + ``read(i) -> (image, depth)``) as tensors, augmented when ``augment`` is set.

    Items are ``(image (3, H, W), depth (1, H, W))``. The augmentation of frame ``i`` in epoch ``e`` draws
    from ``numpy.random.default_rng([seed, e, i])``: call ``set_epoch`` before iterating each epoch.
    """

    def __init__(self, frames, augment: Optional[TrainAugmentation] = None, seed: int = 0):
        self.frames, self.augment, self.seed = frames, augment, int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, i: int) -> Tuple[torch.Tensor, torch.Tensor]:
        image, depth = self.frames.read(i)
        if self.augment is None:
            return to_tensors(image, depth)
        return self.augment(image, depth, np.random.default_rng([self.seed, self.epoch, int(i)]))
