"""``python -m snnet_core.select``: the best stitch under a GFLOPs or latency budget from a per-stitch report,
the frontier around it, ``--json``, and an exit code 2 with a message naming the file and the fix."""
import json
import os
import subprocess
import sys

import pytest
import torch

from snnet_core import FlopsTable, StitchSpace, evaluate_stitches
from snnet_core.evaluation.latency import LATENCY_COLUMN, latency_info, write_latency_info
from snnet_core.select import SelectionError, best_stitch_in_report, main

SPACE = StitchSpace(4, 8)
GFLOPS = {s.id: 1.0 + s.num_blocks()[0] * 0.5 + s.num_blocks()[1] * 2.0 for s in SPACE}
TABLE = FlopsTable(GFLOPS, {s: g * 3 for s, g in GFLOPS.items()}, (32, 32))
NAN_STITCH = 13  # its a1 comes out NaN (stored as null): never chosen


def depth_metrics(sid):
    """a1 grows with FLOPs (with jitter, so the frontier is not every stitch); latency is not monotone in FLOPs."""
    a1 = float("nan") if sid == NAN_STITCH else 0.5 + 0.02 * GFLOPS[sid] - 0.01 * (sid % 3)
    return {"a1": a1, "abs_rel": 0.3 - 0.01 * GFLOPS[sid] + 0.005 * (sid % 2), "loss": sid / 10}


def timed_metrics(sid):
    return {**depth_metrics(sid), LATENCY_COLUMN: 0.2 * GFLOPS[sid] + (sid % 4)}


def write_report(directory, evaluate=timed_metrics, latency=True):
    evaluate_stitches(evaluate, SPACE.ids, SPACE, TABLE, str(directory), "a1", higher_is_better=True, task="depth",
                      run_key="m", progress=False)
    if latency:
        write_latency_info(str(directory), latency_info("Test CPU (1 threads)", 2, (32, 48), False, 3, 7))
    return json.loads((directory / "stitch_results.json").read_text())


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """A timed depth report (read-only for the tests): ``(directory, record)``."""
    directory = tmp_path_factory.mktemp("select") / "out" / "stitch_eval"
    return directory, write_report(directory)


def select(capsys, *argv):
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


def brute_force(record, metric, cost, budget, higher=True):
    """The best finite metric within the budget, ties to the cheaper: independent of the code under test."""
    rows = [r for r in record["stitches"].values()
            if r[metric] is not None and r[cost] is not None and r[cost] <= budget]
    sign = 1 if higher else -1
    return max(rows, key=lambda r: (sign * r[metric], -r[cost]))["id"]


@pytest.mark.parametrize("budget", [3.0, 9.9, 12.0, 15.0, 100.0])
def test_best_stitch_under_a_gflops_budget(report, capsys, budget):
    directory, record = report
    code, out, _ = select(capsys, directory, "--max-gflops", budget, "--json")
    assert code == 0
    chosen = json.loads(out)["chosen"]
    assert chosen["id"] == brute_force(record, "a1", "gflops", budget) and chosen["gflops"] <= budget
    assert chosen["id"] != NAN_STITCH


@pytest.mark.parametrize("budget", [1.0, 3.0, 4.5, 6.0])
def test_best_stitch_under_a_latency_budget(report, capsys, budget):
    directory, record = report
    code, out, _ = select(capsys, directory / "stitch_results.json", "--max-latency-ms", budget, "--json")
    assert code == 0
    result = json.loads(out)
    assert result["chosen"]["id"] == brute_force(record, "a1", LATENCY_COLUMN, budget)
    assert result["cost"] == LATENCY_COLUMN and result["budget"] == budget
    assert result["latency"]["device"] == "Test CPU (1 threads)" and result["latency"]["input_size"] == [32, 48]
    # the latency frontier is not the GFLOPs one: by increasing latency, each better than every cheaper one
    front = result["frontier"]
    assert [r[LATENCY_COLUMN] for r in front] == sorted(r[LATENCY_COLUMN] for r in front)
    assert all(b["a1"] > a["a1"] for a, b in zip(front, front[1:]))
    on_front = {f["id"] for f in front}
    dominated = [r for r in record["stitches"].values() if r["a1"] is not None and r["id"] not in on_front]
    assert dominated and all(any(f[LATENCY_COLUMN] <= r[LATENCY_COLUMN] and f["a1"] >= r["a1"] for f in front)
                             for r in dominated)


def test_the_gflops_and_latency_budgets_choose_differently(report, capsys):
    directory, _ = report
    by_flops = json.loads(select(capsys, directory, "--max-gflops", 12, "--json")[1])["chosen"]["id"]
    by_latency = json.loads(select(capsys, directory, "--max-latency-ms", 3, "--json")[1])["chosen"]["id"]
    assert by_flops != by_latency  # the report's latency is not a rescaled GFLOPs column


