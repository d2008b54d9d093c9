"""Command-line manners shared by every entry point (both projects' training scripts and demos,
``python -m snnet_core.select``, ``python -m snnet_core.stitch_table``, the dataset generators under ``datasets/``).

- A user error (``is_user_error``: a bad value, a missing or refused file, a bad flag combination) ends the command
  with ONE line ``PROG: error: MESSAGE`` on stderr (more lines only when the message lists several problems) and
  exit status 2, as argparse reports a bad flag; a bug (any other exception, e.g. a ``TypeError`` in the model)
  keeps its traceback. ``--debug`` (``add_debug_argument``) or ``SNNET_DEBUG=1`` shows the traceback of a user
  error too.
- ``launch_command`` starts detectron2's ``launch`` (``--num-gpus N`` processes per machine) after checking that
  the machine has the GPUs asked for, on a free port when detectron2's per-user default port is taken (and the
  user gave no ``--dist-url``); a user error in any started process is reported by the main process as one line.

A command's module keeps its ``main``/``cli`` raising (tests and notebooks call them); only its
``if __name__ == "__main__"`` block goes through ``run_command``.
"""
from __future__ import annotations

import argparse
import dis
import glob
import logging
import os
import pickle
import socket
import sys
import tempfile
from typing import Any, Callable, List, NoReturn, Optional, Sequence

from snnet_core.io.atomic_io import AtomicWriteError, write_atomic

DEBUG_ENV = "SNNET_DEBUG"
DEBUG_FLAG = "--debug"
# file-system refusals: a path the user named is missing, exists, has the wrong kind or may not be written;
# wherever they are raised, the message names the path
FILE_ERRORS = (FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError, PermissionError,
               AtomicWriteError)
# refusals this repository's code raises on purpose (a ``raise`` statement naming the setting, file or report and
# the fix: config checks, ``SelectionError``, ``UnsafePickleError``, a corrupt or foreign checkpoint, another run's
# report, ...); the same types raised inside a library (torch, numpy, detectron2) or by an operation of this
# repository's code (``d[key]``, ``int(text)``, a tensor op) are bugs and keep their traceback
RAISED_ERRORS = (ValueError, KeyError, RuntimeError, pickle.UnpicklingError)
_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROJECT_DIRS = tuple(os.path.join(_REPO, name) + os.sep for name in ("snnet_core", "projects", "datasets",
                                                                      "benchmarks"))


class ReportedError(Exception):
    """User errors of processes started by ``launch_command``, relayed to the main process (one message per
    distinct error)."""


def debug_requested(argv: Optional[Sequence[str]] = None) -> bool:
    """Whether tracebacks of user errors are wanted: ``SNNET_DEBUG`` set to anything but ``""``/``0``, or
    ``--debug`` among ``argv`` (default ``sys.argv[1:]``; read before parsing, which may itself fail)."""
    argv = sys.argv[1:] if argv is None else argv
    return os.environ.get(DEBUG_ENV, "") not in ("", "0") or DEBUG_FLAG in argv


def add_debug_argument(parser: argparse.ArgumentParser) -> None:
    """``--debug``: show the traceback of a user error (``run_command`` reads it from the command line)."""
    parser.add_argument(DEBUG_FLAG, action="store_true",
                        help=f"show the traceback of an error instead of one line (also: {DEBUG_ENV}=1)")


def raised_on_purpose(exc: BaseException) -> bool:
    """Whether ``exc`` comes from a ``raise`` statement of this repository's code: the innermost frame of its
    traceback is in ``PROJECT_DIRS`` and stopped at a raise instruction (not at a call or subscript that failed)."""
    tb = exc.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    code = tb.tb_frame.f_code
    if not os.path.abspath(code.co_filename).startswith(PROJECT_DIRS):
        return False
    return any(ins.offset == tb.tb_lasti and ins.opname == "RAISE_VARARGS" for ins in dis.get_instructions(code))


def is_user_error(exc: BaseException) -> bool:
    """A problem of the command's input that its message explains, not a bug: a ``ReportedError``, a file error
    (``FILE_ERRORS``, wherever raised) or one of ``RAISED_ERRORS`` that this repository's code raised on purpose
    (``raised_on_purpose``). Anything else (``TypeError``, ``AttributeError``, ``IndexError``, an error inside a
    library, ...) is a bug."""
    if isinstance(exc, (ReportedError,) + FILE_ERRORS):
        return True
    return isinstance(exc, RAISED_ERRORS) and raised_on_purpose(exc)


def error_message(exc: BaseException) -> str:
    """The message of ``exc`` as the user should read it (a ``KeyError``'s without the quotes of its repr)."""
    if isinstance(exc, KeyError) and len(exc.args) == 1 and isinstance(exc.args[0], str):
        return exc.args[0]
    return str(exc) or type(exc).__name__


def run_command(main: Callable[[], Any], prog: Optional[str] = None) -> NoReturn:
    """Run an entry point's ``main()`` and exit: status ``main()``'s result where it is an int, else 0; a user
    error prints ``PROG: error: MESSAGE`` (``prog`` defaults to the script's name) and exits 2, unless
    ``debug_requested()``; any other exception propagates with its traceback."""
    try:
        result = main()
    except Exception as exc:
        if debug_requested() or not is_user_error(exc):
            raise
        prog = prog or os.path.basename(sys.argv[0])
        sys.stdout.flush()
        print(f"{prog}: error: {error_message(exc)}", file=sys.stderr)
        sys.exit(2)
    sys.exit(result if isinstance(result, int) and not isinstance(result, bool) else 0)


