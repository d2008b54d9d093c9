"""Per-stitch evaluation loop: report files, interruption and resume, guards, Pareto selection."""
import csv
import json
import os

import pytest

from snnet_core import FlopsTable, StitchSpace, evaluate_stitches, pareto_frontier, select_stitches
from snnet_core.evaluation.report import evaluate_stitch_groups

SPACE = StitchSpace(4, 8)


def table():
    gflops = {s.id: 1.0 + s.num_blocks()[0] * 0.5 + s.num_blocks()[1] * 2.0 for s in SPACE}
    return FlopsTable(gflops, {s.id: gflops[s.id] * 3 for s in SPACE}, (32, 32))


def fake_metric(sid):
    """Deterministic accuracy that grows with FLOPs, with per-stitch jitter so the frontier is non-trivial."""
    return {"acc": 50 + 2 * table().gflops[sid] - (sid % 3), "loss": 1.0 / (1 + sid)}


def test_report_files_are_written(tmp_path):
    record = evaluate_stitches(fake_metric, SPACE.ids, SPACE, table(), str(tmp_path), "acc", run_key="m1",
                               progress=False)
    assert len(record["stitches"]) == len(SPACE)
    saved = json.loads((tmp_path / "stitch_results.json").read_text())
    assert saved == record and saved["stitches"]["5"]["route"] == SPACE[5].route
    with open(tmp_path / "stitch_report.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(SPACE)
    assert list(rows[0]) == ["id", "type", "route", "gflops", "params_m", "acc", "loss", "on_frontier"]
    frontier = pareto_frontier(table().gflops, {s: fake_metric(s)["acc"] for s in SPACE.ids})
    assert {int(r["id"]) for r in rows if r["on_frontier"] == "True"} == set(frontier)
    assert [float(r["gflops"]) for r in rows] == sorted(float(r["gflops"]) for r in rows)
    md = (tmp_path / "stitch_report.md").read_text()
    assert md.count("\n| ") == len(SPACE) + 1 and md.count(" * |") == len(frontier)
    png = (tmp_path / "stitch_report.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_interrupted_run_resumes_without_redoing_finished_stitches(tmp_path):
    calls = []

    def flaky(sid):
        if len(calls) == 5:
            raise KeyboardInterrupt  # e.g. the job was killed mid-way
        calls.append(sid)
        return fake_metric(sid)

    with pytest.raises(KeyboardInterrupt):
        evaluate_stitches(flaky, SPACE.ids, SPACE, table(), str(tmp_path), "acc", run_key="m1", progress=False)
    saved = json.loads((tmp_path / "stitch_results.json").read_text())
    assert sorted(map(int, saved["stitches"])) == sorted(calls) and len(calls) == 5

    resumed_calls = []

    def counting(sid):
        resumed_calls.append(sid)
        return fake_metric(sid)

    record = evaluate_stitches(counting, SPACE.ids, SPACE, table(), str(tmp_path), "acc", run_key="m1",
                               progress=False)
    assert set(resumed_calls) == set(SPACE.ids) - set(calls) and len(resumed_calls) == len(SPACE) - 5
    fresh = evaluate_stitches(fake_metric, SPACE.ids, SPACE, table(), str(tmp_path / "fresh"), "acc",
                              run_key="m1", progress=False)
    assert record == fresh


def test_results_of_another_model_are_not_mixed(tmp_path):
    evaluate_stitches(fake_metric, [0, 1], SPACE, table(), str(tmp_path), "acc", run_key="model-A", progress=False)
    with pytest.raises(RuntimeError, match="another run"):
        evaluate_stitches(fake_metric, [2], SPACE, table(), str(tmp_path), "acc", run_key="model-B", progress=False)
    (tmp_path / "stitch_results.json").write_text("{ corrupt")
    with pytest.raises(RuntimeError, match="not valid JSON"):
        evaluate_stitches(fake_metric, [2], SPACE, table(), str(tmp_path), "acc", run_key="model-A", progress=False)


def test_missing_primary_metric_is_an_error(tmp_path):
    with pytest.raises(KeyError, match="primary metric 'AP'"):
        evaluate_stitches(fake_metric, [0], SPACE, table(), str(tmp_path), "AP", progress=False)


def test_lower_is_better_metric_frontier(tmp_path):
    record = evaluate_stitches(lambda s: {"rmse": 10.0 / table().gflops[s] + (s % 2)}, SPACE.ids, SPACE, table(),
                               str(tmp_path), "rmse", higher_is_better=False, progress=False)
    with open(tmp_path / "stitch_report.csv") as f:
        front = [int(r["id"]) for r in csv.DictReader(f) if r["on_frontier"] == "True"]
    rmse = {int(k): v["rmse"] for k, v in record["stitches"].items()}
    assert front == pareto_frontier(table().gflops, rmse, higher_is_better=False)
    assert min(rmse, key=rmse.get) in front


@pytest.mark.parametrize("metric, flipped", [("a1", False), ("rmse", True), ("bbox_AP", False)])
def test_a_known_metric_recorded_in_the_wrong_direction_is_refused(tmp_path, metric, flipped):
    """A results file whose higher_is_better contradicts what is known of its primary metric (edited, or damaged)
    is refused wherever it is read; an evaluation asked to rank a known metric the wrong way fails before any
    stitch is evaluated."""
    right = not flipped
    evaluate_stitches(lambda s: {metric: float(s)}, [0, 1, 2], SPACE, table(), str(tmp_path), metric,
                      higher_is_better=right, run_key="m1", progress=False)
    path = tmp_path / "stitch_results.json"
    record = json.loads(path.read_text())
    path.write_text(json.dumps(dict(record, higher_is_better=flipped)))
    word = "higher" if right else "lower"
    fix = rf'set "higher_is_better": {json.dumps(right)} in it'
    with pytest.raises(ValueError, match=rf"{path}: higher_is_better is {json.dumps(flipped)} for '{metric}', but a "
                                         rf"{word} {metric} is better .*{fix}"):
        select_stitches("pareto", SPACE, str(path))
    path.write_text(json.dumps(dict(record, higher_is_better="false")))  # a string is not a direction
    with pytest.raises(ValueError, match=r'higher_is_better is "false", not true or false \(the file was edited'):
        select_stitches("pareto", SPACE, str(path))
    calls = []
    with pytest.raises(ValueError, match=rf"evaluate_stitches: higher_is_better is {json.dumps(flipped)} for "
                                         rf"'{metric}', .*pass higher_is_better={right}"):
        evaluate_stitches(lambda s: calls.append(s) or {metric: 1.0}, [3], SPACE, table(), str(tmp_path / "new"),
                          metric, higher_is_better=flipped, run_key="m1", progress=False)
    assert not calls and not (tmp_path / "new").exists()


def test_files_that_are_not_results_are_refused_unread_or_named(tmp_path, monkeypatch):
    """A file larger than a results file can be is refused before it is read (a crafted 100 MB file read into
    memory), and one nested too deeply or not text at all is 'not valid JSON', not a RecursionError or a codec
    error from inside the json module."""
    import snnet_core.evaluation.report as report

    big = tmp_path / "big.json"
    big.write_bytes(b" " * 1024)
    monkeypatch.setattr(report, "MAX_RESULTS_BYTES", 1000)
    monkeypatch.setattr(json, "load", lambda f: pytest.fail("the file was read"))
    with pytest.raises(ValueError, match=rf"{big} is 0 MiB, more than a per-stitch results file holds"):
        report.read_results(str(big))
    monkeypatch.undo()
    nested = tmp_path / "nested.json"
    nested.write_text("[" * 100000 + "]" * 100000)
    binary = tmp_path / "model.pth"
    binary.write_bytes(b"PK\x03\x04\xff\xfe\x00 a checkpoint")
    for path, why in ((nested, "nested too deeply"), (binary, "can't decode byte")):
        with pytest.raises(RuntimeError, match=rf"{path} is not valid JSON \(.*{why}.*\); move it away") as caught:
            report.read_results(str(path))
        assert type(caught.value) is RuntimeError


def test_pareto_selection_reads_a_previous_report(tmp_path):
    evaluate_stitches(fake_metric, SPACE.ids, SPACE, table(), str(tmp_path), "acc", progress=False)
    chosen = select_stitches("pareto", SPACE, str(tmp_path / "stitch_results.json"))
    assert chosen == pareto_frontier(table().gflops, {s: fake_metric(s)["acc"] for s in SPACE.ids})
    assert select_stitches("3,4", SPACE) == [3, 4] and select_stitches("all", SPACE) == SPACE.ids
    with pytest.raises(FileNotFoundError, match="--stitch all first"):
        select_stitches("pareto", SPACE, str(tmp_path / "missing.json"))


def _write_many(args):
    from snnet_core.io.atomic_io import write_json_atomic

    path, rank = args
    for i in range(200):
        write_json_atomic(path, {"rank": rank, "i": i, "payload": list(range(200))})
    return rank


def test_concurrent_atomic_writes_never_fail_or_tear(tmp_path):
    """Two writers of one file (e.g. DDP ranks sharing a FLOPs cache directory)."""
    import multiprocessing as mp

    path = str(tmp_path / "shared.json")
    with mp.get_context("spawn").Pool(2) as pool:
        assert sorted(pool.map(_write_many, [(path, 0), (path, 1)])) == [0, 1]
    final = json.loads((tmp_path / "shared.json").read_text())
    assert final["i"] == 199 and final["payload"] == list(range(200))
    assert [p.name for p in tmp_path.iterdir()] == ["shared.json"]  # no temporary files left


def test_failed_write_keeps_the_previous_file(tmp_path):
    from snnet_core.io.atomic_io import write_atomic, write_json_atomic

    path = str(tmp_path / "results.json")
    write_json_atomic(path, {"done": [1, 2]})

    def crash(f):
        f.write('{"done": [1, 2, ')
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_atomic(path, crash)
    assert json.loads((tmp_path / "results.json").read_text()) == {"done": [1, 2]}
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640)])
def test_atomic_writes_get_the_usual_file_mode(tmp_path, umask, mode):
    """Results, reports, checkpoints and caches must be readable as any other file the user writes (mkstemp
    alone would leave them 0600)."""
    import stat

    from snnet_core.io.atomic_io import write_json_atomic

    previous = os.umask(umask)
    try:
        write_json_atomic(str(tmp_path / "results.json"), {"a": 1})
    finally:
        os.umask(previous)
    assert stat.S_IMODE(os.stat(tmp_path / "results.json").st_mode) == mode


