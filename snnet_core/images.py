"""Input images of the prediction scripts (``projects/*/demo.py``, ``predict.py``): files or folders of files."""
from __future__ import annotations

import os
from typing import List, Sequence

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def list_images(inputs: Sequence[str]) -> List[str]:
    """Image files named by ``inputs`` (files, or folders whose image files are taken in sorted order)."""
    paths: List[str] = []
    for item in inputs:
        if os.path.isdir(item):
            found = sorted(os.path.join(item, n) for n in os.listdir(item) if n.lower().endswith(IMAGE_EXTENSIONS))
            if not found:
                raise FileNotFoundError(f"folder {item!r} holds no image ({', '.join(IMAGE_EXTENSIONS)})")
            paths += found
        elif os.path.isfile(item):
            paths.append(item)
        else:
            raise FileNotFoundError(f"input {item!r} is neither an image file nor a folder")
    return paths
