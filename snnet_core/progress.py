"""The progress bar of a per-stitch evaluation, advanced from inside a task's batch loop.

``snnet_core.evaluation.report.evaluate_stitch_groups`` shows one bar for the whole evaluation. Given the number of test
images, the bar counts (image, stitch) evaluations, ``images x stitches`` in all, and the task's loop moves it
after every batch with ``advance(images in the batch x stitches evaluated on it)``, so a group of stitches
evaluated in one pass over the test set (minutes at full size) shows its progress and an ETA instead of a bar
that sits still until the group is done. ``advance`` outside an evaluation (another process of a distributed
run, a test calling the task's loop directly) does nothing, so the loops call it unconditionally.

The engine bounds what a group may add to the bar to the group's share and tops the bar up to it when the group
is done: a task that advances too little (or not at all) or too much (e.g. a rank scaling its own shard by the
number of ranks) still ends each group at the right count.
"""
from __future__ import annotations

import contextlib
from typing import Iterable, Iterator, List, Optional, Sized

from tqdm import tqdm

_ACTIVE: List["EvaluationProgress"] = []  # the bars of the evaluations in progress, innermost last


class EvaluationProgress:
    """A tqdm bar over ``stitches`` stitches, each evaluated on ``images`` images (the bar then counts
    ``images x stitches`` image evaluations) or, with ``images=None``, counted per stitch."""

    def __init__(self, stitches: int, images: Optional[int] = None, enabled: bool = True):
        self.counts_images = bool(images)  # no images (None or an empty test set): count stitches
        self.per_stitch = images if self.counts_images else 1
        desc = f"evaluating {stitches} stitches x {images} images" if self.counts_images else "evaluating stitches"
        self.bar = tqdm(total=stitches * self.per_stitch, desc=desc, unit="img" if self.counts_images else "stitch",
                        disable=not enabled)
        self._ceiling = 0

    def start_group(self, stitches: int) -> None:
        """A group of ``stitches`` stitches starts: ``advance`` may move the bar by up to its share."""
        self._ceiling = self.bar.n + stitches * self.per_stitch

    def advance(self, evaluations: int) -> None:
        """``evaluations`` more (image, stitch) evaluations of the group in progress (ignored when counting
        stitches)."""
        if self.counts_images:
            self._move(min(int(evaluations), self._ceiling - self.bar.n))

    def end_group(self) -> None:
        """The group in progress is done: the bar stands at its share, whatever ``advance`` said."""
        self._move(self._ceiling - self.bar.n)

    def _move(self, steps: int) -> None:
        if steps > 0:
            self.bar.update(steps)

    def close(self) -> None:
        self.bar.close()


@contextlib.contextmanager
def evaluation_progress(stitches: int, images: Optional[int] = None, enabled: bool = True
                        ) -> Iterator[EvaluationProgress]:
    """An ``EvaluationProgress`` that ``advance`` moves inside the block (closed on exit)."""
    progress = EvaluationProgress(stitches, images, enabled)
    _ACTIVE.append(progress)
    try:
        yield progress
    finally:
        _ACTIVE.remove(progress)
        progress.close()


def advance(evaluations: int) -> None:
    """Move the bar of the per-stitch evaluation in progress by ``evaluations`` (image, stitch) evaluations, e.g.
    ``len(batch) * len(stitch_ids)`` after a batch evaluated for every stitch of a group; nothing happens
    outside an evaluation (see the module docstring)."""
    if _ACTIVE:
        _ACTIVE[-1].advance(evaluations)


def loader_images(loader) -> Optional[int]:
    """The number of images of a PyTorch ``DataLoader`` (its dataset's length, e.g. every rank's images for
    detectron2's test loader, one rank's shard for a ``Subset``), ``None`` for a loader without a dataset (a list
    of batches): the ``images`` of the report's bar."""
    dataset = getattr(loader, "dataset", None)
    return None if dataset is None else len(dataset)


class AdvancingLoader:
    """``loader``'s batches (and its ``len``), moving the evaluation's bar by ``len(batch) * per_image`` when the
    next batch is asked for: the progress of a loop that is not this project's (e.g. detectron2's
    ``inference_on_dataset``). ``per_image``: the stitches each image is evaluated for, times the number of
    processes sharing the test set (the bar counts every process's images; this one sees its shard)."""

    def __init__(self, loader: Iterable[Sized], per_image: int = 1):
        self.loader = loader
        self.per_image = per_image

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator:
        for batch in self.loader:
            yield batch
            advance(len(batch) * self.per_image)
