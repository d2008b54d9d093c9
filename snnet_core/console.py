"""One log format for every command: detectron2's ``setup_logger`` (``[date time name]: message``, warnings
prefixed ``WARNING``) on the console and, for a run with an output directory, in its ``log.txt``.

``run_logging`` sets it up for the loggers a command uses (its project's, the engine's ``snnet_core``,
detectron2's) and takes it down on exit, so a command's ``main`` may run several times in one process (tests,
notebooks). The depth project's training script, both demos and ``python -m snnet_core.select`` use it; the
detection project's ``train_net.py`` sets the same loggers up with detectron2's cached ``setup_logger`` calls, as
``default_setup`` expects (``projects/snnet_vitdet/console.py``).
"""
from __future__ import annotations

import contextlib
import logging
import sys
from logging.handlers import MemoryHandler
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple


@contextlib.contextmanager
def run_logging(names: Sequence[str], rank: int = 0, to_stderr: bool = False) -> Iterator[Callable[[str], None]]:
    """detectron2's ``setup_logger`` for the loggers ``names``: the console now (rank 0 only, as detectron2), and
    the log file ``<dir>/log.txt`` (``log.txt.rank<R>`` on the other ranks) once the yielded function is called
    with ``dir``; the lines logged before that call go to the file too (a run refused by its checks writes no file,
    and a command writing none never calls it). The console is ``sys.stdout`` (detectron2's), or ``sys.stderr`` with
    ``to_stderr`` (for a command whose standard output is data). On exit the handlers are removed and
    the loggers' level and propagation restored. Also a decorator (``@run_logging(names)`` over a ``main``)."""
    from detectron2.utils.logger import setup_logger  # the projects' framework

    added: List[Tuple[logging.Logger, logging.Handler]] = []
    early: Dict[str, MemoryHandler] = {}
    saved = {name: (logging.getLogger(name).level, logging.getLogger(name).propagate) for name in names}

    def setup(name: str, output_dir: Optional[str]) -> List[logging.Handler]:
        """The handlers ``setup_logger`` adds to logger ``name`` (uncached: one call, one set of handlers)."""
        named = logging.getLogger(name)
        before = list(named.handlers)
        setup_logger.__wrapped__(output_dir, rank, name=name, configure_stdout=output_dir is None,
                                 abbrev_name=None if name == "detectron2" else name.split(".")[-1])
        new = [h for h in named.handlers if h not in before]
        if output_dir is None and to_stderr:
            for handler in new:
                handler.setStream(sys.stderr)
        added.extend((named, h) for h in new)
        return new

    def to_file(output_dir: str) -> None:
        for name in names:
            (file_handler,) = setup(name, output_dir)
            buffer = early.pop(name)
            buffer.setTarget(file_handler)
            buffer.flush()
            logging.getLogger(name).removeHandler(buffer)

    for name in names:
        setup(name, None)
        early[name] = MemoryHandler(capacity=100000, flushLevel=logging.CRITICAL + 1)
        logging.getLogger(name).addHandler(early[name])
        added.append((logging.getLogger(name), early[name]))
    try:
        yield to_file
    finally:
        for named, handler in added:
            named.removeHandler(handler)
        for name, (level, propagate) in saved.items():
            logging.getLogger(name).setLevel(level)
            logging.getLogger(name).propagate = propagate
