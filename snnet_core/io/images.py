"""Input images of the prediction scripts (``projects/*/demo.py``, ``predict.py``): files or folders of files, and
the names of the files a script writes for them (``output_paths``: never over an input, never twice in a run, never
over an earlier run's output unless asked)."""
from __future__ import annotations

import logging
import os
from typing import Dict, List, Sequence

from snnet_core.io.atomic_io import path_clash

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def list_images(inputs: Sequence[str]) -> List[str]:
    """Image files named by ``inputs`` (files, or folders whose image files are taken in sorted order); a file
    named twice (e.g. itself and its folder) is listed once."""
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
    unique: Dict[str, str] = {}
    for path in paths:
        unique.setdefault(_file_key(path), path)
    return list(unique.values())


def output_paths(images: Sequence[str], output_dir: str, suffixes: Sequence[str], overwrite: bool = False
                 ) -> List[List[str]]:
    """The files a prediction script writes for each of ``images``: ``output_dir/NAME<suffix>`` per suffix (e.g.
    ``("_depth.png", "_depth.npy")``), ``NAME`` the image's file name without extension.

    Images sharing a ``NAME`` (``a/x.jpg``, ``b/x.png``; compared case-insensitively, as a Windows or macOS disk
    does) keep it for the first and get ``NAME_2``, ``NAME_3``, ... for the others, each one logged. Call it
    before any compute: it raises ``ValueError`` for an output that would replace an input image (naming both:
    give ``--output`` another folder), ``FileExistsError`` for outputs an earlier run wrote, unless ``overwrite``
    (``--overwrite``) replaces them, and ``NotADirectoryError`` for an ``output_dir`` below a file or an output
    that is a folder.
    """
    taken = {os.path.splitext(os.path.basename(p))[0].lower() for p in images}
    used: Dict[str, str] = {}
    paths = []
    for image in images:
        stem = name = os.path.splitext(os.path.basename(image))[0]
        number = 1
        while name.lower() in used or (number > 1 and name.lower() in taken):
            number += 1
            name = f"{stem}_{number}"
        if number > 1:
            logger.warning("%s has the name of %s: its output is named %s", image, used[stem.lower()],
                           name + suffixes[0])
        used[name.lower()] = image
        paths.append([os.path.join(output_dir, name + suffix) for suffix in suffixes])
    clash = next(filter(None, (path_clash(out) for outputs in paths for out in outputs)), None)
    if clash is not None:
        raise NotADirectoryError(f"--output {output_dir}: {clash}")
    inputs = {_file_key(p): p for p in images}
    for image, outputs in zip(images, paths):
        for out in outputs:
            replaced = inputs.get(_file_key(out))
            if replaced is not None:
                raise ValueError(f"--output {output_dir}: the output {out} of {image} would replace the input image "
                                 f"{replaced}: give --output another folder")
    existing = [out for outputs in paths for out in outputs if os.path.lexists(out)]
    if existing and not overwrite:
        shown = ", ".join(existing[:4]) + (f", ... ({len(existing)} files)" if len(existing) > 4 else "")
        raise FileExistsError(f"--output {output_dir} already holds {shown}, written before: pass --overwrite to "
                              "replace them, or give --output another folder")
    return paths


def _file_key(path: str) -> str:
    return os.path.normcase(os.path.realpath(path))
