"""Latency: ``measure_latency`` (warm-up + timed runs, statistics, device name), ``time_stitches`` on the exported
(LoRA-merged) route of every stitch, and the ``latency_ms`` column / ``"latency"`` entry of a results file."""
import json
import math
import time

import pytest
import torch
import torch.nn as nn

from snnet_core import ExportedStitch, FlopsTable, StitchingLayer, evaluate_stitches
from snnet_core.evaluation.latency import (
    LATENCY_COLUMN,
    LATENCY_KEY,
    add_latency_column,
    cpu_name,
    device_name,
    latency_info,
    measure_latency,
    time_stitches,
    write_latency_info,
)
from snnet_core.evaluation.report import read_results

from .conftest import tiny_snnet


class FakeClock:
    """``time`` for ``snnet_core.evaluation.latency`` that only ``sleep`` advances: timings exact however loaded the CPU."""

    def __init__(self):
        self.now = 0.0

    def perf_counter(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


class Counting(nn.Module):
    """Counts its calls and whether each ran without autograd; call ``i`` sleeps ``sleeps[i]`` seconds (with
    ``sleep``)."""

    def __init__(self, inner=None, sleeps=(), sleep=time.sleep):
        super().__init__()
        self.inner = inner if inner is not None else nn.Linear(8, 8)
        self.sleeps, self.sleep = list(sleeps), sleep
        self.calls, self.inference = 0, []

    def forward(self, *args):
        if self.calls < len(self.sleeps):
            self.sleep(self.sleeps[self.calls])
        self.calls += 1
        self.inference.append(torch.is_inference_mode_enabled())
        return self.inner(*args)


def test_warmup_and_runs_are_all_called_and_only_runs_are_timed(monkeypatch):
    clock = FakeClock()  # a wall-clock bound would fail on a loaded machine
    monkeypatch.setattr("snnet_core.evaluation.latency.time", clock)
    model = Counting(sleeps=[0.1] * 3 + [0.004] * 5, sleep=clock.sleep)  # slow warm-up (e.g. CUDA kernels), 4 ms
    lat = measure_latency(model, torch.randn(2, 8), warmup=3, runs=5)
    assert model.calls == 3 + 5 and all(model.inference)
    assert (lat.warmup, lat.runs, lat.amp) == (3, 5, False)
    values = [lat.min_ms, lat.q1_ms, lat.median_ms, lat.q3_ms, lat.max_ms]
    assert all(math.isfinite(v) and v > 0 for v in values) and values == sorted(values)
    assert values == pytest.approx([4.0] * 5)  # it timed the 4 ms calls, not the 100 ms warm-up
    assert lat.iqr_ms == lat.q3_ms - lat.q1_ms
    assert lat.device == device_name("cpu") and lat.to_dict()["median_ms"] == lat.median_ms


def test_inputs_are_one_tensor_or_positional_arguments():
    model = Counting(nn.Bilinear(4, 5, 3))
    lat = measure_latency(model, (torch.randn(2, 4), torch.randn(2, 5)), warmup=0, runs=1)
    assert model.calls == 1 and lat.min_ms == lat.q1_ms == lat.median_ms == lat.q3_ms == lat.max_ms > 0


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="runs >= 1"):
        measure_latency(Counting(), torch.randn(1, 8), runs=0)
    with pytest.raises(ValueError, match="amp=True times CUDA autocast, but the model runs on cpu"):
        measure_latency(Counting(), torch.randn(1, 8), amp=True)


def test_the_cpu_is_named_by_its_model_and_threads():
    name = cpu_name()
    assert name and name != "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            models = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
    except OSError:
        models = []
    if models:
        assert name == models[0]
    assert device_name(torch.device("cpu")) == f"{name} ({torch.get_num_threads()} threads)"


def test_every_stitch_is_timed_as_exported_and_wrapped():
    net = tiny_snnet().train()  # the SN-Net's own mode is left alone: exports are timed in eval mode
    images = torch.randn(2, 3, 32, 32)
    ids = [0, 1, net.space.ids[-1], 5, 0]  # anchors, a Slow-Fast-Slow and a Fast-Slow stitch; repeat timed once
    seen = []

    def wrap(exported):
        head = Counting(nn.Identity())
        seen.append((exported, head))
        return lambda x: head(exported(x).features[-1])

    result = time_stitches(net, ids, images, wrap, warmup=2, runs=3)
    assert list(result.ms) == [0, 1, net.space.ids[-1], 5] and result.device == device_name("cpu")
    assert all(math.isfinite(ms) and ms > 0 for ms in result.ms.values())
    assert all(s.runs == 3 and s.warmup == 2 for s in result.stats.values())
    for (exported, head), sid in zip(seen, result.ms):
        assert isinstance(exported, ExportedStitch) and exported.stitch_id == sid and not exported.training
        assert head.calls == 2 + 3
        assert not any(isinstance(m, StitchingLayer) for m in exported.modules())  # LoRA merged into Linear
    assert net.training
    stitched = next(e for e, _ in seen if e.stitch_id == 5)
    assert len(stitched.layers) < len(net.anchors[0].blocks) + len(net.anchors[1].blocks)  # only its blocks


