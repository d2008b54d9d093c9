"""The image transforms of upstream SN-Netv2's classification code (DeiT III's), built from timm and torchvision.

- Evaluation (upstream ``datasets.build_transform``, ``is_train=False``): resize the shorter side to
  ``int(size / crop_ratio)`` (bicubic), centre crop ``size``, ImageNet mean/std. Upstream's configs set
  ``eval_crop_ratio`` 1.0: resize to 224, crop 224.
- Training with ``three_augment`` (upstream ``augment.new_data_aug_generator``, DeiT III's 3-Augment): a simple
  random crop (``src``: resize to ``size``, random crop with 4 pixels of reflect padding, flip) or timm's
  random-resized crop and flip; then one of grayscale, solarisation and Gaussian blur (each image), colour jitter;
  ImageNet mean/std.
- Training without it: timm's ``create_transform(is_training=True)`` (RandAugment, random erasing) as upstream
  builds it (SN-Netv1's recipe), its posterize keeping 0 bits as the Pillow timm was written for did.

Random draws come from Python's ``random``, numpy's (RandAugment's choice of operations) and torch's generator;
``SeededSamples`` seeds all three for every (epoch, image), so the augmentation of an image does not depend on the
loader's workers or a resume.
"""
from __future__ import annotations

import random
from typing import Any, Callable, Dict, Optional

from PIL import Image, ImageFilter, ImageOps
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, create_transform
from timm.data.auto_augment import posterize
from timm.data.transforms import RandomResizedCropAndInterpolation
from torchvision import transforms as T

BICUBIC = T.InterpolationMode.BICUBIC


def eval_transform(size: int, crop_ratio: float = 1.0) -> Callable[[Image.Image], Any]:
    """PIL image -> ``(3, size, size)`` float tensor: resize (shorter side ``int(size / crop_ratio)``, bicubic),
    centre crop, normalise with ImageNet mean/std."""
    return T.Compose([T.Resize(int(size / crop_ratio), interpolation=BICUBIC), T.CenterCrop(size), T.ToTensor(),
                      T.Normalize(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)])


class _Always:
    """Apply a PIL operation to every image (3-Augment draws which one)."""

    def __init__(self, op: Callable[[Image.Image], Image.Image]):
        self.op = op

    def __call__(self, img: Image.Image) -> Image.Image:
        return self.op(img)


def _gaussian_blur(img: Image.Image) -> Image.Image:
    """PIL Gaussian blur of a radius drawn uniformly in [0.1, 2] (DINO's, as 3-Augment uses it)."""
    return img.filter(ImageFilter.GaussianBlur(radius=random.uniform(0.1, 2.0)))


def three_augment(size: int, src: bool, color_jitter: float) -> Callable[[Image.Image], Any]:
    """DeiT III's 3-Augment: crop and flip (``src``: simple random crop), one of grayscale / solarise / blur,
    colour jitter (0: none), ImageNet normalisation."""
    if src:
        crop = [T.Resize(size, interpolation=BICUBIC), T.RandomCrop(size, padding=4, padding_mode="reflect")]
    else:
        crop = [RandomResizedCropAndInterpolation(size, scale=(0.08, 1.0), interpolation="bicubic")]
    ops = crop + [T.RandomHorizontalFlip(),
                  T.RandomChoice([T.Grayscale(3), _Always(ImageOps.solarize), _Always(_gaussian_blur)])]
    if color_jitter:
        ops.append(T.ColorJitter(color_jitter, color_jitter, color_jitter))
    return T.Compose(ops + [T.ToTensor(), T.Normalize(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)])


def train_transform(size: int, three_augment_on: bool = True, src: bool = True, color_jitter: float = 0.3,
                    auto_augment: Optional[str] = "rand-m9-mstd0.5-inc1", re_prob: float = 0.0
                    ) -> Callable[[Image.Image], Any]:
    """The training transform of ``dataloader.augmentation`` (keys as the arguments): 3-Augment, or timm's
    ``create_transform(is_training=True)`` with RandAugment ``auto_augment`` and random erasing ``re_prob``."""
    if three_augment_on:
        return three_augment(size, src, color_jitter)
    transform = create_transform(size, is_training=True, color_jitter=color_jitter, auto_augment=auto_augment,
                                 interpolation="bicubic", re_prob=re_prob, re_mode="pixel", re_count=1)
    for step in transform.transforms:
        for op in getattr(step, "ops", ()):  # timm's RandAugment / AutoAugment: their AugmentOps
            if op.aug_fn is posterize:
                op.aug_fn = posterize_keeping_any_bits
    return transform


def posterize_keeping_any_bits(img: Image.Image, bits_to_keep: int, **kwargs: Any) -> Image.Image:
    """timm's ``posterize`` op, with 0 bits kept giving a black image as the Pillow timm's RandAugment was written for
    does: RandAugment's ``PosterizeIncreasing`` keeps ``4 - int(level * 4 / 10)`` bits, 0 at level 10 (magnitude 9
    plus noise of std 0.5 reaches it), which Pillow 13 refuses (``bits must be between or equal to 1 and 8``)."""
    if bits_to_keep <= 0:
        return Image.new(img.mode, img.size)
    return posterize(img, bits_to_keep, **kwargs)


def build_train_transform(size: int, augmentation: Dict[str, Any]) -> Callable[[Image.Image], Any]:
    """``train_transform`` of a config's ``dataloader.augmentation``."""
    return train_transform(size, augmentation["three_augment"], augmentation["src"], augmentation["color_jitter"],
                           augmentation["auto_augment"], augmentation["re_prob"])
