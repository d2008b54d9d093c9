"""snnet_core.cli: user errors as one line (exit 2) and bugs with their traceback, --debug / SNNET_DEBUG, the
resource check and free port before detectron2's launch, user errors of launched processes relayed as one line,
and package imports that cost a command nothing it does not use."""
import json
import os
import pickle
import socket
import subprocess
import sys
import textwrap

import pytest
import torch

from snnet_core import cli
from snnet_core.cli import check_process_count, error_message, is_user_error, resolve_dist_url
from snnet_core.io.safe_pickle import UnsafePickleError, load_safe_pickle

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEAVY = ("torch", "timm", "fvcore", "detectron2", "matplotlib")


def run_python(*argv, env=None, timeout=300):
    environ = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", **(env or {}))
    environ.pop(cli.DEBUG_ENV, None) if not env or cli.DEBUG_ENV not in env else None
    return subprocess.run([sys.executable, *map(str, argv)], cwd=REPO, env=environ, capture_output=True, text=True,
                          timeout=timeout)


def caught(fn, *args):
    try:
        fn(*args)
    except Exception as exc:  # noqa: BLE001 - the test classifies it
        return exc
    raise AssertionError(f"{fn.__name__} raised nothing")


def project_function(source):
    """``f`` of ``source``, compiled as code of snnet_core (its frames name a file there)."""
    namespace = {}
    exec(compile(source, os.path.join(REPO, "snnet_core", "_example.py"), "exec"), namespace)
    return namespace["f"]


def test_which_exceptions_are_user_errors(tmp_path):
    project_value_error = caught(check_process_count, 0, "cpu", "train.device")  # raised in snnet_core
    assert is_user_error(project_value_error)
    on_purpose = project_function("def f():\n    raise RuntimeError('checkpoint x.pth is corrupt: use another')\n")
    assert is_user_error(caught(on_purpose))  # a refusal raised by a raise statement of the repository
    for bug in ("def f(d={}):\n    return d['key']\n",  # KeyError of a lookup, not a refusal
                "def f():\n    return int('x')\n",
                "import torch\ndef f():\n    return torch.zeros(2) @ torch.zeros(3)\n",
                "def f():\n    raise TypeError('bug')\n"):
        assert not is_user_error(caught(project_function(bug))), bug
    library_value_error = caught(json.loads, "{")  # a ValueError raised inside a library: a bug of its caller
    assert isinstance(library_value_error, ValueError) and not is_user_error(library_value_error)
    assert not is_user_error(caught(lambda: None + 1))  # TypeError
    assert not is_user_error(caught(lambda: torch.zeros(2) @ torch.zeros(3)))  # RuntimeError deep in torch
    assert is_user_error(caught(open, os.path.join(REPO, "no_such_file.txt")))  # file errors, wherever raised
    assert is_user_error(cli.ReportedError("relayed"))
    weights = tmp_path / "weights.pkl"
    weights.write_bytes(pickle.dumps(os.getcwd))  # names a callable
    unsafe = caught(load_safe_pickle, str(weights))
    assert isinstance(unsafe, UnsafePickleError) and is_user_error(unsafe)
    assert error_message(KeyError("override 'x': no key 'x'")) == "override 'x': no key 'x'"  # no repr quotes


def test_processes_beyond_the_visible_gpus_are_refused_with_the_fix():
    with pytest.raises(ValueError, match=r"4 GPUs asked, 0 visible: use --num-gpus 1 on CPU, or pass "
                                         r"train\.device=cpu to start 4 CPU processes"):
        check_process_count(4, "auto", "train.device", visible=0)
    with pytest.raises(ValueError, match="4 GPUs asked, 2 visible: use --num-gpus 2"):
        check_process_count(4, "cuda", "train.device", visible=2)
    with pytest.raises(ValueError, match="starts GPU \\(NCCL\\) processes .* train.device=cpu"):
        check_process_count(2, "cpu", "train.device", visible=2)
    check_process_count(2, "cpu", "train.device", visible=0)  # CPU (gloo) processes, as asked
    check_process_count(2, "cuda", "train.device", visible=2)
    check_process_count(1, "cuda", "train.device", visible=0)  # one process: the run's own device check


def test_a_taken_default_port_is_replaced_and_an_explicit_url_kept(capsys):
    from detectron2.engine import default_argument_parser

    default = default_argument_parser().get_default("dist_url")
    port = int(default.rsplit(":", 1)[1])
    assert resolve_dist_url("tcp://10.0.0.1:1234", 1) == "tcp://10.0.0.1:1234"
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as torch's store: TIME_WAIT is no hindrance
        if cli.port_is_free(port):  # else another job holds it already, as in the report
            holder.bind(("127.0.0.1", port))
            holder.listen()
        url = resolve_dist_url(None, 1)
    assert url != default and url.startswith("tcp://127.0.0.1:")
    assert "is taken" in capsys.readouterr().err
    assert resolve_dist_url(None, 2) == default  # the machines of a multi-machine job must agree on the URL


