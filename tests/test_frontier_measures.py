"""The frontier measures (snnet_core.evaluation.frontier_measures) and benchmarks/frontier_measures.py, on a
hand-made table whose answers are worked out by hand below."""
import json
import pathlib
import re

import pytest

from snnet_core.evaluation.frontier_measures import FrontierMeasures, frontier_measures, summarise
from snnet_core.evaluation.report import RESULTS_FILE
from tests.conftest import load_benchmark

fm = load_benchmark("frontier_measures")

# anchors: small id 0 (cost 1, acc 60), large id 1 (cost 6, acc 80); the line is 60 + 4 (cost - 1); bins of width 1:
# [1,2) [2,3) [3,4) [4,5) [5,6]
COST = {0: 1.0, 1: 6.0, 2: 1.5, 3: 2.0, 4: 2.5, 5: 4.5, 6: 6.0, 7: 7.0, 8: 3.5}
ACC = {0: 60.0, 1: 80.0,
       2: 58.0,  # below the small anchor; bin 0, 4 below the line (62)
       3: 66.0,  # between; bin 1 (left-closed), 2 above the line (64); on the frontier
       4: 65.0,  # between; bin 1 but worse than 3
       5: 80.0,  # between (inclusive, equals the large anchor); bin 3, 6 above the line (74); on the frontier,
                 # where it dominates the large anchor (cheaper, as accurate)
       6: 79.0,  # between; bin 4 (the last bin is closed), 1 below the line (80)
       7: 85.0,  # costs more than the large anchor: in no bin; on the frontier, 1 above the line (84)
       8: None}  # no finite accuracy: left out everywhere, so bin 2 [3,4) is empty
EXPECTED = dict(share_between=4 / 6, below_small=1, frontier_points=3, frontier_above_line=3,
                bin_gap=(-4.0, 2.0, None, 6.0, -1.0), stitches=6, small=60.0, large=80.0, small_cost=1.0,
                large_cost=6.0)


def _check(measures: FrontierMeasures, expected=EXPECTED) -> None:
    got = measures.as_dict()
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        if key == "bin_gap":
            assert [g is None for g in got[key]] == [v is None for v in value]
            assert [g for g in got[key] if g is not None] == pytest.approx([v for v in value if v is not None])
        else:
            assert got[key] == pytest.approx(value), key


def test_measures_on_a_hand_made_table():
    _check(frontier_measures(COST, ACC, small=0, large=1))


def test_lower_is_better_metric_mirrors_the_measures():
    error = {i: None if a is None else -a for i, a in ACC.items()}  # an error metric: the same table upside down
    _check(frontier_measures(COST, error, 0, 1, higher_is_better=False),
           dict(EXPECTED, small=-60.0, large=-80.0))


def test_missing_anchor_and_reversed_anchors_are_refused():
    with pytest.raises(ValueError, match="large anchor .stitch 9"):
        frontier_measures(COST, ACC, 0, 9)
    with pytest.raises(ValueError, match=r"pass the anchors as \(small, large\)"):
        frontier_measures(COST, ACC, 1, 0)


def test_summarise_over_runs():
    a = frontier_measures(COST, ACC, 0, 1)
    b = frontier_measures(COST, {**ACC, 8: 70.0}, 0, 1)  # stitch 8 fills bin 2 (on the line) and the frontier
    s = summarise([a, b])
    assert s["share_between"] == pytest.approx(((4 / 6 + 5 / 7) / 2, (5 / 7 - 4 / 6) / 2))
    assert s["frontier_points"] == pytest.approx((3.5, 0.5)) and s["frontier_above_line"] == pytest.approx((3.0, 0.0))
    assert s["bin_gap[2]"] == pytest.approx((0.0, 0.0))  # only b has a stitch in bin 2
    assert s["bin_gap[0]"] == pytest.approx((-4.0, 0.0))


