"""Latency of a model, and of every stitch of a trained SN-Net, on the device it runs on.

``measure_latency(model, inputs)`` times ``model(*inputs)``: ``warmup`` untimed calls, then ``runs`` timed ones
(``torch.cuda.synchronize`` before and after each on CUDA), under ``torch.inference_mode`` and, optionally,
CUDA autocast. It returns the median with min/max and the quartiles, and the device's name.

``time_stitches(net, ids, inputs, wrap)`` times each stitch as it is deployed: ``export_stitch(net, id)`` (only
that stitch's blocks, stitching layers with LoRA merged), wrapped by ``wrap(exported)`` into the task's model
(e.g. depth: the DPT head on it; detection: the Mask R-CNN around it). Without ``wrap`` the backbone alone is
timed (``ExportedStitch.forward(images)``, dense features included).

Latency in a per-stitch results file (``stitch_results.json`` of ``snnet_core.evaluation.report``; read by
``python -m snnet_core.select REPORT --max-latency-ms MS``):

- every row has the column ``latency_ms`` (``LATENCY_COLUMN``): that stitch's median latency in milliseconds
  for one forward of a whole batch, a number (``null`` if the measurement was not finite). It is written as
  one more value of the task's ``evaluate(stitch_id)`` dict, so ``evaluate_stitches`` stores, merges and
  resumes it with the metrics and the CSV/Markdown report show it as a column; it is a cost, never a metric
  (``select`` refuses ``--metric latency_ms``);
- the top-level key ``"latency"`` (``LATENCY_KEY``) describes the measurement::

      {"device": "NVIDIA H100 80GB HBM3", "batch": 1, "input_size": [480, 640], "amp": false,
       "warmup": 10, "runs": 50, "statistic": "median"}

  made by ``latency_info`` and written by ``write_latency_info(output_dir, info)`` after ``evaluate_stitches``.

``--measure-latency`` over a report evaluated without it adds the column: ``add_latency_column`` times the
stitches the report holds and stores their latency beside their metrics (nothing is evaluated again); a report
timed with other settings is another evaluation (its run key differs) and is refused as before.

An evaluation CLI with latency does, e.g. (depth)::

    info = latency_info(device_name(device), batch, (h, w), amp, warmup, runs)
    run_key += "|latency:" + json.dumps(info, sort_keys=True)      # rows of another device/setting never mix
    images = torch.randn(batch, 3, h, w, device=device)
    def evaluate_one(sid):
        ms = time_stitches(model.backbone, [sid], images, wrap, warmup, runs, amp).ms[sid]
        return {**evaluate(model, ...), LATENCY_COLUMN: ms}
    evaluate_stitches(evaluate_one, ...)
    write_latency_info(output_dir, info)

Under DDP, time on the main process only (one device, as deployed); the other ranks skip it. Latency measured
this way is for the user's trained model on the user's hardware; the benchmarks' figures (random weights) are a
different thing.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import torch

from snnet_core.io.atomic_io import file_lock, write_json_atomic
from snnet_core.model.export import ExportedStitch, export_stitch
from snnet_core.evaluation.report import LATENCY_COLUMN, LATENCY_KEY, RESULTS_FILE, read_results
from snnet_core.model.snnet import StitchedViT

logger = logging.getLogger(__name__)

Inputs = Union[torch.Tensor, Sequence[Any]]


@dataclass(frozen=True)
class Latency:
    """Wall-clock time of one call (milliseconds) over ``runs`` timed calls after ``warmup`` untimed ones."""

    median_ms: float
    min_ms: float
    max_ms: float
    q1_ms: float
    q3_ms: float
    runs: int
    warmup: int
    amp: bool
    device: str

    @property
    def iqr_ms(self) -> float:
        return self.q3_ms - self.q1_ms

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class StitchLatencies:
    """``time_stitches``'s result: each stitch's ``Latency`` and the device they were measured on."""

    stats: Dict[int, Latency]
    device: str

    @property
    def ms(self) -> Dict[int, float]:
        """``{stitch id: median milliseconds}``, the ``latency_ms`` column of a report."""
        return {sid: s.median_ms for sid, s in self.stats.items()}


def cpu_name() -> str:
    """The CPU model (``/proc/cpuinfo``'s ``model name``, else ``platform``'s answer)."""
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown CPU"


def device_name(device: Union[torch.device, str]) -> str:
    """A readable name of ``device``: the GPU's (``torch.cuda.get_device_name``), or the CPU model with the
    number of threads torch uses (CPU latency depends on it)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        return f"{cpu_name()} ({torch.get_num_threads()} threads)"
    return device.type