def test_without_a_wrap_the_backbone_alone_is_timed():
    net = tiny_snnet().eval()
    result = time_stitches(net, [3], torch.randn(1, 3, 32, 32), warmup=0, runs=2)
    assert list(result.ms) == [3] and result.ms[3] > 0
    with pytest.raises(ValueError, match="no stitch ids"):
        time_stitches(net, [], torch.randn(1, 3, 32, 32))


def test_latency_is_stored_as_a_column_and_a_top_level_entry(tmp_path):
    """The format ``select --max-latency-ms`` reads: it survives the merges of a resumed evaluation."""
    net = tiny_snnet().eval()
    table = FlopsTable({s: float(s + 1) for s in net.space.ids}, {s: 1.0 for s in net.space.ids}, (32, 32))
    latency = time_stitches(net, [0, 1, 5], torch.randn(1, 3, 32, 32), warmup=1, runs=2)
    info = latency_info(latency.device, 1, (32, 32), False, 1, 2)
    evaluate = lambda sid: {"acc": float(sid), LATENCY_COLUMN: latency.ms[sid]}  # noqa: E731
    evaluate_stitches(evaluate, [0, 1], net.space, table, str(tmp_path), "acc", run_key="k", progress=False)
    write_latency_info(str(tmp_path), info)
    evaluate_stitches(evaluate, [5], net.space, table, str(tmp_path), "acc", run_key="k", progress=False)
    record = read_results(str(tmp_path / "stitch_results.json"))
    assert record[LATENCY_KEY] == json.loads(json.dumps(info)) == {
        "device": device_name("cpu"), "batch": 1, "input_size": [32, 32], "amp": False, "warmup": 1, "runs": 2,
        "statistic": "median"}
    assert {int(k): r[LATENCY_COLUMN] for k, r in record["stitches"].items()} == latency.ms
    assert LATENCY_COLUMN in (tmp_path / "stitch_report.csv").read_text().splitlines()[0].split(",")
    with pytest.raises(FileNotFoundError, match="after evaluate_stitches"):
        write_latency_info(str(tmp_path / "nowhere"), info)


def test_latency_is_added_to_an_untimed_report_of_the_same_evaluation_only(tmp_path):
    """``--measure-latency`` over a report evaluated without it: its stitches are timed and keep their metrics, and
    the evaluation then goes on under the timed key; a timed report or another evaluation's is left alone."""
    net = tiny_snnet().eval()
    table = FlopsTable({s: float(s + 1) for s in net.space.ids}, {s: 1.0 for s in net.space.ids}, (32, 32))
    evaluate_stitches(lambda sid: {"acc": float(sid)}, [0, 1], net.space, table, str(tmp_path), "acc", run_key="k",
                      progress=False)
    info = latency_info("Test CPU (1 threads)", 1, (32, 32), False, 1, 2)
    timed = []

    def time(ids):
        timed.append(ids)
        return {sid: 10.0 + sid for sid in ids}

    assert add_latency_column(str(tmp_path), "other", "other|timed", info, time) == [] and not timed
    assert add_latency_column(str(tmp_path), "k", "k|timed", info, time) == [0, 1] and timed == [[0, 1]]
    record = read_results(str(tmp_path / "stitch_results.json"))
    assert record["run_key"] == "k|timed" and record[LATENCY_KEY] == info
    assert record["stitches"]["1"]["acc"] == 1.0 and record["stitches"]["1"][LATENCY_COLUMN] == 11.0
    assert add_latency_column(str(tmp_path), "k", "k|timed", info, time) == [] and len(timed) == 1  # timed now
    evaluate_stitches(lambda sid: {"acc": float(sid), LATENCY_COLUMN: 15.0}, [0, 1, 5], net.space, table,
                      str(tmp_path), "acc", run_key="k|timed", progress=False)  # only stitch 5 is evaluated
    rows = read_results(str(tmp_path / "stitch_results.json"))["stitches"]
    assert {k: r[LATENCY_COLUMN] for k, r in rows.items()} == {"0": 10.0, "1": 11.0, "5": 15.0}
    assert add_latency_column(str(tmp_path / "nowhere"), "k", "k|timed", info, time) == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_timing_synchronises_and_names_the_gpu():
    net = tiny_snnet().eval().cuda()
    images = torch.randn(2, 3, 32, 32, device="cuda")
    result = time_stitches(net, [0, 1], images, warmup=2, runs=5, amp=True)
    assert result.device == torch.cuda.get_device_name() and all(s.amp for s in result.stats.values())
    assert all(math.isfinite(ms) and ms > 0 for ms in result.ms.values())
    model = Counting().cuda()
    lat = measure_latency(model, torch.randn(4096, 8, device="cuda"), warmup=1, runs=3, amp=True)
    assert model.calls == 4 and lat.amp and lat.median_ms > 0
