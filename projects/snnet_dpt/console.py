"""What a run of ``train.py`` shows on the console and writes to ``<train.output_dir>/log.txt``: detectron2's
``setup_logger`` for the project's, the engine's and detectron2's loggers, as the detection project sets them up."""
from __future__ import annotations

import contextlib
import logging
from logging.handlers import MemoryHandler
from typing import Callable, Dict, Iterator, List, Optional, Tuple

from detectron2.utils.logger import setup_logger

LOGGERS = ("projects.snnet_dpt", "snnet_core", "detectron2")  # the project's, the engine's and detectron2's


@contextlib.contextmanager
def run_logging(rank: int) -> Iterator[Callable[[str], None]]:
    """detectron2's ``setup_logger`` for ``LOGGERS``: the console now (rank 0 only, as detectron2), and the log file
    ``<dir>/log.txt`` (``log.txt.rank<R>`` on the other ranks) once the yielded function is called with ``dir``;
    the lines logged before that call go to the file too (a run refused by its checks writes no file). On exit the
    handlers are removed and the loggers' level and propagation restored, so ``main`` may run several times in one
    process (tests, notebooks)."""
    added: List[Tuple[logging.Logger, logging.Handler]] = []
    early: Dict[str, MemoryHandler] = {}
    saved = {name: (logging.getLogger(name).level, logging.getLogger(name).propagate) for name in LOGGERS}

    def setup(name: str, output_dir: Optional[str]) -> List[logging.Handler]:
        """The handlers ``setup_logger`` adds to logger ``name`` (uncached: one call, one set of handlers)."""
        named = logging.getLogger(name)
        before = list(named.handlers)
        setup_logger.__wrapped__(output_dir, rank, name=name, configure_stdout=output_dir is None,
                                 abbrev_name=None if name == "detectron2" else name.split(".")[-1])
        new = [h for h in named.handlers if h not in before]
        added.extend((named, h) for h in new)
        return new

    def to_file(output_dir: str) -> None:
        for name in LOGGERS:
            (file_handler,) = setup(name, output_dir)
            buffer = early.pop(name)
            buffer.setTarget(file_handler)
            buffer.flush()
            logging.getLogger(name).removeHandler(buffer)

    for name in LOGGERS:
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