def _as_args(inputs: Inputs) -> Tuple[Any, ...]:
    return (inputs,) if isinstance(inputs, torch.Tensor) else tuple(inputs)


def _input_device(args: Tuple[Any, ...]) -> torch.device:
    return next((a.device for a in args if isinstance(a, torch.Tensor)), torch.device("cpu"))


def measure_latency(
    model: Callable[..., Any],
    inputs: Inputs,
    warmup: int = 10,
    runs: int = 50,
    amp: bool = False,
    amp_dtype: torch.dtype = torch.float16,
    device: Optional[Union[torch.device, str]] = None,
) -> Latency:
    """Time ``model(*inputs)`` (``model(inputs)`` for one tensor) on its device.

    Args:
        model: any callable, already on ``device`` and in the mode to time (``eval()`` for deployment).
        inputs: a tensor (e.g. images ``(B, 3, H, W)``) or a sequence of positional arguments.
        warmup: untimed calls first (CUDA kernels selected, caches filled); ``runs``: timed calls (>= 1).
        amp: run under CUDA autocast with ``amp_dtype``; refused on other devices.
        device: where it runs (default: that of the first tensor of ``inputs``, else the CPU).

    Returns:
        ``Latency`` of one call in milliseconds (median, min/max, quartiles) and the device's name.
    """
    if runs < 1 or warmup < 0:
        raise ValueError(f"measure_latency(warmup={warmup}, runs={runs}): need runs >= 1 and warmup >= 0")
    args = _as_args(inputs)
    device = torch.device(device) if device is not None else _input_device(args)
    if amp and device.type != "cuda":
        raise ValueError(f"amp=True times CUDA autocast, but the model runs on {device}: time it without AMP, or "
                         "move the model and inputs to a GPU")
    cuda = device.type == "cuda"
    autocast = torch.autocast("cuda", dtype=amp_dtype) if amp else contextlib.nullcontext()
    times = []
    with torch.inference_mode(), autocast:
        for i in range(warmup + runs):
            if cuda:
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            model(*args)
            if cuda:
                torch.cuda.synchronize(device)
            if i >= warmup:
                times.append((time.perf_counter() - start) * 1e3)
    q1, _, q3 = statistics.quantiles(times, n=4, method="inclusive") if runs > 1 else (times[0],) * 3
    return Latency(statistics.median(times), min(times), max(times), q1, q3, runs, warmup, amp, device_name(device))


def time_stitches(
    net: StitchedViT,
    stitch_ids: Iterable[int],
    inputs: Inputs,
    wrap: Optional[Callable[[ExportedStitch], Callable[..., Any]]] = None,
    warmup: int = 10,
    runs: int = 50,
    amp: bool = False,
    device: Optional[Union[torch.device, str]] = None,
) -> StitchLatencies:
    """Time every stitch of ``stitch_ids`` as deployed: ``export_stitch(net, id)`` in eval mode (LoRA merged,
    only its blocks), wrapped by ``wrap`` into the task's model, called on ``inputs``.

    Args:
        net: the trained SN-Net, on the device to time on.
        inputs: e.g. images ``(B, 3, H, W)`` on that device; the batch and size are the caller's to record.
        wrap: ``exported stitch -> model`` (e.g. the DPT head around it); the model is timed as returned.
            Default: the exported backbone alone (tokens and dense features).
        warmup, runs, amp, device: as ``measure_latency``, per stitch.

    Returns:
        ``StitchLatencies``: per-stitch ``Latency`` (``.ms``: ``{id: median ms}``) and the device name.
    """
    stats = {}
    for sid in dict.fromkeys(stitch_ids):
        exported = export_stitch(net, sid).eval()
        model = wrap(exported) if wrap is not None else exported
        stats[exported.stitch_id] = measure_latency(model, inputs, warmup, runs, amp, device=device)
    if not stats:
        raise ValueError("time_stitches got no stitch ids")
    return StitchLatencies(stats, next(iter(stats.values())).device)