def _authors_lines(path: pathlib.Path) -> None:
    path.write_text("".join(json.dumps({"loss": 1.0, "acc1": a, "acc5": 99.0, "cfg_id": i, "flops": COST[i] * 1e9})
                            + "\n" for i, a in ACC.items() if a is not None))


def _results_file(folder: pathlib.Path, indent=None) -> pathlib.Path:
    kinds = {0: ("anchor", "S[0:4]"), 1: ("anchor", "L[0:8]")}
    rows = {str(i): {"id": i, "type": kinds.get(i, ("FS", f"S[0:1] -> L[{i}:8]"))[0],
                     "route": kinds.get(i, ("FS", f"S[0:1] -> L[{i}:8]"))[1], "gflops": COST[i], "params_m": 1.0,
                     "top1": a} for i, a in ACC.items()}
    folder.mkdir()
    path = folder / RESULTS_FILE
    path.write_text(json.dumps({"run_key": "k", "task": "classification", "primary_metric": "top1",
                                "higher_is_better": True, "stitches": rows}, indent=indent))
    return path


def test_script_reads_both_formats_to_the_same_measures(tmp_path, capsys):
    authors = tmp_path / "stitches_res.txt"
    _authors_lines(authors)
    results = _results_file(tmp_path / "report", indent=1)
    for source in (authors, results, results.parent):
        record = fm.main([str(source), "--json"])
        printed = json.loads(capsys.readouterr().out)
        assert printed == json.loads(json.dumps(record))
        _check(FrontierMeasures(**{k: tuple(v) if k == "bin_gap" else v for k, v in printed.items()
                                   if k in EXPECTED}),
               dict(EXPECTED, small_cost=printed["small_cost"], large_cost=printed["large_cost"]))
    assert fm.read_table(str(authors)).cost_unit == "FLOPs" and fm.read_table(str(results)).metric_name == "top1"
    compact = _results_file(tmp_path / "compact")  # a results file on one line is not the authors' format
    assert fm.read_table(str(compact)).format == "snnet_core"


def test_script_text_output_and_output_file(tmp_path, capsys):
    authors = tmp_path / "stitches_res.txt"
    _authors_lines(authors)
    out = tmp_path / "measures.json"
    fm.main([str(authors), "--output", str(out)])
    text = capsys.readouterr().out
    assert "share_between        0.667" in text and "bin_gap              -4.000, +2.000, none, +6.000, -1.000" in text
    stored = json.loads(out.read_text())
    assert stored["command"].startswith("python benchmarks/frontier_measures.py ") and stored["frontier_points"] == 3
    with pytest.raises(SystemExit):
        fm.main([str(authors), "--output", str(out)])
    assert "pass --overwrite" in capsys.readouterr().err


@pytest.mark.parametrize("content, message", [
    ('{"cfg_id": 0, "acc1": 1, "flops": 2}\nnot json\n', "line 2: not a row of the authors' table"),
    ('{"cfg_id": 0, "acc1": 1, "flops": 2}\n', r"no row with cfg_id \[1\]"),
    ('{"cfg_id": 0, "acc1": 1, "flops": 2}\n{"cfg_id": 0, "acc1": 1, "flops": 2}\n', "cfg_id 0 appears a second"),
])
def test_script_names_a_bad_authors_table(tmp_path, capsys, content, message):
    bad = tmp_path / "bad.txt"
    bad.write_text(content)
    with pytest.raises(SystemExit) as exc:
        fm.main([str(bad)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert str(bad) in err and re.search(message, err)


def test_script_refuses_results_without_an_anchor(tmp_path, capsys):
    path = _results_file(tmp_path / "report")
    record = json.loads(path.read_text())
    del record["stitches"]["1"]
    path.write_text(json.dumps(record))
    with pytest.raises(SystemExit):
        fm.main([str(path.parent)])
    assert "lacks the row of the large anchor" in capsys.readouterr().err