# --------------------------------------------------------------------------------------------------
# detectron2's launch
def check_process_count(num_gpus: int, device: str, device_key: str, visible: Optional[int] = None) -> None:
    """Refuse ``--num-gpus N`` (processes per machine) that this machine cannot start as asked, before any process
    is spawned. ``device`` is the config's device (``device_key``, e.g. ``train.device``): ``launch`` runs GPU
    (NCCL) processes whenever a GPU is visible and CPU (gloo) processes otherwise, so N > 1 needs N visible GPUs
    and a GPU device, or no visible GPU and ``device_key=cpu``. ``visible`` defaults to the visible GPUs."""
    if num_gpus < 1:
        raise ValueError(f"--num-gpus {num_gpus}: give the number of processes per machine, >= 1")
    if num_gpus == 1:
        return
    if visible is None:
        import torch

        visible = torch.cuda.device_count()
    on_cpu = str(device).startswith("cpu")
    if visible == 0:
        if not on_cpu:
            raise ValueError(f"--num-gpus {num_gpus}: {num_gpus} GPUs asked, 0 visible: use --num-gpus 1 on CPU, "
                             f"or pass {device_key}=cpu to start {num_gpus} CPU processes (gloo)")
    elif num_gpus > visible:
        raise ValueError(f"--num-gpus {num_gpus}: {num_gpus} GPUs asked, {visible} visible: use --num-gpus "
                         f"{visible} (or make more GPUs visible: CUDA_VISIBLE_DEVICES)")
    elif on_cpu:
        raise ValueError(f"--num-gpus {num_gpus} starts GPU (NCCL) processes on the {visible} visible GPUs but "
                         f"{device_key}={device}: drop {device_key}=cpu to train on the GPUs, or hide them "
                         "(CUDA_VISIBLE_DEVICES=) to start CPU processes")


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a server (torch's TCPStore) could listen on ``host:port`` now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A port the system reports free now (another process may still take it before it is used)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def resolve_dist_url(dist_url: Optional[str], num_machines: int) -> str:
    """``--dist-url`` as given, else detectron2's default (a fixed per-user port on localhost), replaced by a free
    port when that one is taken by another job (single machine only: the machines of a multi-machine job must
    agree on the URL, so they need it on their command line)."""
    if dist_url is not None:
        return dist_url
    from detectron2.engine import default_argument_parser

    default = default_argument_parser().get_default("dist_url")
    host, port = default.rsplit("//", 1)[-1].rsplit(":", 1)
    if num_machines > 1 or port_is_free(int(port), host):
        return default
    url = f"tcp://{host}:{free_port(host)}"
    print(f"{default} (detectron2's default --dist-url) is taken, by another job?: using {url}", file=sys.stderr)
    return url


def use_launch_defaults(parser: argparse.ArgumentParser) -> None:
    """On a parser of detectron2's ``default_argument_parser``: ``--dist-url`` defaults to ``None`` (resolved by
    ``resolve_dist_url``, so that an explicit URL is never replaced) and ``--debug`` is added."""
    parser.set_defaults(dist_url=None)
    for action in parser._actions:  # argparse has no public setter for the help of an added flag
        if action.dest == "dist_url":
            action.help = ("initialization URL of the process group (default: tcp://127.0.0.1:PORT with "
                           "detectron2's per-user PORT, or a free port when that one is taken)")
    add_debug_argument(parser)


class _Worker:
    """``fn`` in a process started by ``launch``: a user error writes its message into ``error_dir`` for the main
    process and ends the process with status 2 (no traceback)."""

    def __init__(self, fn: Callable[..., Any], error_dir: str):
        self.fn, self.error_dir = fn, error_dir

    def __call__(self, *args: Any) -> Any:
        try:
            return self.fn(*args)
        except Exception as exc:
            if not is_user_error(exc):
                raise
            path = os.path.join(self.error_dir, f"error.{os.getpid()}.txt")
            write_atomic(path, lambda f: f.write(error_message(exc)))
            sys.exit(2)


def _relayed_messages(error_dir: str) -> List[str]:
    messages: List[str] = []
    for path in sorted(glob.glob(os.path.join(error_dir, "error.*.txt"))):
        with open(path) as f:
            message = f.read()
        if message not in messages:
            messages.append(message)
    return messages


def launch_command(main_func: Callable[[argparse.Namespace], Any], args: argparse.Namespace, device: str,
                   device_key: str) -> None:
    """detectron2's ``launch(main_func, args.num_gpus, ..., args=(args,))`` after ``check_process_count`` and
    ``resolve_dist_url``. With several processes, their user errors (unless ``args.debug`` or ``SNNET_DEBUG``) come
    back as one ``ReportedError`` in this process instead of each process's traceback."""
    from detectron2.engine import launch

    check_process_count(args.num_gpus, device, device_key)
    if args.num_machines * args.num_gpus == 1:  # this process runs main_func: no process group, no URL
        launch(main_func, 1, args=(args,))
        return
    dist_url = resolve_dist_url(args.dist_url, args.num_machines)
    if getattr(args, "debug", False) or debug_requested(()):
        launch(main_func, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
               dist_url=dist_url, args=(args,))
        return
    import torch.multiprocessing as mp

    # torch's note that it terminates the other processes once one failed would come with every user error
    spawn_logger = logging.getLogger("torch.multiprocessing.spawn")
    level = spawn_logger.level
    spawn_logger.setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory(prefix="snnet_errors_") as error_dir:
        try:
            launch(_Worker(main_func, error_dir), args.num_gpus, num_machines=args.num_machines,
                   machine_rank=args.machine_rank, dist_url=dist_url, args=(args,))
        except mp.ProcessExitedException:  # a process that raised a bug is a ProcessRaisedException: traceback
            messages = _relayed_messages(error_dir)
            if not messages:
                raise
            raise ReportedError("\n".join(messages)) from None
        finally:
            spawn_logger.setLevel(level)
