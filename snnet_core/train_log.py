"""What a training run logs about its stitches, for both projects' detectron2 writers.

A single ``total_loss`` curve averages the losses of whatever stitches the sampler drew: a cheap route's
loss next to an anchor's, so its value says little. ``route_loss_name`` files each iteration's loss under the
sampled stitch's route type (``FS``, ``SF``, ``FSF``, ``SFS``) or anchor (``fast_anchor``, ``slow_anchor``), so
that ``metrics.json`` and TensorBoard hold one curve per route type and per anchor.

``trim_metrics_log`` cuts a ``metrics.json`` back to a checkpoint before a resumed run appends to it.
"""
from __future__ import annotations

import json
import logging
import os

from .stitch_space import FAST, Stitch

logger = logging.getLogger(__name__)

ROUTE_LOSS_PREFIX = "route_loss/"  # TensorBoard groups the curves under it; detectron2's printer shows "loss" keys


def route_loss_name(stitch: Stitch) -> str:
    """The scalar name of ``stitch``'s training loss: ``route_loss/fast_anchor``, ``route_loss/slow_anchor`` or
    ``route_loss/<route type>`` (``FS``, ``SF``, ``FSF``, ``SFS``)."""
    if stitch.kind == "anchor":
        return ROUTE_LOSS_PREFIX + ("fast_anchor" if stitch.first_anchor == FAST else "slow_anchor")
    return ROUTE_LOSS_PREFIX + stitch.kind


def trim_metrics_log(path: str, start_iter: int) -> int:
    """Drop the lines of a JSON-lines log (detectron2's ``metrics.json``) whose ``iteration`` is ``start_iter`` or
    later, and a last line cut short by a kill, so that a run resumed at ``start_iter`` appends to one history.

    Truncated in place (one ``os.truncate``), not rewritten: detectron2's ``JSONWriter`` may already hold the file
    open for appending. Returns the number of lines dropped; a missing file drops none. A damaged line before
    the end is an error naming the file and line.
    """
    if not os.path.isfile(path):
        return 0
    offset, dropped = 0, 0
    with open(path, "rb") as f:
        lines = f.readlines()
    for number, line in enumerate(lines, 1):
        try:
            iteration = json.loads(line).get("iteration", -1) if line.strip() else -1
        except (json.JSONDecodeError, AttributeError) as exc:
            if number == len(lines):  # the line a killed run was writing
                dropped = 1
                break
            raise ValueError(f"{path}:{number} is not a line of a metrics log ({exc}); move the file away to "
                             "resume") from exc
        if iteration >= start_iter:
            dropped = len(lines) - number + 1
            break
        offset += len(line)
    if dropped:
        os.truncate(path, offset)
        logger.info("%s: dropped %d line(s) logged at or after iteration %d (after the checkpoint resumed from)",
                    path, dropped, start_iter)
    return dropped