def test_stale_temporaries_of_a_killed_write_are_found_and_removed(tmp_path):
    from snnet_core.io.atomic_io import remove_stale_temporaries, temporaries_of, write_atomic

    path = str(tmp_path / "checkpoint_last.pth")
    with pytest.raises(KeyboardInterrupt):  # stands for a kill between mkstemp and the rename...
        write_atomic(path, lambda f: (_ for _ in ()).throw(KeyboardInterrupt))
    (tmp_path / "checkpoint_last.pth.abc123.tmp").write_bytes(b"half")  # ...which leaves this behind
    (tmp_path / "other.pth.abc123.tmp").write_bytes(b"not ours")
    assert temporaries_of(path) == [str(tmp_path / "checkpoint_last.pth.abc123.tmp")]
    assert remove_stale_temporaries(path) == [str(tmp_path / "checkpoint_last.pth.abc123.tmp")]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.pth.abc123.tmp"]


def test_the_next_report_removes_temporaries_of_killed_report_writes(tmp_path):
    """A --report-dir outside the training run's directory is not cleared by its start: the next report write (under
    the results file's lock) removes what killed CSV/Markdown/PNG writes left, and nothing else."""
    evaluate_stitches(fake_metric, [0, 1], SPACE, table(), str(tmp_path), "acc", run_key="m1", progress=False)
    killed = [tmp_path / f"{name}.k1ll3d.tmp" for name in ("stitch_report.csv", "stitch_report.md",
                                                            "stitch_report.png", "stitch_report_latency.png")]
    for path in killed + [tmp_path / "notes.md.k1ll3d.tmp"]:
        path.write_bytes(b"half")
    evaluate_stitches(fake_metric, [0, 1, 2], SPACE, table(), str(tmp_path), "acc", run_key="m1", progress=False)
    assert not [p for p in killed if p.exists()] and (tmp_path / "notes.md.k1ll3d.tmp").exists()


