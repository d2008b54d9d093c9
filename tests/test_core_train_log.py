"""Training-log helpers shared by both projects: loss names per route type, metrics.json trimming and the
TensorBoard event file order on resume."""
import json
import time

import pytest

from snnet_core import StitchSpace
from snnet_core.training.train_log import route_loss_name, training_writers, trim_metrics_log


def test_every_route_type_and_each_anchor_gets_its_own_loss_curve():
    space = StitchSpace(4, 8)
    names = {space[s].kind if space[s].kind != "anchor" else s: route_loss_name(space[s]) for s in space.ids}
    assert names[0] == "route_loss/fast_anchor" and names[1] == "route_loss/slow_anchor"
    assert {names[k] for k in ("FS", "SF", "FSF", "SFS")} == {f"route_loss/{k}" for k in ("FS", "SF", "FSF", "SFS")}
    three = StitchSpace(4, 4, 4)  # SN-Netv1's sliding-window space: one curve per anchor, one for its FS stitches
    assert {route_loss_name(s) for s in three} == {"route_loss/anchor_A0", "route_loss/anchor_A1",
                                                    "route_loss/anchor_A2", "route_loss/FS"}


def write_log(path, iterations, tail=b""):
    path.write_bytes(b"".join(json.dumps({"iteration": i, "loss": 0.5}).encode() + b"\n" for i in iterations) + tail)


def test_trim_drops_lines_at_and_after_the_resume_iteration(tmp_path):
    log = tmp_path / "metrics.json"
    write_log(log, [9, 19, 29, 39])
    assert trim_metrics_log(str(log), 20) == 2
    assert [json.loads(line)["iteration"] for line in log.read_text().splitlines()] == [9, 19]
    assert trim_metrics_log(str(log), 20) == 0 and trim_metrics_log(str(tmp_path / "absent.json"), 0) == 0


def test_trim_drops_a_last_line_cut_by_a_kill_and_refuses_damage_before_it(tmp_path):
    log = tmp_path / "metrics.json"
    write_log(log, [9, 19], tail=b'{"iteration": 29, "lo')
    assert trim_metrics_log(str(log), 100) == 1
    assert log.read_text().count("\n") == 2 and log.read_text().endswith("\n")
    write_log(log, [9], tail=b"garbage\n" + json.dumps({"iteration": 19}).encode() + b"\n")
    with pytest.raises(ValueError, match=r"metrics.json:2 is not a line of a metrics log"):
        trim_metrics_log(str(log), 100)


def test_a_resumed_run_event_file_sorts_after_one_opened_in_the_same_second_by_a_later_process(tmp_path):
    """TensorBoard reads event files in name order; its purge of the interrupted run's steps needs the resumed
    run's file read last, even when the interrupted run's file bears the same second and a larger process id."""
    interrupted = f"events.out.tfevents.{int(time.time()) + 1:010d}.host.999999999.0"  # the next second, to be sure
    (tmp_path / interrupted).write_bytes(b"")
    writers = training_writers(str(tmp_path), max_iter=10, start_iter=5)
    writers[-1].close()
    names = sorted(path.name for path in tmp_path.glob("events.out.tfevents.*"))
    assert len(names) == 2 and names[0] == interrupted


def test_the_console_line_shows_the_loss_of_the_routes_drawn_since_the_previous_line_only(tmp_path):
    import logging

    from detectron2.utils.events import EventStorage, JSONWriter

    from snnet_core.training.train_log import RouteLossPrinter

    lines = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())
    printer_logger = logging.getLogger("detectron2.utils.events")
    printer_logger.addHandler(handler)
    level = printer_logger.level
    printer_logger.setLevel(logging.INFO)
    # SF at every other iteration (loss 1); lines after iterations 19 and 69 (a print window of 50 iterations)
    draws = {2: ("FSF", 7.0), 12: ("FS", 100.0), 25: ("FS", 2.0), 50: ("FS", 4.0), 68: ("FS", 3.0)}
    try:
        json_writer, printer = JSONWriter(str(tmp_path / "metrics.json")), RouteLossPrinter(max_iter=100)
        with EventStorage(0) as storage:
            for it in range(70):
                storage.iter = it
                route, loss = draws.get(it, ("SF", 1.0))
                storage.put_scalars(**{"total_loss": loss, f"route_loss/{route}": loss}, smoothing_hint=False)
                json_writer.write()
                if it in (19, 69):
                    printer.write()
        json_writer.close()
    finally:
        printer_logger.removeHandler(handler)
        printer_logger.setLevel(level)
    first, second = lines
    assert "route_loss/FSF: 7 " in first and "route_loss/FS: 100 " in first and "route_loss/SF: 1 " in first
    assert "route_loss/FSF" not in second  # not drawn since the first line: detectron2's printer repeated its 7
    assert "route_loss/FS: 3 " in second  # the median of its draws at 25, 50, 68; not 100 (12, before the window)
    assert "route_loss/SF: 1 " in second and "total_loss: 1 " in second
    logged = [json.loads(row) for row in (tmp_path / "metrics.json").read_text().splitlines()]
    assert [row["iteration"] for row in logged if "route_loss/FSF" in row] == [2]  # metrics.json: every draw
    assert [row["route_loss/FS"] for row in logged if "route_loss/FS" in row] == [100.0, 2.0, 4.0, 3.0]
