"""Files of the prepared and synthetic datasets, shared by the scripts under ``datasets/``.

- ``write_image`` encodes an image or label map and writes it atomically.
- ``write_prepared`` converts label maps into a prepared output folder, complete when it holds ``PREPARED.json``
  (written last): a second run finds it and does nothing, a half-written folder (an interrupted run) is refused.
- ``prepare_main`` is the command line of a preparation script.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
from typing import Callable, Dict, Mapping, Optional, Sequence, Tuple

import cv2
import numpy as np

from tqdm import tqdm

from snnet_core.cli import add_debug_argument
from snnet_core.io.atomic_io import write_atomic, write_json_atomic

MARKER = "PREPARED.json"

logger = logging.getLogger(__name__)


def write_image(path: str, image: np.ndarray, params: Sequence[int] = ()) -> None:
    """``image`` (``(H, W)``, or ``(H, W, 3)`` BGR) encoded by the extension of ``path`` (cv2), written
    atomically."""
    ok, encoded = cv2.imencode(os.path.splitext(path)[1], image, list(params))
    if not ok:
        raise OSError(f"cv2 could not encode {path!r}")
    write_atomic(path, lambda f: f.write(encoded.tobytes()), binary=True)


def _prepared_state(folder: str) -> Optional[dict]:
    """``None`` if ``folder`` does not exist, its ``PREPARED.json`` if it is complete; ``FileExistsError`` naming it
    if it exists without one (an interrupted run, or files from elsewhere)."""
    if not os.path.lexists(folder):
        return None
    marker = os.path.join(folder, MARKER)
    if not os.path.isfile(marker):
        raise FileExistsError(f"{folder} exists but is not a complete prepared output (no {MARKER}: an interrupted "
                              "run?): delete it, or pass --overwrite to convert everything again")
    with open(marker) as f:
        return json.load(f)


def _mark_prepared(folder: str, info: dict) -> None:
    """Write ``folder/PREPARED.json`` (``info``: what was converted), the last file of a prepared output."""
    write_json_atomic(os.path.join(folder, MARKER), info)


def write_prepared(output: str, sources: Mapping[str, Sequence[Tuple[str, str]]],
                   convert: Callable[[str], np.ndarray], info: dict, overwrite: bool = False) -> Dict[str, int]:
    """Write ``output/<split>/<name>`` = ``convert(source)`` (a label map ``(H, W)`` uint8, encoded by ``name``'s
    extension) for every ``(source, name)`` of ``sources[split]``, then ``PREPARED.json`` (``info`` and the counts);
    returns the number of files per split. A complete ``output`` made from as many files is left as it is;
    ``overwrite`` deletes ``output`` first. A failed conversion deletes what it wrote (only a killed process leaves
    a half-written ``output``, which the next run refuses)."""
    counts = {split: len(items) for split, items in sources.items()}
    if overwrite and os.path.isdir(output):
        shutil.rmtree(output)
    state = _prepared_state(output)
    if state is not None:
        if state.get("counts") != counts:
            raise FileExistsError(f"{output} was prepared from {state.get('counts')} files, the input now has "
                                  f"{counts}: pass --overwrite to convert it again")
        logger.info("%s is already prepared: nothing to do", output)
        return counts
    try:
        for split, items in sources.items():
            for source, name in tqdm(items, desc=f"{info.get('dataset', output)} {split}", unit="map"):
                write_image(os.path.join(output, split, name), convert(source))
    except BaseException:  # a bad input file (named by convert) or an interrupt: the next run starts afresh
        shutil.rmtree(output, ignore_errors=True)
        raise
    _mark_prepared(output, {**info, "counts": counts})
    return counts


def prepare_main(argv: Optional[Sequence[str]], description: str, folder: str,
                 prepare: Callable[[str, bool], Dict[str, int]], output_dir: str) -> None:
    """The command line of a preparation script: ``ROOT [--overwrite]`` (``folder``: what ROOT is), then
    ``prepare(root, overwrite)``; prints what ``ROOT/output_dir`` holds."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("root", help=folder)
    p.add_argument("--overwrite", action="store_true", help="convert again over an existing or interrupted output")
    add_debug_argument(p)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    counts = prepare(args.root, args.overwrite)
    print(f"{os.path.join(args.root, output_dir)}: " + ", ".join(f"{n} {split}" for split, n in counts.items()))
