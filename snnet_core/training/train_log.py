"""What a training run logs about its stitches, for both projects' detectron2 writers.

A single ``total_loss`` curve averages the losses of whatever stitches the sampler drew: a cheap route's
loss next to an anchor's, so its value says little. ``route_loss_name`` files each iteration's loss under the
sampled stitch's route type (``FS``, ``SF``, ``FSF``, ``SFS``) or anchor (``fast_anchor``, ``slow_anchor``), so
that ``metrics.json`` and TensorBoard hold one curve per route type and per anchor.

``training_writers`` gives detectron2's writers (console, ``metrics.json``, TensorBoard) for a run starting at an
iteration: a resumed run cuts ``metrics.json`` back to its checkpoint (``trim_metrics_log``) and has TensorBoard
purge the events the interrupted run logged after it, so both logs describe one history. Its console printer
(``RouteLossPrinter``) shows a route's loss only when the route was drawn since the previous line.
"""
from __future__ import annotations

import glob
import json
import logging
import os
import time
from typing import List, Optional

from detectron2.utils.events import CommonMetricPrinter, JSONWriter, TensorboardXWriter, get_event_storage
from fvcore.common.history_buffer import HistoryBuffer

from snnet_core.model.stitch_space import FAST, Stitch

logger = logging.getLogger(__name__)

ROUTE_LOSS_PREFIX = "route_loss/"  # TensorBoard groups the curves under it; detectron2's printer shows "loss" keys


def route_loss_name(stitch: Stitch) -> str:
    """The scalar name of ``stitch``'s training loss: ``route_loss/fast_anchor``, ``route_loss/slow_anchor`` (three
    or more anchors: ``route_loss/anchor_A0`` ..) or ``route_loss/<route type>`` (``FS``, ``SF``, ``FSF``, ``SFS``)."""
    if stitch.kind == "anchor" and len(stitch.names) > 2:
        return ROUTE_LOSS_PREFIX + f"anchor_{stitch.names[stitch.first_anchor]}"
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


class RouteLossPrinter(CommonMetricPrinter):
    """detectron2's console line of training metrics, where ``route_loss/<route>`` appears only for the routes drawn
    since the previous line (the print window), as the median of those draws.

    detectron2's printer takes each loss's median over the last ``window_size`` iterations *that loss was logged
    at*: a route last drawn long ago kept its old value, line after line (a flat line that is no flat loss), and a
    route drawn now and long ago mixed both. The other losses are detectron2's (the median over the last
    ``window_size`` iterations). ``metrics.json`` and TensorBoard are written from the storage as it is.
    """

    def __init__(self, max_iter: Optional[int] = None, window_size: int = 20):
        super().__init__(max_iter, window_size)
        self._window = (-1, -1)  # the print window: iterations after window[0], up to window[1]

    def write(self) -> None:
        storage = get_event_storage()
        if storage.iter > self._window[1]:  # a new line (a second write at one iteration keeps the window)
            self._window = (self._window[1], storage.iter)
        shown = {}
        for name, history in storage.histories().items():
            if name.startswith(ROUTE_LOSS_PREFIX):
                drawn = [(value, it) for value, it in history.values() if self._window[0] < it <= self._window[1]]
                if not drawn:
                    continue
                history = HistoryBuffer()
                for value, it in drawn:
                    history.update(value, it)
            shown[name] = history
        # the parent prints the median of each loss in storage.histories() over its last storage.count_samples()
        # values: for a route, all the draws of the window
        count_samples = storage.count_samples
        storage.histories = lambda: shown
        storage.count_samples = lambda name, window_size=20: (len(shown[name].values()) if name.startswith(
            ROUTE_LOSS_PREFIX) else count_samples(name, window_size))
        try:
            super().write()
        finally:
            del storage.histories, storage.count_samples


def training_writers(output_dir: str, max_iter: int, start_iter: int = 0) -> List:
    """detectron2's ``default_writers`` (the console's ``CommonMetricPrinter``, here ``RouteLossPrinter``,
    ``JSONWriter`` on ``metrics.json``, ``TensorboardXWriter``) for a training run that starts at iteration ``start_iter``; call it on the main process.

    With ``start_iter > 0`` (a resumed run) ``metrics.json`` is first cut back (``trim_metrics_log``) and the
    TensorBoard writer is opened with ``purge_step=start_iter``: TensorBoard then hides the events of earlier event
    files at or after that step (those the interrupted run logged after its checkpoint) instead of drawing them
    beside the resumed run's. The purge applies only to files read before the resumed run's, so the new event file
    is made to sort after the earlier ones (``wait_for_a_later_event_file_name``).
    """
    metrics = os.path.join(output_dir, "metrics.json")
    tensorboard = TensorboardXWriter(output_dir, purge_step=start_iter if start_iter > 0 else None)
    if start_iter > 0:
        trim_metrics_log(metrics, start_iter)
    if 0 < start_iter < max_iter:  # a resumed run that logs more (one already finished opens no event file)
        wait_for_a_later_event_file_name(output_dir)
        tensorboard._writer  # opens the event file now, not at the first write (detectron2 opens it lazily)
    return [RouteLossPrinter(max_iter), JSONWriter(metrics), tensorboard]


def wait_for_a_later_event_file_name(output_dir: str) -> None:
    """Sleep until a TensorBoard event file created now in ``output_dir`` sorts after every one already there
    (no wait almost always, at most two seconds).

    TensorBoard reads a directory's event files in name order, and a name is
    ``events.out.tfevents.<10-digit second>.<host>.<pid>.<n>``: a run resumed within the same second as the
    interrupted run's file was opened would sort before it by process id, its purge would come first, and both
    runs' steps would be drawn as one jumbled curve. A file stamped further ahead of the clock (a clock
    set back) is not waited for.
    """
    seconds = [int(field) for field in (os.path.basename(path).split(".")[3] for path in
                                        glob.glob(os.path.join(glob.escape(output_dir), "events.out.tfevents.*")))
               if field.isdigit()]
    newest = max(seconds, default=-1)
    if newest + 1 - time.time() > 2:
        logger.warning("%s holds a TensorBoard event file stamped %d, ahead of this machine's clock: TensorBoard may "
                       "draw the resumed run before the interrupted one", output_dir, newest)
        return
    while int(time.time()) <= newest:
        time.sleep(max(newest + 1 - time.time(), 0.01))