def test_lower_is_better_metrics_are_known_or_given(report, capsys):
    directory, record = report
    code, out, _ = select(capsys, directory, "--max-gflops", 10, "--metric", "abs_rel", "--json")
    assert code == 0 and json.loads(out)["higher_is_better"] is False
    assert json.loads(out)["chosen"]["id"] == brute_force(record, "abs_rel", "gflops", 10, higher=False)
    code, _, err = select(capsys, directory, "--metric", "loss")
    assert code == 2 and "'loss'" in err and "--higher-is-better or --lower-is-better" in err
    code, out, _ = select(capsys, directory, "--max-gflops", 10, "--metric", "loss", "--lower-is-better", "--json")
    assert code == 0 and json.loads(out)["chosen"]["id"] == brute_force(record, "loss", "gflops", 10, higher=False)


def test_a_report_with_a_flipped_direction_is_refused_naming_the_metric_and_the_right_one(report, capsys, tmp_path):
    """An edited ``"higher_is_better": false`` for a1 would make select (and --export-stitch best:G, the demos'
    --max-gflops) choose the worst stitch within the budget: refused, naming the file, the metric and the fix."""
    _, record = report
    flipped = tmp_path / "stitch_results.json"
    flipped.write_text(json.dumps(dict(record, higher_is_better=False)))
    code, out, err = select(capsys, flipped, "--max-gflops", 10)
    assert code == 2 and not out
    assert (f"{flipped}: higher_is_better is false for 'a1', but a higher a1 is better (its Pareto frontier and best "
            'stitch would be the worst ones) (the file was edited or is damaged): set "higher_is_better": true in it'
            ) in err
    with pytest.raises(SelectionError, match="but a higher a1 is better"):
        best_stitch_in_report(str(flipped), 10, task="depth")


def test_text_output_shows_the_choice_and_the_frontier_around_it(report, capsys):
    directory, record = report
    full = json.loads(select(capsys, directory, "--max-gflops", 12, "--json")[1])
    chosen, ids = full["chosen"], [r["id"] for r in full["frontier"]]
    code, out, _ = select(capsys, directory, "--max-gflops", 12, "--context", 1)
    assert code == 0
    assert f"stitch {chosen['id']}" in out and chosen["route"] in out and "Test CPU (1 threads)" in out
    assert f"{chosen['a1']:.4g}" in out and f"{chosen[LATENCY_COLUMN]:.4g} ms" in out
    table = out.split("Pareto frontier")[1].splitlines()[2:]
    rows = [line.split() for line in table if line.strip() and not line.startswith("(")]
    marked = [r for r in rows if r[0] == "*"]
    assert len(marked) == 1 and marked[0][1] == str(chosen["id"])
    at = ids.index(chosen["id"])
    shown = [int(r[1]) if r[0] == "*" else int(r[0]) for r in rows]
    assert shown == ids[max(0, at - 1):at + 2] and len(ids) > len(shown)  # a window of the frontier
    assert "not shown; --context N shows more" in out
    _, out, _ = select(capsys, directory, "--max-gflops", 12, "--context", 99)
    assert f"all its {len(ids)} points" in out
    assert len(record["stitches"]) > len(ids)


def test_every_error_exits_2_naming_the_file_and_the_fix(report, tmp_path, capsys):
    report, _ = report
    results = report / "stitch_results.json"
    cheapest = min(GFLOPS, key=GFLOPS.get)

    code, _, err = select(capsys, report, "--max-gflops", 0.5)
    assert code == 2 and str(results) in err
    assert f"cheapest is stitch {cheapest} ({SPACE[cheapest].route}) at {GFLOPS[cheapest]:g} GFLOPs" in err
    assert f"--max-gflops {GFLOPS[cheapest]:g} or more" in err

    code, _, err = select(capsys, report, "--max-latency-ms", 0.01)
    assert code == 2 and "ms" in err and "--max-latency-ms" in err

    code, _, err = select(capsys, report, "--metric", "bbox_ap")
    assert code == 2 and "no metric 'bbox_ap'" in err and "a1, abs_rel, loss" in err and str(results) in err
    code, _, err = select(capsys, report, "--metric", LATENCY_COLUMN)
    assert code == 2 and "cost column" in err and "--max-latency-ms" in err

    code, _, err = select(capsys, report, "--max-gflops", 10, "--max-latency-ms", 3)
    assert code == 2 and "not both" in err

    untimed = tmp_path / "untimed"
    write_report(untimed, depth_metrics, latency=False)
    code, _, err = select(capsys, untimed, "--max-latency-ms", 3)
    assert code == 2 and str(untimed / "stitch_results.json") in err and f"no {LATENCY_COLUMN} column" in err
    assert "--measure-latency" in err and "time_stitches" in err
    assert select(capsys, untimed, "--max-gflops", 10)[0] == 0  # GFLOPs still works on it


