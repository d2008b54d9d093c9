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
        run.lock, run.lock.json          while a training run uses the directory: its lock; the JSON names it
        run.lock.eval-*                  the same for each --eval-only run using it

``lock_run_dir`` holds the directory for a run's lifetime: a training run alone, ``--eval-only`` runs side by
side (their reports merge) but never beside a training run; a second start is refused at once, naming the
process that holds the directory. ``check_output_dir`` refuses to train into a directory that holds a run unless
``--resume`` continues it or ``--overwrite`` replaces it; ``clear_run`` deletes what ``--overwrite`` replaces,
``remove_killed_writes`` what killed writes left. ``checkpoint_name`` names a checkpoint, ``prune_checkpoints``
keeps the newest ``max_to_keep`` periodic ones, ``last_checkpoint`` reads the tag ``--resume`` and ``--eval-only``
follow, and ``eval_size_for_checkpoint`` the input size ``--eval-only`` evaluates at.
"""
from __future__ import annotations

import contextlib
import datetime
import glob
import json
import logging
import os
import re
import secrets
import shlex
import shutil
import socket
import sys
from typing import Iterator, List, Optional, Sequence, Tuple

from filelock import FileLock, Timeout

from snnet_core.io.atomic_io import path_clash, remove_stale_temporaries, write_atomic, write_json_atomic

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
EXPORT_FILES = ("model_final.pth", "config.yaml")  # what an exported stitch's folder holds (config: detection)


def export_dir(output_dir: str, stitch_id: int) -> str:
    """``<output_dir>/stitch_<ID>``: where ``--export-stitch`` writes stitch ``stitch_id``."""
    return os.path.join(output_dir, f"stitch_{stitch_id}")


def check_export_targets(output_dir: str, stitch_ids: Sequence[int], overwrite: bool) -> None:
    """Refuse to export over a stitch exported before (``FileExistsError`` naming it and the fix) unless
    ``overwrite`` (``--overwrite``) replaces it. Call it before the export writes anything."""
    existing = [os.path.join(export_dir(output_dir, sid), name) for sid in dict.fromkeys(stitch_ids)
                for name in EXPORT_FILES if os.path.lexists(os.path.join(export_dir(output_dir, sid), name))]
    if existing and not overwrite:
        shown = ", ".join(existing[:4]) + (", ..." if len(existing) > 4 else "")
        raise FileExistsError(f"--export-stitch would replace {shown}, exported before: pass --overwrite to replace "
                              "it, or move it away (or export from another train.output_dir)")


def remove_killed_writes(output_dir: str) -> List[str]:
    """Delete the temporaries (``<name>.<random>.tmp``) that killed atomic writes of a run left in ``output_dir``:
    of its checkpoints (``*.pth``), ``last_checkpoint``, ``config.yaml`` and lock records (``run.lock*.json``),
    of the FLOPs cache (``flops_cache/``) and of exported stitches and reports (``stitch_*/``); returns the
    removed paths. Call it where no other process writes there: on the training run's rank 0 (holding
    ``lock_run_dir``), before it writes.
    """
    def written_by_the_run(target: str) -> bool:
        name, folder = os.path.basename(target), os.path.basename(os.path.dirname(target))
        if os.path.dirname(target) != output_dir:
            return folder == "flops_cache" or folder.startswith("stitch_")
        return (name.endswith(".pth") or name in (LAST_CHECKPOINT, "config.yaml")
                or (name.startswith(RUN_LOCK) and name.endswith(".json")))

    output_dir = os.path.normpath(output_dir)
    root = glob.escape(output_dir)
    found = glob.glob(os.path.join(root, "*.tmp")) + glob.glob(os.path.join(root, "flops_cache", "*.tmp")) + \
        glob.glob(os.path.join(root, "stitch_*", "*.tmp"))
    targets = {tmp.rsplit(".", 2)[0] for tmp in found}
    removed = [tmp for target in sorted(targets) if written_by_the_run(target)
               for tmp in remove_stale_temporaries(target)]
    if removed:
        logger.info("removed %d temporary file(s) of killed checkpoint writes (or other writes of the run: "
                    "config.yaml, FLOPs cache, exports, reports): %s", len(removed), removed)
    return removed


RUN_LOCK = "run.lock"  # a training run holds it for its lifetime; an --eval-only run while it starts
_EVAL_SLOT = re.compile(re.escape(RUN_LOCK) + r"\.eval-\d+-[0-9a-f]{8}")  # one per --eval-only run: <pid>-<token>


class RunDirInUseError(FileExistsError):
    """Another process (a training run, or an ``--eval-only`` run beside a training start) uses the directory."""


def _holder() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(),
            "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "command": shlex.join([sys.executable] + sys.argv)}


def _describe_holder(lock_path: str, role: str) -> str:
    try:
        with open(lock_path + ".json") as f:
            who = json.load(f)
        return (f"{role} pid {who['pid']} on {who['host']}, started {who['started']}: {who['command']} "
                f"(recorded in {lock_path}.json)")
    except (OSError, ValueError, KeyError, TypeError):
        return f"{role} that holds {lock_path} (starting: it has not recorded itself in {lock_path}.json yet)"


def _try_lock(path: str) -> Optional[FileLock]:
    lock = FileLock(path, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        return None
    return lock


@contextlib.contextmanager
def lock_run_dir(output_dir: str, evaluating: bool = False, hold: bool = True) -> Iterator[None]:
    """Hold ``output_dir`` for the ``with`` block: a training run (``evaluating=False``) alone, ``--eval-only``
    runs (``evaluating=True``) beside each other but not beside a training run. Call it first, before a run
    reads or writes its directory; under DDP on rank 0 only (``hold`` false elsewhere: then it does nothing).

    A process that holds the directory records its pid, host, start time and command line in
    ``run.lock.json`` (training) or ``run.lock.eval-<id>.json``. The locks are ``filelock`` locks (flock /
    ``LockFileEx``): they die with their process, so a killed run never blocks the next one.

    A directory it creates is removed again if the run leaves nothing in it (a start that fails its checks).
    Raises ``RunDirInUseError`` (a ``FileExistsError``) naming the process that holds it, and
    ``NotADirectoryError`` for an ``output_dir`` that is a file.
    """
    if not hold:
        yield
        return
    clash = path_clash(os.path.join(output_dir, RUN_LOCK))
    if clash is not None:
        raise NotADirectoryError(f"train.output_dir: {clash}")
    created = _missing_directories(output_dir)
    os.makedirs(output_dir, exist_ok=True)
    gate_path = os.path.join(output_dir, RUN_LOCK)
    fix = "wait for it to end (or stop it), or give train.output_dir another directory"
    gate = _try_lock(gate_path)
    if gate is None:
        raise RunDirInUseError(f"train.output_dir {output_dir} is in use by another run, "
                               f"{_describe_holder(gate_path, 'the process')}: {fix}")
    slot = None
    try:
        with contextlib.suppress(FileNotFoundError):  # the record of a killed holder: nobody holds the gate now
            os.remove(gate_path + ".json")
        evaluators = []
        slots = glob.glob(glob.escape(gate_path) + ".eval-*")
        for path in sorted(p for p in slots if _EVAL_SLOT.fullmatch(os.path.basename(p))):
            other = _try_lock(path)
            if other is None:
                evaluators.append(path)
            else:  # left by a killed evaluation
                other.release()
                for stale in (path, path + ".json"):
                    with contextlib.suppress(FileNotFoundError):
                        os.remove(stale)
        if evaluators and not evaluating:
            raise RunDirInUseError(f"train.output_dir {output_dir} is in use by {len(evaluators)} --eval-only "
                                   f"run(s), {_describe_holder(evaluators[0], 'the process')}: {fix}")
        if evaluating:
            slot_path = f"{gate_path}.eval-{os.getpid()}-{secrets.token_hex(4)}"
            slot = FileLock(slot_path, timeout=0)
            slot.acquire()
            write_json_atomic(slot_path + ".json", _holder())
            _release(gate)
        else:
            write_json_atomic(gate_path + ".json", _holder())
    except BaseException:
        if slot is not None:
            _release(slot)
        _release(gate)
        _remove_if_unused(output_dir, created)
        raise
    try:
        yield
    finally:
        held = slot if evaluating else gate
        with contextlib.suppress(OSError):
            os.remove(held.lock_file + ".json")
        _release(held)
        _remove_if_unused(output_dir, created)


def _release(lock: FileLock) -> None:
    """Release ``lock`` and delete its file (filelock retries a lock whose file was deleted while it waited)."""
    lock.release()
    with contextlib.suppress(OSError):
        os.remove(lock.lock_file)


def _missing_directories(path: str) -> List[str]:
    """``path`` and those of its parent directories that do not exist yet, deepest first."""
    missing, path = [], os.path.abspath(path)
    while not os.path.isdir(path) and os.path.dirname(path) != path:
        missing.append(path)
        path = os.path.dirname(path)
    return missing


def _remove_if_unused(output_dir: str, created: List[str]) -> None:
    """Remove the directories ``lock_run_dir`` created (``created``, deepest first: ``output_dir`` and any parents it
    made) if the run wrote nothing into them (it failed a check)."""
    with contextlib.suppress(OSError):
        for directory in created:
            if os.listdir(directory):
                return
            os.rmdir(directory)


FINAL_CHECKPOINT = "model_final.pth"
PERIODIC_CHECKPOINT = re.compile(r"model_(\d{7})\.pth")  # detectron2's: the index of the last iteration done


def checkpoint_name(last_iteration: int, final: bool = False) -> str:
    """detectron2's name of a checkpoint written after iteration index ``last_iteration`` (0-based):
    ``model_<last_iteration, 7 digits>.pth``, or ``model_final.pth`` at the end of training (``final``)."""
    return FINAL_CHECKPOINT if final else f"model_{last_iteration:07d}.pth"


def prune_checkpoints(output_dir: str, max_to_keep: int) -> List[str]:
    """Delete the periodic checkpoints (``model_<7 digits>.pth``) of ``output_dir`` but the newest ``max_to_keep``;
    returns the deleted paths. Call it on rank 0 after each save.

    It scans the directory, so a resumed run also prunes the checkpoints of the run it continues. Never deleted:
    ``model_final.pth`` and the checkpoint ``last_checkpoint`` names (the newest save, even where a run resumed
    from an earlier checkpoint left later ones of the interrupted run, which its next saves replace).
    """
    tagged = None
    with contextlib.suppress(OSError):
        with open(os.path.join(output_dir, LAST_CHECKPOINT)) as f:
            tagged = f.read().strip()
    periodic = sorted(name for name in os.listdir(output_dir) if PERIODIC_CHECKPOINT.fullmatch(name))
    doomed = [os.path.join(output_dir, name) for name in periodic[:max(0, len(periodic) - max_to_keep)]
              if name != tagged]
    for path in doomed:
        os.remove(path)
    return doomed


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
