"""What a detectron2 project's entry point shows on the console and what only goes to ``OUTPUT_DIR/log.txt``.

The console tells the short story; ``log.txt`` keeps everything (detectron2's ``setup_logger`` gives each
configured logger a console handler and a file handler, so a record is kept off the console by a filter on the
console handlers only):

- for the whole run (``setup_run_logging``): detectron2's environment report (with its line on
  ``detectron2._C``, which this installation lacks by design; ``explain_missing_compiled_ops`` says once, in its
  own words, why that does not matter), its echo of the command line's argparse ``Namespace``, the config file's
  source (``config.yaml`` holds the resolved config) and every record logged with ``extra=LOG_FILE_ONLY``
  (e.g. the model's module tree);
- while a stitch is evaluated (``stitch_evaluation_output``): everything detectron2 and the project log below
  WARNING (inference progress and timing, the evaluators' tables) and the raw prints of the metric libraries
  (e.g. pycocotools' summaries), which are captured into the log file. The engine's one line per stitch, its
  progress bar and its Pareto frontier stay on the console.

``project`` is the project's package logger (``"projects.snnet_vitdet"``): its records are configured beside
detectron2's, fvcore's and the engine's.
"""
from __future__ import annotations

import contextlib
import importlib.util
import io
import logging
from typing import Iterator, List, Sequence, Tuple

from detectron2.utils import comm
from detectron2.utils.logger import setup_logger
from tqdm.contrib.logging import logging_redirect_tqdm

from snnet_core.evaluation.report import console_loggers, is_console_handler

logger = logging.getLogger(__name__)

LOG_FILE_ONLY = {"console": False}  # ``logger.info(..., extra=LOG_FILE_ONLY)``: the record goes to log.txt only
# upstream records that are long and the same on every run: log.txt only
UPSTREAM_FILE_ONLY = (("detectron2", "Environment info:"), ("detectron2", "Contents of args.config_file="),
                      ("detectron2", "Command line arguments: "))


def project_loggers(project: str) -> Tuple[str, ...]:
    """The loggers a project's entry point configures beside detectron2's own (its package and the engine)."""
    return (project, "snnet_core")


def command_loggers(project: str) -> Tuple[str, ...]:
    """Every logger a project's command sets up (``snnet_core.console.run_logging`` of a demo)."""
    return ("detectron2", "fvcore") + project_loggers(project)


def evaluation_detail(project: str) -> Tuple[str, ...]:
    """Loggers whose records below WARNING are detail while a stitch is evaluated: detectron2's, the project's and
    the per-stitch driver's inner lines (the engine's report lines are not)."""
    return ("detectron2", "fvcore", project, "snnet_core.d2.evaluation")


def stdout_logger(project: str) -> str:
    """The logger of the prints captured during a stitch's evaluation."""
    return f"{project}.stdout"


def _console_handlers() -> List[logging.Handler]:
    handlers = {id(h): h for lg in console_loggers() for h in lg.handlers if is_console_handler(h)}
    return list(handlers.values())


def _under(name: str, prefixes) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


class RunConsoleFilter(logging.Filter):
    """Drops the run-long log-file-only records (see the module docstring) from a console handler."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "console", True):
            return False
        return not any(record.name == name and str(record.msg).startswith(start)
                       for name, start in UPSTREAM_FILE_ONLY)


class EvaluationConsoleFilter(logging.Filter):
    """Drops the records below WARNING of the ``detail`` loggers (``evaluation_detail``) from a console handler."""

    def __init__(self, detail: Sequence[str]):
        super().__init__()
        self.detail = tuple(detail)

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or not _under(record.name, self.detail)


RUN_CONSOLE_FILTER = RunConsoleFilter()


def setup_run_logging(output_dir: str, project: str) -> None:
    """Configure detectron2's, fvcore's, the project's and the engine's loggers (console on the main process,
    ``log.txt`` or ``log.txt.rank<N>``) with ``RUN_CONSOLE_FILTER`` on their console handlers. Call before
    ``detectron2.engine.default_setup``, then ``explain_missing_compiled_ops`` after it.

    The two detectron2 calls are the very calls ``default_setup`` makes: ``setup_logger`` is ``lru_cache``d, so
    ``default_setup`` gets these loggers back (filter included) instead of adding handlers that would print its
    environment report on the console (``tests/test_vitdet_train.py`` checks both).
    """
    rank = comm.get_rank()
    setup_logger(output_dir, distributed_rank=rank, name="fvcore")
    setup_logger(output_dir, distributed_rank=rank)
    for name in project_loggers(project):
        setup_logger(output_dir, distributed_rank=rank, name=name, abbrev_name=name.split(".")[-1])
    for handler in _console_handlers():
        handler.addFilter(RUN_CONSOLE_FILTER)  # a filter is added once per handler


def explain_missing_compiled_ops() -> None:
    """One line on the console when detectron2 lacks its compiled ops (its environment report in ``log.txt``
    says ``detectron2._C not built correctly`` on every run)."""
    if importlib.util.find_spec("detectron2._C") is None:
        logger.info("detectron2 runs without its compiled ops (detectron2._C, reported 'not built' in log.txt): "
                    "nothing here needs them")


class _LinesToLog(io.TextIOBase):
    """A text stream that logs every complete line written to it (INFO, to the logger named ``name``)."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self._logger = logging.getLogger(name)
        self._pending = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        lines = (self._pending + text).split("\n")
        self._pending = lines.pop()
        for line in lines:
            self._logger.info(line)
        return len(text)

    def flush(self) -> None:
        if self._pending:
            self._logger.info(self._pending)
            self._pending = ""


@contextlib.contextmanager
def stitch_evaluation_output(project: str) -> Iterator[None]:
    """Inside the block, detectron2's and the project's detail (``evaluation_detail``, below WARNING) and
    everything printed to ``sys.stdout`` go to the log file only; warnings still reach the console, written
    above a progress bar (``tqdm.write``).

    Enter it around each stitch's (or group's) evaluation, inside the engine's loop: the loop's own console
    lines (``snnet_core.evaluation.report``) are logged between the blocks. Nested in the engine's
    ``logging_redirect_tqdm``, it must not replace ``sys.stdout`` before that is entered (tqdm recognises the
    console handlers by their stream being ``sys.stdout``).
    """
    redirected = console_loggers()
    detail = EvaluationConsoleFilter(evaluation_detail(project))
    stream = _LinesToLog(stdout_logger(project))
    with logging_redirect_tqdm(redirected):  # temporary console handlers (tqdm.write), filters copied
        for handler in _console_handlers():
            handler.addFilter(detail)
        try:
            with contextlib.redirect_stdout(stream):
                yield
        finally:
            stream.flush()
            for handler in _console_handlers():
                handler.removeFilter(detail)