def _append_under_lock(args):
    import time

    from snnet_core.io.atomic_io import file_lock, write_json_atomic

    path, value = args
    for _ in range(20):
        with file_lock(path):
            data = json.load(open(path)) if os.path.exists(path) else []
            time.sleep(0.001)  # widen the read-modify-write window
            write_json_atomic(path, data + [value])
    return value


def test_file_lock_serialises_read_modify_write(tmp_path):
    import multiprocessing as mp

    path = str(tmp_path / "results.json")
    with mp.get_context("spawn").Pool(2) as pool:
        pool.map(_append_under_lock, [(path, 0), (path, 1)])
    assert sorted(json.loads((tmp_path / "results.json").read_text())) == [0] * 20 + [1] * 20


# --- reliability: merging, strict JSON, malformed and foreign results (issue #9) ---------------------------
def test_evaluators_sharing_a_results_file_keep_each_others_rows(tmp_path):
    """A second evaluator writes its stitches while the first is mid-run: both sides survive the merge."""
    def first(sid):
        if sid == 1:  # the other evaluator runs (and finishes) while this one evaluates stitch 1
            evaluate_stitches(fake_metric, [3, 4], SPACE, table(), str(tmp_path), "acc", run_key="m1",
                              progress=False)
        return fake_metric(sid)

    record = evaluate_stitches(first, [0, 1, 2], SPACE, table(), str(tmp_path), "acc", run_key="m1", progress=False)
    assert sorted(map(int, record["stitches"])) == [0, 1, 2, 3, 4]
    saved = json.loads((tmp_path / "stitch_results.json").read_text())
    assert saved == record
    with open(tmp_path / "stitch_report.csv") as f:
        assert sorted(int(r["id"]) for r in csv.DictReader(f)) == [0, 1, 2, 3, 4]  # report of the merged results


