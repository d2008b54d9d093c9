"""Fault injection on the engine's files, with real processes: concurrent evaluators sharing one results file,
kill -9 of an evaluator (between stitches and in the middle of a results write) and resume, and a full disk
(a file-size limit, RLIMIT_FSIZE) during results, FLOPs-cache and checkpoint writes.

The evaluators run a tiny fake ``evaluate`` (a deterministic function of the stitch id), so every test is a
matter of seconds; the processes are spawned, as separate jobs would be.
"""
import json
import multiprocessing as mp
import os
import resource
import signal
import time

import pytest

from snnet_core import FlopsTable, StitchSpace, build_flops_table, evaluate_stitches, save_snnet
from snnet_core.io.atomic_io import temporaries_of
from snnet_core.evaluation.report import RESULTS_FILE

SPACE = StitchSpace(4, 8)  # 14 stitches
SPAWN = mp.get_context("spawn")


def table() -> FlopsTable:
    gflops = {s.id: 1.0 + 0.5 * s.num_blocks()[0] + 2.0 * s.num_blocks()[1] for s in SPACE}
    return FlopsTable(gflops, {s.id: 3 * g for s, g in zip(SPACE, gflops.values())}, (32, 32))


def metric(sid: int) -> dict:
    return {"acc": 50.0 + 2 * table().gflops[sid] - sid % 3, "loss": 1.0 / (1 + sid)}


def run_evaluator(output_dir: str, ids, seconds_per_stitch: float = 0.0, started_log: str = None,
                  barrier=None) -> None:
    """One evaluator job: logs each stitch it starts, then evaluates it for ``seconds_per_stitch``."""
    def evaluate(sid):
        if started_log:
            with open(started_log, "a") as f:
                f.write(f"{sid}\n")
        time.sleep(seconds_per_stitch)
        return metric(sid)

    if barrier is not None:
        barrier.wait()  # both evaluators start together, as two jobs launched at once
    evaluate_stitches(evaluate, ids, SPACE, table(), output_dir, "acc", run_key="model", progress=False)