def latency_info(device: str, batch: int, input_size: Sequence[int], amp: bool, warmup: int, runs: int
                 ) -> Dict[str, Any]:
    """The top-level ``"latency"`` entry of a results file: how its ``latency_ms`` column was measured."""
    return {"device": device, "batch": int(batch), "input_size": [int(s) for s in input_size], "amp": bool(amp),
            "warmup": int(warmup), "runs": int(runs), "statistic": "median"}


def takes_latency_column(record: Mapping[str, Any], untimed_key: str) -> bool:
    """Whether the results ``record`` is the report of this evaluation without latency: its run key is
    ``untimed_key`` (the key the evaluation has without ``--measure-latency``) and no row has ``latency_ms``."""
    return (bool(record) and record.get("run_key") == untimed_key and LATENCY_KEY not in record
            and not any(LATENCY_COLUMN in row for row in record["stitches"].values()))


def add_latency_column(output_dir: str, untimed_key: str, run_key: str, info: Mapping[str, Any],
                       time: Callable[[List[int]], Mapping[int, float]]) -> List[int]:
    """``--measure-latency`` over a report evaluated without it: where ``output_dir``'s results file
    ``takes_latency_column(record, untimed_key)``, time the stitches it holds (``time(ids) -> {id: median ms}``)
    and store their ``latency_ms``, the ``"latency"`` entry ``info`` and the timed evaluation's ``run_key``, so
    that ``evaluate_stitches(run_key=run_key, ...)`` then only evaluates (and times) the stitches still to do.

    Runs under the file's lock (concurrent evaluators wait for the timing rather than add untimed rows); the
    metrics are kept as they are. Returns the ids timed, ``[]`` where there is nothing to add (no file, a timed
    report, or another evaluation's report, which ``evaluate_stitches`` then refuses).
    """
    path = os.path.join(output_dir, RESULTS_FILE)
    if not os.path.isfile(path):
        return []
    with file_lock(path):
        record = read_results(path)
        if not takes_latency_column(record, untimed_key):
            return []
        ids = sorted(int(k) for k in record["stitches"])
        logger.info("%s has no latency column: timing its %d stitches (their metrics are kept, nothing is "
                    "evaluated again)", path, len(ids))
        ms = time(ids) if ids else {}
        for key, row in record["stitches"].items():
            value = float(ms[int(key)])
            row[LATENCY_COLUMN] = value if math.isfinite(value) else None
        record.update(run_key=run_key, **{LATENCY_KEY: dict(info)})
        write_json_atomic(path, record)
    return ids


def write_latency_info(output_dir: str, info: Mapping[str, Any]) -> None:
    """Store ``info`` (``latency_info``) as the ``"latency"`` entry of ``output_dir``'s results file, under its
    lock (concurrent evaluators keep their rows). Call it after ``evaluate_stitches`` wrote the file."""
    path = os.path.join(output_dir, RESULTS_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"write_latency_info: {path} does not exist; call it after evaluate_stitches "
                                "has written the per-stitch results")
    with file_lock(path):
        record = read_results(path)
        record[LATENCY_KEY] = dict(info)
        write_json_atomic(path, record)
