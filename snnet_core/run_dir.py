"""The output directory of a training run, laid out alike in both projects (detectron2's layout).

::

    <train.output_dir>/
        config.yaml                      resolved config of the run
        log.txt                          the full log (console lines and everything the console leaves out)
        metrics.json                     one JSON line per logged iteration (losses per route type, lr, ...)
        events.out.tfevents.*            the same scalars for TensorBoard
        last_checkpoint                  name of the newest checkpoint (what --resume continues from)
        model_<iteration>.pth            periodic checkpoints; model_final.pth at the end
        stitch_schedule_from_<it>.json   the stitch each iteration trained
        stitch_report_<test set>/        per-stitch report (--eval-only --stitch ...; --report-dir elsewhere)
        stitch_<ID>/                     an exported stitch (--export-stitch ID)
        flops_cache/                     per-stitch FLOPs tables (keyed by the model; kept by --overwrite)

``check_output_dir`` refuses to train into a directory that holds a run unless ``--resume`` continues it or
``--overwrite`` replaces it; ``clear_run`` deletes what ``--overwrite`` replaces, ``remove_killed_writes`` what
killed writes left. ``last_checkpoint`` reads the tag
``--resume`` and ``--eval-only`` follow, and ``eval_size_for_checkpoint`` the input size ``--eval-only`` evaluates at.
"""
from __future__ import annotations

import glob
import logging
import os
import shutil
from typing import List, Optional, Sequence, Tuple

from .atomic_io import remove_stale_temporaries, write_atomic

logger = logging.getLogger(__name__)

# a directory holds a run when one of these exists (config.yaml and log.txt alone are left by a start that
# failed its checks, and do not count)
RUN_MARKERS = ("last_checkpoint", "metrics.json", "model_*.pth", os.path.join("stitch_report_*", "stitch_results.json"))
# what --overwrite deletes: everything a run writes but the FLOPs cache
RUN_FILES = ("last_checkpoint", "metrics.json", "model_*.pth", "config.yaml", "log.txt*", "events.out.tfevents.*",
             "stitch_*")  # stitch_*: the schedules, the per-stitch reports and the exported stitches


def _matches(output_dir: str, patterns) -> List[str]:
    found = {path for pattern in patterns for path in glob.glob(os.path.join(glob.escape(output_dir), pattern))}
    return sorted(found)


def previous_run(output_dir: str) -> List[str]:
    """The files in ``output_dir`` that show a training run was there (``RUN_MARKERS``), as relative paths."""
    return [os.path.relpath(p, output_dir) for p in _matches(output_dir, RUN_MARKERS)]


def check_output_dir(output_dir: str, resume: bool, overwrite: bool) -> List[str]:
    """Where a training run may write: a directory without a run, or one whose run is continued (``resume``) or
    replaced (``overwrite``). Returns the paths ``clear_run`` deletes for ``overwrite`` (else ``[]``).

    Raises ``FileExistsError`` naming the run's files and the three ways on, and ``ValueError`` for both flags.
    """
    if resume and overwrite:
        raise ValueError("--resume continues the run in train.output_dir and --overwrite replaces it: give one")
    found = previous_run(output_dir)
    if found and not (resume or overwrite):
        shown = ", ".join(found[:5]) + (", ..." if len(found) > 5 else "")
        raise FileExistsError(f"train.output_dir {output_dir!r} already holds a training run ({shown}): pass --resume "
                              "to continue it, --overwrite to replace it (deletes its checkpoints, logs, reports and "
                              "exported stitches), or choose another train.output_dir")
    return _matches(output_dir, RUN_FILES) if overwrite else []


def clear_run(paths: List[str]) -> None:
    """Delete what ``check_output_dir(..., overwrite=True)`` returned (files and report/export directories).

    Log files (``log.txt*``) are emptied in place, not deleted: detectron2 keeps the stream it appends a log file's
    lines to open for the life of the process (cached per file name), so a second run in one process (a notebook,
    the tests) would otherwise log into the deleted file.
    """
    for path in paths:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        elif os.path.basename(path).startswith("log.txt") and os.path.isfile(path) and not os.path.islink(path):
            os.truncate(path, 0)
        elif os.path.lexists(path):
            os.remove(path)


