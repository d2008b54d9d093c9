"""What a run of ``train.py`` (and ``demo.py``) shows on the console and writes to ``<train.output_dir>/log.txt``:
detectron2's ``setup_logger`` format for the project's, the engine's and detectron2's loggers
(``snnet_core.console.run_logging``), as the other projects set them up."""
from __future__ import annotations

from typing import Callable, ContextManager

from snnet_core import console

LOGGERS = ("projects.snnet_cls", "snnet_core", "detectron2")  # the project's, the engine's and detectron2's


def run_logging(rank: int = 0) -> ContextManager[Callable[[str], None]]:
    """``snnet_core.console.run_logging`` of ``LOGGERS``: the console now (rank 0 only), ``log.txt`` in the
    directory the yielded function is called with."""
    return console.run_logging(LOGGERS, rank)