def test_paths_that_are_not_a_report_exit_2(report, tmp_path, capsys):
    report, _ = report
    code, _, err = select(capsys, tmp_path / "missing")
    assert code == 2 and "does not exist" in err
    code, _, err = select(capsys, report.parent)  # one level too high: the report below is named
    assert code == 2 and "holds no stitch_results.json" in err and str(report / "stitch_results.json") in err
    code, _, err = select(capsys, report / "stitch_report.csv")
    assert code == 2 and "not JSON" in err and f"beside it is {report / 'stitch_results.json'}" in err
    torch.save({"model": torch.zeros(3)}, tmp_path / "model_final.pth")  # a checkpoint: binary, not text
    code, _, err = select(capsys, tmp_path / "model_final.pth")
    assert code == 2 and str(tmp_path / "model_final.pth") in err and "not a per-stitch results file" in err
    (tmp_path / "stitch_report.json").write_text(json.dumps({"title": "t", "stitches": [{"id": 0}]}))
    code, _, err = select(capsys, tmp_path / "stitch_report.json")
    assert code == 2 and "give the stitch_results.json beside it" in err
    empty = {"run_key": "m", "task": "depth", "primary_metric": "a1", "higher_is_better": True, "stitches": {}}
    (tmp_path / "stitch_results.json").write_text(json.dumps(empty))  # e.g. an evaluation killed at once
    code, _, err = select(capsys, tmp_path)
    assert code == 2 and "no evaluated stitch" in err and "--stitch all" in err


def test_the_engines_log_lines_are_in_detectron2s_format_on_stderr_and_stdout_is_the_choice(report, capsys,
                                                                                              monkeypatch):
    import logging
    import re

    import snnet_core.select as select_module

    real_read_report = select_module.read_report

    def read_report(path):  # a notice for the user from the engine while the command runs
        logging.getLogger("snnet_core.select").warning("a notice")
        return real_read_report(path)

    monkeypatch.setattr(select_module, "read_report", read_report)
    code, out, err = select(capsys, report[0], "--max-gflops", 9.9, "--json")
    assert code == 0 and json.loads(out)["chosen"]["id"] >= 0  # stdout: the choice alone
    err = re.sub(r"\x1b\[[0-9;]*m", "", err)  # detectron2 colours a terminal
    assert re.fullmatch(r"WARNING \[\d\d/\d\d \d\d:\d\d:\d\d snnet_core.select\]: a notice\n", err), err
    assert logging.getLogger("snnet_core").handlers == []  # taken down when the command ends


def test_the_module_exits_2_from_the_command_line(report):
    cmd = [sys.executable, "-m", "snnet_core.select", str(report[0]), "--max-gflops", "0"]
    run = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert run.returncode == 2 and run.stdout == ""
    assert run.stderr.splitlines()[-1].startswith("python -m snnet_core.select: error: no stitch of")


def legend_texts(fig):
    return [t.get_text() for t in fig.axes[0].get_legend().get_texts()]


def test_plot_draws_the_frontier_against_the_budgeted_cost_with_the_choice_marked(report, tmp_path, capsys,
                                                                                  drawn_figures):
    directory, record = report
    code, out, _ = select(capsys, directory, "--max-latency-ms", 3, "--metric", "abs_rel", "--plot",
                          tmp_path / "choice.png")
    best = brute_force(record, "abs_rel", LATENCY_COLUMN, 3, higher=False)
    assert code == 0 and f"stitch {best}" in out
    (fig,) = drawn_figures
    row = record["stitches"][str(best)]
    assert f"selected: stitch {best} ({row['type']}, {row['route']})" in legend_texts(fig)
    ax = fig.axes[0]
    assert ax.get_ylabel() == "absolute relative error (lower is better)" and ax.get_xlabel().startswith("latency")
    assert (tmp_path / "choice.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_an_exported_stitch_gets_the_report_plot_with_it_marked(report, tmp_path, drawn_figures):
    from snnet_core.select import plot_exported_stitch

    directory, record = report
    written = plot_exported_stitch(str(directory), 7, str(tmp_path / "stitch_7"), task="depth")
    assert written == str(tmp_path / "stitch_7" / "stitch_report.png") and os.path.getsize(written) > 0
    (fig,) = drawn_figures
    assert f"selected: stitch 7 ({SPACE[7].kind}, {SPACE[7].route})" in legend_texts(fig)
    assert plot_exported_stitch(str(tmp_path / "no_report"), 7, str(tmp_path / "a")) is None  # nothing to plot
    assert plot_exported_stitch(str(directory), 7, str(tmp_path / "b"), task="detection") is None  # another task's
    assert plot_exported_stitch(str(directory), 99, str(tmp_path / "b"), task="depth") is None  # not in the report
    assert not os.path.exists(tmp_path / "a") and not os.path.exists(tmp_path / "b")