def wait_for(condition, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for the evaluator"
        time.sleep(0.02)


def saved_ids(output_dir) -> list:
    path = os.path.join(output_dir, RESULTS_FILE)
    if not os.path.isfile(path):
        return []
    return sorted(int(k) for k in json.load(open(path))["stitches"])


def test_two_concurrent_evaluators_with_disjoint_stitches_keep_both(tmp_path):
    barrier = SPAWN.Barrier(2)
    halves = ([0, 2, 4, 6, 8, 10, 12], [1, 3, 5, 7, 9, 11, 13])
    jobs = [SPAWN.Process(target=run_evaluator, args=(str(tmp_path), ids, 0.1, None, barrier)) for ids in halves]
    for job in jobs:
        job.start()
    for job in jobs:
        job.join(120)
    assert [job.exitcode for job in jobs] == [0, 0]
    record = json.loads((tmp_path / RESULTS_FILE).read_text())
    assert sorted(map(int, record["stitches"])) == SPACE.ids  # the union: neither evaluator lost the other's rows
    assert all(record["stitches"][str(s)]["acc"] == metric(s)["acc"] for s in SPACE.ids)
    csv_ids = [line.split(",")[0] for line in (tmp_path / "stitch_report.csv").read_text().splitlines()[1:]]
    assert sorted(map(int, csv_ids)) == SPACE.ids  # the report of the last one to finish holds the union


def test_evaluator_killed_between_stitches_resumes_without_losing_or_redoing(tmp_path):
    started = tmp_path / "started.log"
    job = SPAWN.Process(target=run_evaluator, args=(str(tmp_path), SPACE.ids, 0.2, str(started)))
    job.start()
    wait_for(lambda: len(saved_ids(tmp_path)) >= 4)
    os.kill(job.pid, signal.SIGKILL)
    job.join()
    assert job.exitcode == -signal.SIGKILL
    saved = saved_ids(tmp_path)
    begun = [int(s) for s in started.read_text().split()]
    assert set(saved) <= set(begun) and len(saved) < len(SPACE)

    resumed = []
    record = evaluate_stitches(lambda s: resumed.append(s) or metric(s), SPACE.ids, SPACE, table(), str(tmp_path),
                               "acc", run_key="model", progress=False)
    assert sorted(resumed) == sorted(set(SPACE.ids) - set(saved))  # nothing saved is redone
    assert set(resumed) & set(begun) <= {begun[-1]}  # at most the stitch in flight at the kill is evaluated again
    fresh = evaluate_stitches(metric, SPACE.ids, SPACE, table(), str(tmp_path / "fresh"), "acc", run_key="model",
                              progress=False)
    assert record["stitches"] == fresh["stitches"]


def evaluator_with_slow_results_writes(output_dir: str) -> None:
    """An evaluator whose results writes take seconds after their first bytes: a kill lands inside one."""
    import snnet_core.evaluation.report as report
    from snnet_core.io.atomic_io import write_atomic

    def slow_write(path, data):
        def write(f):
            text = json.dumps(data)
            f.write(text[: len(text) // 2])
            f.flush()
            time.sleep(0.5 if len(data["stitches"]) < 3 else 30)
            f.write(text[len(text) // 2:])
        write_atomic(path, write)

    report.write_json_atomic = slow_write
    run_evaluator(output_dir, SPACE.ids)


def test_evaluator_killed_during_a_results_write_keeps_the_previous_file(tmp_path):
    path = str(tmp_path / RESULTS_FILE)
    job = SPAWN.Process(target=evaluator_with_slow_results_writes, args=(str(tmp_path),))
    job.start()
    wait_for(lambda: len(saved_ids(tmp_path)) == 2 and temporaries_of(path))  # inside the write of stitch 2
    os.kill(job.pid, signal.SIGKILL)
    job.join()
    (stale,) = temporaries_of(path)
    assert saved_ids(tmp_path) == [0, 1]  # the previous, complete results file

    resumed = []
    record = evaluate_stitches(lambda s: resumed.append(s) or metric(s), SPACE.ids, SPACE, table(), str(tmp_path),
                               "acc", run_key="model", progress=False)
    assert resumed == SPACE.ids[2:] and sorted(map(int, record["stitches"])) == SPACE.ids
    assert temporaries_of(path) == [] and not os.path.exists(stale)  # the killed write's temporary is cleaned


def writes_under_a_file_size_limit(output_dir: str, limit: int, connection) -> None:
    """Hit a file-size limit (as a full disk would stop a write) in each engine write; report each error."""
    from tests.conftest import tiny_snnet

    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
    errors = {}
    attempts = {
        "results": lambda: evaluate_stitches(metric, [13], SPACE, table(), output_dir, "acc", run_key="model",
                                             progress=False),
        "flops cache": lambda: build_flops_table(tiny_snnet(), (32, 32), cache_dir=output_dir),
        "checkpoint": lambda: save_snnet(os.path.join(output_dir, "snnet.pth"), tiny_snnet(seed=1)),
    }
    for name, attempt in attempts.items():
        try:
            attempt()
        except Exception as exc:  # noqa: BLE001 - reported to the test
            errors[name] = f"{type(exc).__name__}: {exc}"
    connection.send(errors)


def test_a_full_disk_keeps_every_previous_file_and_says_what_failed(tmp_path):
    from tests.conftest import tiny_snnet

    evaluate_stitches(metric, SPACE.ids[:13], SPACE, table(), str(tmp_path), "acc", run_key="model", progress=False)
    build_flops_table(tiny_snnet(), (32, 32), cache_dir=str(tmp_path))
    (cache,) = tmp_path.glob("flops_*.json")
    cache.write_text(cache.read_text().replace('"version": 2', '"version": 1'))  # stale: must be recounted
    save_snnet(str(tmp_path / "snnet.pth"), tiny_snnet())
    names = {"results": RESULTS_FILE, "flops cache": cache.name, "checkpoint": "snnet.pth"}
    before = {name: (tmp_path / file).read_bytes() for name, file in names.items()}
    limit = min(len(b) for b in before.values()) // 2  # every one of the new files is larger

    receiver, sender = SPAWN.Pipe(duplex=False)
    job = SPAWN.Process(target=writes_under_a_file_size_limit, args=(str(tmp_path), limit, sender))
    job.start()
    assert receiver.poll(120), "the child process did not report"
    errors = receiver.recv()
    job.join(60)
    assert job.exitcode == 0
    assert set(errors) == set(names)
    for name, file in names.items():
        path = str(tmp_path / file)
        assert errors[name].startswith(f"AtomicWriteError: writing {path} failed ("), errors[name]
        assert "File too large" in errors[name] or "unexpected pos" in errors[name], errors[name]
        assert "the previous file is intact" in errors[name] and "ulimit -f" in errors[name]
        assert (tmp_path / file).read_bytes() == before[name], f"the previous {name} file was damaged"
        assert temporaries_of(path) == []


def test_a_directory_or_a_file_in_the_way_is_named_not_blamed_on_the_disk(tmp_path):
    from snnet_core.io.atomic_io import AtomicWriteError, file_lock, write_json_atomic

    (tmp_path / "report").mkdir()
    with pytest.raises(AtomicWriteError, match=rf"{tmp_path / 'report'} is a directory, not a file: move it away"):
        write_json_atomic(str(tmp_path / "report"), {})
    (tmp_path / "out").write_text("mine")
    for attempt in (lambda: write_json_atomic(str(tmp_path / "out" / "sub" / RESULTS_FILE), {}),
                    lambda: file_lock(str(tmp_path / "out" / RESULTS_FILE)).__enter__()):
        with pytest.raises(AtomicWriteError, match=rf"{tmp_path / 'out'} is a file, not a directory") as error:
            attempt()
        assert "ulimit" not in str(error.value) and "df" not in str(error.value)
    assert (tmp_path / "out").read_text() == "mine"


def test_the_engine_imports_no_fcntl():
    """snnet_core's locks are filelock's (flock on POSIX, LockFileEx on Windows): no module of the engine imports
    the POSIX-only fcntl, which would make it unimportable on Windows."""
    import ast

    import snnet_core

    folder = os.path.dirname(snnet_core.__file__)
    importers = []
    for name in sorted(os.listdir(folder)):
        if name.endswith(".py"):
            with open(os.path.join(folder, name)) as f:
                tree = ast.parse(f.read())
            for node in ast.walk(tree):
                modules = ([a.name for a in node.names] if isinstance(node, ast.Import)
                           else [node.module] if isinstance(node, ast.ImportFrom) else [])
                if "fcntl" in modules:
                    importers.append(name)
    assert importers == []