def test_results_of_another_run_appearing_mid_run_are_not_mixed(tmp_path):
    """The run-key guard holds at every merge, not only at the start: a file replaced by another run's results
    (e.g. someone evaluated another model into the directory) makes this run stop, and the file stays theirs."""
    other = tmp_path / "other"

    def evaluate(sid):
        if sid == 1:
            evaluate_stitches(fake_metric, [5], SPACE, table(), str(other), "acc", run_key="model-B", progress=False)
            (other / "stitch_results.json").replace(tmp_path / "stitch_results.json")
        return fake_metric(sid)

    with pytest.raises(RuntimeError, match="another run .*'model-B'"):
        evaluate_stitches(evaluate, [0, 1, 2], SPACE, table(), str(tmp_path), "acc", run_key="model-A",
                          progress=False)
    saved = json.loads((tmp_path / "stitch_results.json").read_text())
    assert saved["run_key"] == "model-B" and list(saved["stitches"]) == ["5"]


def test_non_finite_metrics_are_written_as_null_and_left_off_the_frontier(tmp_path, caplog):
    def evaluate(sid):
        metrics = fake_metric(sid)
        if sid == 1:  # the slow anchor: the best stitch, were its NaN compared
            metrics["acc"] = float("nan")
        if sid == 2:
            metrics["loss"] = float("inf")
        return metrics

    record = evaluate_stitches(evaluate, SPACE.ids, SPACE, table(), str(tmp_path), "acc", progress=False)
    text = (tmp_path / "stitch_results.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    strict = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    assert strict == record and strict["stitches"]["1"]["acc"] is None and strict["stitches"]["2"]["loss"] is None
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == [f"NaN or inf metrics, stored as null: acc for 1 of the {len(SPACE)} evaluated stitches (1), "
                        f"left off the frontier; loss for 1 of the {len(SPACE)} evaluated stitches (2)"]
    with open(tmp_path / "stitch_report.csv") as f:
        rows = {int(r["id"]): r for r in csv.DictReader(f)}
    assert rows[1]["acc"] == "" and rows[1]["on_frontier"] == "False"
    md = (tmp_path / "stitch_report.md").read_text()
    assert "left off the frontier: stitches 1." in md and "| n/a |" in md
    finite = {s: fake_metric(s)["acc"] for s in SPACE.ids if s != 1}
    assert select_stitches("pareto", SPACE, str(tmp_path / "stitch_results.json")) == \
        pareto_frontier(table().gflops, finite)


def test_metrics_nan_for_every_stitch_are_one_line_with_the_reason_and_no_line_per_stitch(tmp_path, caplog):
    caplog.set_level("DEBUG", logger="snnet_core")  # detectron2's console handlers show DEBUG records

    def evaluate(ids):  # as COCO on a test set without large objects: APl is NaN for every stitch
        return {s: {"acc": 0.5, "bbox_APl": float("nan"), "segm_APl": float("nan")} for s in ids}

    reasons = {"bbox_APl": "no large objects", "segm_APl": "no large objects"}
    evaluate_stitch_groups(evaluate, [[0, 1], [5]], SPACE, table(), str(tmp_path), "acc", progress=False,
                           non_finite_reasons=reasons)
    nan_lines = [r.getMessage() for r in caplog.records if "null" in r.getMessage()]
    assert nan_lines == ["NaN or inf metrics, stored as null: bbox_APl, segm_APl for all 3 evaluated stitches "
                         "(no large objects)"]


def test_a_report_whose_metric_is_nan_for_every_stitch_still_gets_its_plot_without_a_warning(tmp_path):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # matplotlib warned "No artists with labels found to put in legend"
        evaluate_stitches(lambda sid: {"acc": float("nan")}, SPACE.ids[:3], SPACE, table(), str(tmp_path), "acc",
                          progress=False)
    assert (tmp_path / "stitch_report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_row_missing_a_metric_is_a_clear_error(tmp_path):
    evaluate_stitches(fake_metric, [0, 1, 2, 3], SPACE, table(), str(tmp_path), "acc", run_key="m1", progress=False)
    path = tmp_path / "stitch_results.json"
    record = json.loads(path.read_text())
    del record["stitches"]["3"]["loss"]  # a hand-edited file
    path.write_text(json.dumps(record))
    with pytest.raises(ValueError, match=r"stitch_results.json: stitch 3 has no 'loss' \(a metric other stitches"):
        evaluate_stitches(fake_metric, [4], SPACE, table(), str(tmp_path), "acc", run_key="m1", progress=False)
    with pytest.raises(ValueError, match=r"stitch_results.json: stitch 3 has no 'loss'"):
        select_stitches("pareto", SPACE, str(path))
    del record["stitches"]["0"]["acc"]
    path.write_text(json.dumps(record))
    with pytest.raises(ValueError, match=r"stitch 0 has no 'acc' \(the primary metric\)"):
        select_stitches("pareto", SPACE, str(path))
    evaluate_stitches(fake_metric, [0, 1], SPACE, table(), str(tmp_path / "ok"), "acc", progress=False)
    with pytest.raises(ValueError, match=r"stitch_results.json: stitch 0 has no 'rmse' \(its metrics: \['acc', 'loss'"):
        select_stitches("pareto", SPACE, str(tmp_path / "ok" / "stitch_results.json"), metric="rmse",
                        higher_is_better=False)
    with pytest.raises(RuntimeError, match=r"returned the metrics \['acc'\], but .* holds rows with \['acc', 'loss'\]"):
        evaluate_stitches(lambda s: {"acc": 1.0}, [2], SPACE, table(), str(tmp_path / "ok"), "acc", progress=False)


def test_another_tasks_results_are_refused_as_pareto_source(tmp_path):
    depth, detection = tmp_path / "depth", tmp_path / "detection"
    evaluate_stitches(lambda s: {"a1": 0.5 + 0.01 * s, "rmse": 1.0}, SPACE.ids, SPACE, table(), str(depth), "a1",
                      task="depth", progress=False)
    evaluate_stitches(lambda s: {"bbox_AP": 30.0 + s, "segm_AP": 25.0}, SPACE.ids, SPACE, table(), str(detection),
                      "bbox_AP", task="detection", progress=False)
    detection_results = str(detection / "stitch_results.json")
    with pytest.raises(ValueError, match=r"detection/stitch_results.json is a detection report \(metrics bbox_AP, "
                                         r"segm_AP\), not a depth one: give --stitch pareto"):
        select_stitches("pareto", SPACE, detection_results, task="depth")
    assert select_stitches("pareto", SPACE, str(depth / "stitch_results.json"), task="depth")
    # a file without the task tag (edited): refused where a task is asked for, else the metric tells them apart
    record = json.loads((detection / "stitch_results.json").read_text())
    del record["task"]
    (detection / "stitch_results.json").write_text(json.dumps(record))
    with pytest.raises(ValueError, match=r"stitch_results.json has no task tag \(the file was edited, or written "
                                         r"before reports were tagged\): it may be another task's report"):
        select_stitches("pareto", SPACE, detection_results, task="depth")
    with pytest.raises(ValueError, match=r"stitch 0 has no 'a1' \(its metrics: \['bbox_AP', 'segm_AP'\]\)"):
        select_stitches("pareto", SPACE, detection_results, metric="a1", higher_is_better=True)
    # detection's stitch_report.json (rows as a list) is not a results file
    (tmp_path / "stitch_report.json").write_text(json.dumps({"title": "t", "run_key": "", "stitches": [{"id": 0}]}))
    with pytest.raises(ValueError, match="not a per-stitch results file .*looks like a stitch_report.json"):
        select_stitches("pareto", SPACE, str(tmp_path / "stitch_report.json"))
    # results of a bigger SN-Net
    evaluate_stitches(lambda s: {"acc": 1.0}, [40], StitchSpace(12, 24), FlopsTable({40: 9.0}, {40: 1.0}, (32, 32)),
                      str(tmp_path / "big"), "acc", progress=False)
    with pytest.raises(ValueError, match=r"holds stitches \['40'\] that this stitch space \(4/8 blocks"):
        select_stitches("pareto", SPACE, str(tmp_path / "big" / "stitch_results.json"))
    # an evaluation of another task into the same directory
    with pytest.raises(RuntimeError, match="another run"):
        evaluate_stitches(fake_metric, [0], SPACE, table(), str(depth), "acc", task="detection", progress=False)


@pytest.mark.parametrize("column, value", [("gflops", -1.0), ("gflops", float("inf")), ("params_m", -3.0),
                                           ("latency_ms", -0.5), ("latency_ms", float("nan"))])
def test_a_negative_or_non_finite_cost_is_refused(tmp_path, column, value):
    evaluate_stitches(lambda s: {"acc": 1.0 + s, "latency_ms": 2.0}, SPACE.ids, SPACE, table(), str(tmp_path), "acc",
                      task="depth", progress=False)
    path = tmp_path / "stitch_results.json"
    record = json.loads(path.read_text())
    record["stitches"]["3"][column] = value  # an edited report: this stitch would be chosen as the cheapest
    path.write_text(json.dumps(record))
    with pytest.raises(ValueError, match=rf"stitch_results.json: stitch 3 has {column}={value!r}, not a finite cost "
                                         r">= 0 \(the file was edited or is damaged\)"):
        select_stitches("pareto", SPACE, str(path), task="depth")


def test_repeated_ids_are_evaluated_once_and_bad_ids_fail_before_any_evaluation(tmp_path):
    calls = []

    def counting(sid):
        calls.append(sid)
        return fake_metric(sid)

    evaluate_stitches(counting, [3, 3, 3, 0], SPACE, table(), str(tmp_path), "acc", progress=False)
    assert calls == [3, 0]
    for bad, error in ((True, TypeError), (2.0, TypeError), (999, KeyError)):
        with pytest.raises(error, match="stitch id"):
            evaluate_stitches(counting, [4, bad], SPACE, table(), str(tmp_path / "bad"), "acc", progress=False)
    assert calls == [3, 0]


def test_resume_false_evaluates_every_given_stitch(tmp_path):
    """DDP callers broadcast the stitches to do and pass resume=False, so rank 0 evaluates exactly those."""
    evaluate_stitches(fake_metric, [0, 1], SPACE, table(), str(tmp_path), "acc", progress=False)
    calls = []
    record = evaluate_stitches(lambda s: calls.append(s) or fake_metric(s), [1, 2], SPACE, table(), str(tmp_path),
                               "acc", progress=False, resume=False)
    assert calls == [1, 2] and sorted(map(int, record["stitches"])) == [0, 1, 2]


def test_groups_merge_the_rows_of_the_one_by_one_loop_and_an_interruption_loses_one_group(tmp_path):
    one_by_one = evaluate_stitches(fake_metric, SPACE.ids, SPACE, table(), str(tmp_path / "each"), "acc",
                                   run_key="m1", progress=False)
    groups = [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9, 10, 11], [12, 13]]
    calls, written = [], []

    def flaky_group(ids):
        if len(calls) == 2:
            written.append(json.loads((tmp_path / "grouped" / "stitch_results.json").read_text()))
            raise KeyboardInterrupt  # killed during the third group
        calls.append(ids)
        return {sid: fake_metric(sid) for sid in ids}

    with pytest.raises(KeyboardInterrupt):
        evaluate_stitch_groups(flaky_group, groups, SPACE, table(), str(tmp_path / "grouped"), "acc", run_key="m1",
                               progress=False)
    assert sorted(map(int, written[0]["stitches"])) == list(range(7))  # the two finished groups, flushed each
    calls.clear()
    record = evaluate_stitch_groups(lambda ids: calls.append(ids) or {s: fake_metric(s) for s in ids},
                                    [*groups, [0, 13, 3]], SPACE, table(), str(tmp_path / "grouped"), "acc",
                                    run_key="m1", progress=False)
    assert calls == [[7, 8, 9, 10, 11], [12, 13]]  # finished groups and repeated ids are not redone
    assert record == one_by_one
    for name in ("stitch_report.csv", "stitch_report.md"):
        assert (tmp_path / "grouped" / name).read_text() == (tmp_path / "each" / name).read_text()
    with pytest.raises(KeyError, match=r"evaluate_group\(\[2\]\) returned the stitches \[1, 2\]"):
        evaluate_stitch_groups(lambda ids: {s: fake_metric(s) for s in (1, 2)}, [[2]], SPACE, table(),
                               str(tmp_path / "bad"), "acc", progress=False)
    with pytest.raises(KeyError, match="unknown stitch id 999"):
        evaluate_stitch_groups(lambda ids: 1 / 0, [[1], [999]], SPACE, table(), str(tmp_path / "bad"), "acc",
                               progress=False)


def test_console_gets_one_line_per_stitch_then_the_frontier(tmp_path, caplog):
    caplog.set_level("INFO", logger="snnet_core")
    record = evaluate_stitch_groups(lambda ids: {s: fake_metric(s) for s in ids}, [[0, 5, 9], [1]], SPACE, table(),
                                    str(tmp_path), "acc", run_key="m1", progress=False)
    lines = [r.getMessage() for r in caplog.records if r.name == "snnet_core.evaluation.report"]
    per_stitch = [line for line in lines if line.startswith("stitch ")]
    assert len(per_stitch) == 4
    row = record["stitches"]["5"]
    assert per_stitch[1] == (f"stitch   5 {row['type']:<6} {row['route']:<28} | {row['gflops']:.4g} GFLOPs | "
                             f"acc {row['acc']:.4g}, loss {row['loss']:.4g}")
    frontier = pareto_frontier({s: record["stitches"][str(s)]["gflops"] for s in (0, 1, 5, 9)},
                               {s: record["stitches"][str(s)]["acc"] for s in (0, 1, 5, 9)})
    heading = lines.index(f"Pareto frontier on acc ({len(frontier)} of 4 stitches, cheapest first):")
    listed = [int(line.split()[0]) for line in lines[heading + 1:heading + 1 + len(frontier)]]
    assert listed == sorted(frontier, key=lambda s: record["stitches"][str(s)]["gflops"])


def test_each_log_line_reaches_the_console_once_while_the_progress_bar_runs(tmp_path, capsys):
    import logging
    import sys

    handler = logging.StreamHandler(sys.stdout)  # as logging.basicConfig(stream=sys.stdout) sets up
    handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    root, core = logging.getLogger(), logging.getLogger("snnet_core")
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        evaluate_stitches(fake_metric, [0, 1, 5], SPACE, table(), str(tmp_path), "acc", run_key="m1")
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    assert core.handlers == [] and root.handlers.count(handler) == 0  # nothing left behind
    captured = capsys.readouterr()
    out = (captured.out + captured.err).splitlines()
    assert sum("stitch   5 SF " in line for line in out) == 1
    assert sum(line.startswith("snnet_core.evaluation.report: stitch ") for line in out) == 3
    assert sum("Pareto frontier on acc" in line for line in out) == 1


def plot_texts(fig):
    """``(legend texts, y label, annotations)`` of a report plot."""
    ax = fig.axes[0]
    return [t.get_text() for t in ax.get_legend().get_texts()], ax.get_ylabel(), [t.get_text() for t in ax.texts]


def depth_metrics(sid):
    return {"a1": 0.5 + 0.02 * table().gflops[sid] - 0.01 * (sid % 3), "abs_rel": 0.3 - 0.01 * table().gflops[sid]}


def test_the_plot_names_each_anchor_the_route_types_and_the_metric_with_its_direction(tmp_path, drawn_figures):
    evaluate_stitches(depth_metrics, SPACE.ids, SPACE, table(), str(tmp_path), "a1", task="depth", progress=False)
    (fig,) = drawn_figures
    legend, ylabel, annotations = plot_texts(fig)
    assert ylabel == "δ<1.25 accuracy (higher is better)"
    assert "small anchor S[0:4], id 0" in legend and "large anchor L[0:8], id 1" in legend
    for kind, name in [("FS", "Fast-to-Slow"), ("SF", "Slow-to-Fast"), ("FSF", "Fast-Slow-Fast"),
                       ("SFS", "Slow-Fast-Slow")]:
        count = sum(s.kind == kind for s in SPACE)
        assert f"{kind} ({name}): {count}" in legend
    assert not any(text.startswith("selected") for text in legend)  # nothing was selected
    frontier = select_stitches("pareto", SPACE, str(tmp_path / "stitch_results.json"))
    assert {0, 1} <= set(map(int, annotations)) <= set(frontier) | {0, 1}  # ids of the anchors and the frontier
    assert len(annotations) == len(set(annotations))  # an anchor on the frontier is labelled once


def test_frontier_ids_too_close_to_read_are_thinned_out(tmp_path, drawn_figures):
    from snnet_core.evaluation.report import plot_metric_vs_gflops

    rows = {sid: {"id": sid, "type": SPACE[sid].kind, "route": SPACE[sid].route, "gflops": gflops, "acc": acc}
            for sid, gflops, acc in [(0, 1.0, 50.0), (1, 10.0, 60.0), (4, 5.0, 55.0), (5, 5.001, 55.001)]}
    plot_metric_vs_gflops(rows, [0, 4, 5, 1], "acc", str(tmp_path / "p.png"), "t", higher_is_better=True)
    (fig,) = drawn_figures
    _, ylabel, annotations = plot_texts(fig)
    assert sorted(annotations) == ["0", "1", "4"] and ylabel == "acc (higher is better)"  # 5 would cover 4


def test_the_plot_marks_and_names_the_selected_stitch_and_spells_out_another_metric(tmp_path, drawn_figures):
    from snnet_core.evaluation.report import plot_report

    record = evaluate_stitches(depth_metrics, SPACE.ids, SPACE, table(), str(tmp_path), "a1", task="depth",
                               progress=False)
    drawn_figures.clear()
    plot_report(record, str(tmp_path / "choice.png"), metric="abs_rel", selected=5)
    (fig,) = drawn_figures
    legend, ylabel, annotations = plot_texts(fig)
    assert ylabel == "absolute relative error (lower is better)"
    assert f"selected: stitch 5 ({SPACE[5].kind}, {SPACE[5].route})" in legend
    assert annotations.count("5") == 1  # the selected id once, not also as a frontier label
    assert (tmp_path / "choice.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_metric_labels_of_both_projects_and_of_an_unknown_metric():
    from snnet_core.evaluation.metric_labels import known_direction, metric_label

    assert metric_label("a1") == "δ<1.25 accuracy (higher is better)"
    assert metric_label("abs_rel") == "absolute relative error (lower is better)"
    assert metric_label("rmse") == "RMSE (m) (lower is better)"
    assert metric_label("bbox_AP") == "box AP (higher is better)"
    assert metric_label("segm_AP50") == "mask AP at IoU 0.5 (higher is better)"
    assert metric_label("bbox_APs") == "box AP, small objects (higher is better)"
    assert metric_label("mIoU") == "mean IoU (%) (higher is better)" and known_direction("aAcc")
    assert metric_label("acc", higher_is_better=True) == "acc (higher is better)"  # the report's direction
    assert metric_label("acc") == "acc" and known_direction("acc") is None and known_direction("segm_APl")


@pytest.fixture
def progress_bars(monkeypatch):
    """The evaluation progress bars made in the test, each recording its ``update`` steps (``bar.updates``)."""
    from snnet_core import progress

    bars = []

    class RecordingBar(progress.tqdm):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.updates = []
            bars.append(self)

        def update(self, n=1):
            self.updates.append(n)
            return super().update(n)

    monkeypatch.setattr(progress, "tqdm", RecordingBar)
    return bars


@pytest.mark.parametrize("per_batch, expected", [(2, [6, 6, 2, 2]),  # what a task's batch loop reports
                                                 (3, [9, 3, 3, 1]),  # too much: capped at the group's share
                                                 (0, [12, 4])])  # nothing: the group's share when it is done
def test_the_bar_counts_images_x_stitches_and_moves_per_batch(tmp_path, progress_bars, per_batch, expected):
    from snnet_core import progress

    def evaluate(ids):  # 4 test images in batches of 2, every stitch of the group on each batch
        for _ in range(2):
            progress.advance(per_batch * len(ids))
        return {s: fake_metric(s) for s in ids}

    evaluate_stitch_groups(evaluate, [[0, 5, 9], [1]], SPACE, table(), str(tmp_path), "acc", images=4)
    (bar,) = progress_bars
    assert (bar.total, bar.n, bar.updates) == (16, 16, expected)
    assert bar.desc.startswith("evaluating 4 stitches x 4 images")
    progress.advance(5)  # outside an evaluation: nothing to move, no error
    assert bar.updates == expected


def test_classification_metrics_have_labels_and_directions():
    from snnet_core.evaluation.metric_labels import known_direction, metric_label

    assert metric_label("acc1") == "top-1 accuracy (%) (higher is better)"
    assert metric_label("acc5") == "top-5 accuracy (%) (higher is better)"
    assert known_direction("acc1") is True and known_direction("loss") is None


def test_the_plot_names_the_anchors_of_a_three_anchor_space(tmp_path, drawn_figures):
    space = StitchSpace(4, 4, 4)  # SN-Netv1's sliding-window space: anchors A0 (smallest), A1, A2
    gflops = {s.id: float(sum(n * (a + 1) for a, n in enumerate(s.num_blocks()))) for s in space}
    flops = FlopsTable(gflops, {sid: 1.0 for sid in space.ids}, (32, 32))
    evaluate_stitches(lambda sid: {"acc": gflops[sid] % 7}, space.ids, space, flops, str(tmp_path), "acc",
                      progress=False)
    (fig,) = drawn_figures
    legend = plot_texts(fig)[0]
    assert {"anchor A0[0:4], id 0", "anchor A1[0:4], id 1", "anchor A2[0:4], id 2", "FS (Fast-to-Slow): 20"} <= set(
        legend)