LAST_CHECKPOINT = "last_checkpoint"


def remove_killed_writes(output_dir: str) -> List[str]:
    """Delete the temporaries (``<name>.<random>.tmp``) that killed atomic writes of a run's checkpoints
    (``*.pth``), ``last_checkpoint`` and ``config.yaml`` left in ``output_dir``; returns the removed paths. Call it
    on the process that writes them, before the run writes any.
    """
    targets = {tmp.rsplit(".", 2)[0] for tmp in glob.glob(os.path.join(glob.escape(output_dir), "*.tmp"))}
    removed = [tmp for target in sorted(targets)
               if target.endswith(".pth") or os.path.basename(target) in (LAST_CHECKPOINT, "config.yaml")
               for tmp in remove_stale_temporaries(target)]
    if removed:
        logger.info("removed %d temporary file(s) of killed checkpoint writes (or config.yaml writes): %s",
                    len(removed), removed)
    return removed


def tag_last_checkpoint(output_dir: str, filename: str) -> None:
    """Write ``output_dir/last_checkpoint`` naming ``filename`` (a ``.pth`` of ``output_dir``), atomically."""
    write_atomic(os.path.join(output_dir, LAST_CHECKPOINT), lambda f: f.write(os.path.basename(filename)))


def last_checkpoint(output_dir: str) -> str:
    """The checkpoint ``output_dir/last_checkpoint`` names, as a path.

    The name must be an existing ``.pth`` file of ``output_dir`` itself (not a path elsewhere, not hidden): a
    tampered or stale tag is an error naming the tag file and the fix, never a read of another file.
    Raises ``FileNotFoundError`` if there is no tag.
    """
    tag = os.path.join(output_dir, LAST_CHECKPOINT)
    if not os.path.isfile(tag):
        raise FileNotFoundError(f"{tag} does not exist: {output_dir!r} holds no checkpoint of a training run")
    with open(tag) as f:
        name = f.read().strip()
    if os.path.basename(name) != name or not name.endswith(".pth") or name.startswith("."):
        raise ValueError(f"{tag} names {name!r}, not a .pth file of this directory; write the name of one of "
                         f"its checkpoints (e.g. model_final.pth) into it, or delete it to start afresh")
    path = os.path.join(output_dir, name)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{tag} names {name!r}, which does not exist in {output_dir}; write the name of an "
                                "existing model_*.pth into it")
    return path


def command_line_sets(opts: Sequence[str], key: str) -> bool:
    """Whether the ``key=value`` overrides ``opts`` set the config entry ``key`` (or an entry under it)."""
    names = (o.split("=", 1)[0].lstrip("+~") for o in opts)
    return any(name == key or name.startswith(key + ".") for name in names)


def eval_size_for_checkpoint(configured: Sequence[int], recorded: Optional[Sequence[int]], overridden: bool,
                             checkpoint: str, key: str) -> Tuple[Tuple[int, int], str]:
    """The ``(H, W)`` an ``--eval-only`` run of ``checkpoint`` evaluates at, and where it comes from (``"command
    line"``, ``"checkpoint"`` or ``"config"``).

    ``configured``: the config entry ``key`` after the overrides; ``recorded``: the eval size the training run
    stored in the checkpoint (``None`` for a checkpoint written before it was recorded); ``overridden``: the
    command line set ``key`` (``command_line_sets``). The command line wins over the checkpoint (a warning names
    both sizes when they differ), the checkpoint over the config (logged when they differ).
    """
    configured = (int(configured[0]), int(configured[1]))
    if recorded is None:
        return configured, "command line" if overridden else "config"
    recorded = (int(recorded[0]), int(recorded[1]))
    if overridden:
        if recorded != configured:
            logger.warning("evaluating at %dx%d (%s on the command line), not at %dx%d, the size %s was trained at",
                           *configured, key, *recorded, checkpoint)
        return configured, "command line"
    if recorded != configured:
        logger.info("evaluating at %dx%d, the %s %s was trained at (the config says %dx%d)", *recorded, key,
                    checkpoint, *configured)
    return recorded, "checkpoint"