def test_select_error_is_one_line_without_runtime_warning_and_debug_shows_the_traceback(tmp_path):
    missing = tmp_path / "no_report"
    proc = run_python("-W", "error::RuntimeWarning", "-m", "snnet_core.select", missing)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines() == [f"python -m snnet_core.select: error: {missing} does not exist: give a "
                                        "per-stitch report directory or the stitch_results.json in it (written by "
                                        "--eval-only --stitch ...)"]
    for debug in (["--debug"], []):
        proc = run_python("-m", "snnet_core.select", missing, *debug, env={} if debug else {cli.DEBUG_ENV: "1"})
        assert proc.returncode == 1 and "Traceback" in proc.stderr and "SelectionError" in proc.stderr


def test_a_bug_keeps_its_traceback(tmp_path):
    script = tmp_path / "buggy.py"
    script.write_text("from snnet_core.cli import run_command\n\n"
                      "def main():\n    return None + 1\n\nrun_command(main)\n")
    proc = run_python(script)
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "TypeError" in proc.stderr


def test_importing_the_package_or_a_core_command_help_loads_no_heavy_module():
    code = ("import sys, snnet_core; print(sorted(m for m in {heavy} if m in sys.modules)); "
            "from snnet_core import StitchSpace, best_under_budget; print(sorted(m for m in {heavy} if m in sys.modules)); "
            "import snnet_core.select; print(sorted(m for m in {heavy} if m in sys.modules))")
    proc = run_python("-c", code.format(heavy=HEAVY))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["[]", "[]", "[]"]  # select reads reports without torch, timm or fvcore
    for module in ("snnet_core.stitch_table", "snnet_core.select"):  # select sets its logging up after parsing
        proc = run_python("-W", "error::RuntimeWarning", "-X", "importtime", "-m", module, "--help")
        assert proc.returncode == 0 and "--debug" in proc.stdout, proc.stderr[-2000:]
        imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if "|" in line}
        assert not imported & set(HEAVY), (module, sorted(imported & set(HEAVY)))


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU (gloo) processes: the machine must have no visible GPU")
def test_user_error_of_launched_processes_is_one_line_from_the_main_process(tmp_path):
    script = tmp_path / "launched.py"
    script.write_text(textwrap.dedent("""
        import argparse
        from snnet_core.cli import check_process_count, launch_command, run_command

        def work(args):
            check_process_count(0, "cpu", "train.device")  # a user error of this repository, on every rank

        if __name__ == "__main__":
            args = argparse.Namespace(num_gpus=2, num_machines=1, machine_rank=0, dist_url="auto")
            run_command(lambda: launch_command(work, args, "cpu", "train.device"), "launched.py")
    """))
    proc = run_python(script)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.splitlines() == ["launched.py: error: --num-gpus 0: give the number of processes per "
                                        "machine, >= 1"]


def test_make_demo_never_replaces_a_previous_demo_unasked(tmp_path):
    """``make demo`` writes to ``DEMO_DIR`` (default output/demo) and refuses, before running anything, to reuse
    a folder that holds a demo unless ``DEMO_OVERWRITE=1`` (then each training and each demo passes --overwrite)."""
    previous = tmp_path / "depth" / "log.txt"
    previous.parent.mkdir()
    previous.write_text("a previous demo\n")
    make = ["make", "-s", "-o", "install", "demo", f"DEMO_DIR={tmp_path}", "PY=echo"]  # PY=echo: print, run nothing
    proc = subprocess.run(make, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stdout == "" and previous.exists()
    assert (f"make demo: {tmp_path / 'depth'} holds a previous demo: rerun with 'make demo DEMO_OVERWRITE=1' to "
            "replace it") in proc.stderr
    proc = subprocess.run(make + ["DEMO_OVERWRITE=1"], cwd=REPO, capture_output=True, text=True, timeout=60)
    trainings = [line for line in proc.stdout.splitlines() if "train.py" in line or "train_net.py" in line]
    assert [("--overwrite" in line, line.split("train.output_dir=")[-1].split()[0]) for line in trainings] == [
        (True, str(tmp_path / "depth")), (True, str(tmp_path / "classification")),
        (True, str(tmp_path / "classification")), (True, str(tmp_path / "detection")),
        (False, str(tmp_path / "detection")), (True, str(tmp_path / "segmentation")),
        (False, str(tmp_path / "segmentation"))]
    # the demos that write pictures refuse earlier outputs unasked (classification's prints its top-5)
    demos = [line for line in proc.stdout.splitlines() if "demo.py" in line and "snnet_cls" not in line]
    assert len(demos) == 3 and all("--overwrite" in line for line in demos), demos
    assert previous.exists()  # the CLIs' --overwrite replaces the run, make deletes nothing
    previous.unlink()  # a previous segmentation demo alone is refused too
    (tmp_path / "segmentation").mkdir()
    (tmp_path / "segmentation" / "log.txt").write_text("a previous demo\n")
    proc = subprocess.run(make, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stdout == ""
    assert f"make demo: {tmp_path / 'segmentation'} holds a previous demo" in proc.stderr
