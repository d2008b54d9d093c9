"""How large an input image of the prediction scripts (``projects/*/demo.py``) may be, checked before decoding.

A photo is decoded whole before the model sees it (resized to the model's input size): a 8000x8000 PNG of one
colour is a few KB on disk and 192 MB decoded, a crafted one of 60000x60000 pixels is 10.8 GB. ``check_image_pixels``
reads the size from the file's header (PIL's ``Image.open`` does not decode) and refuses an image of more than
``MAX_IMAGE_PIXELS`` before it is decoded; PIL's own decompression-bomb error (over about 179 MP) is turned into
the same clear refusal, and its warning (over about 89 MP) is never reached.
"""
from __future__ import annotations

import warnings
from typing import Optional, Tuple

from PIL import Image

__all__ = ["ImageTooLargeError", "MAX_IMAGE_PIXELS", "check_image_pixels", "header_size"]

MAX_IMAGE_PIXELS = 50_000_000  # 50 MP: a 48 MP (8000x6000) camera photo passes; 150 MB decoded as RGB uint8


class ImageTooLargeError(ValueError):
    """An input image has more pixels than ``MAX_IMAGE_PIXELS``."""


def _refusal(path: str, what: str, max_pixels: int) -> ImageTooLargeError:
    side = int(max_pixels ** 0.5)
    return ImageTooLargeError(
        f"image {path!r} is {what}, more than the demos' limit of {max_pixels / 1e6:.0f} MP "
        f"(snnet_core.io.image_size.MAX_IMAGE_PIXELS): refused before decoding it. The model sees it resized to its "
        f"input size anyway: downscale it (e.g. to at most {side}x{side}) or leave it out")


def header_size(path: str, max_pixels: int = MAX_IMAGE_PIXELS) -> Optional[Tuple[int, int]]:
    """``(H, W)`` stated by the header of the image file ``path`` (nothing is decoded); ``None`` if PIL does not
    know its format (the decoder then names the problem). Raises ``ImageTooLargeError`` for a size PIL itself
    refuses as a decompression bomb."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(path) as image:
                width, height = image.size
        except Image.DecompressionBombError as exc:
            raise _refusal(path, f"larger than PIL's decompression-bomb limit ({exc})", max_pixels) from exc
        except (OSError, ValueError, SyntaxError):  # not an image PIL reads (SyntaxError: some broken headers)
            return None
    return int(height), int(width)


def check_image_pixels(path: str, size: Optional[Tuple[int, int]] = None, max_pixels: int = MAX_IMAGE_PIXELS
                       ) -> Optional[Tuple[int, int]]:
    """Raise ``ImageTooLargeError`` (a ``ValueError`` naming the file, its size, the limit and the fix) if the
    image ``path`` has more than ``max_pixels`` pixels; returns its ``(H, W)``.

    ``size``: the ``(H, W)`` of the decoded image (for a format whose header PIL cannot read); without it the
    size comes from the file's header, before decoding (``None`` returned if it cannot be read there)."""
    size = size if size is not None else header_size(path, max_pixels)
    if size is not None and size[0] * size[1] > max_pixels:
        what = f"{size[1]}x{size[0]} pixels (width x height, {size[0] * size[1] / 1e6:.0f} MP)"
        raise _refusal(path, what, max_pixels)
    return size
