"""Faults of the depth CLI (projects/snnet_dpt/train.py) on the tiny synthetic config, each in a real child process:
SIGKILL during training, during a checkpoint write and during the per-stitch evaluation (stitch by stitch and in
groups), then a resume; a full disk (RLIMIT_FSIZE) during a checkpoint save. Nothing is lost and the resumed run
ends where an uninterrupted one does."""
import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

import projects.snnet_dpt.train as train_cli
import projects.snnet_dpt.training as training
from snnet_core.io.atomic_io import temporaries_of
from tests import test_dpt_train
from tests.test_dpt_train import NUM_STITCHES, REPORT, cli_args, read_metrics, training_history

data_root = test_dpt_train.data_root  # the module's synthetic NYUv2 fixture

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EPOCHS = ["train.epochs=2"]  # 8 iterations per epoch (16 frames, batch 2)

# a child process runs the CLI after ``hook`` (the fault) is installed
CHILD = """
import io, os, resource, signal, sys
sys.path.insert(0, {repo!r})
import torch
torch.set_num_threads({threads})  # the test process's, so the child's run is the one the test compares it with
import projects.snnet_dpt.evaluation as evaluation
import projects.snnet_dpt.training as training
import projects.snnet_dpt.train as train_cli
from projects.snnet_dpt.loss import SILogLoss
{hook}
train_cli.main({argv!r})
"""

KILL_AT_ITERATION_11 = """
real_forward = SILogLoss.forward
def forward(self, pred, gt, iteration):
    if iteration == 11:  # in the second epoch, after its first checkpoint
        os.kill(os.getpid(), signal.SIGKILL)
    return real_forward(self, pred, gt, iteration)
SILogLoss.forward = forward
"""

KILL_IN_SECOND_CHECKPOINT_WRITE = """
real_save = torch.save
def half_then_killed(obj, f, *args, **kwargs):
    if isinstance(obj, dict) and obj.get("epoch") == 2:  # write half of the second checkpoint, then die
        buffer = io.BytesIO()
        real_save(obj, buffer, *args, **kwargs)
        f.write(buffer.getvalue()[: buffer.tell() // 2])
        f.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    return real_save(obj, f, *args, **kwargs)
torch.save = half_then_killed
"""

KILL_IN_SIXTH_EVALUATION = """
real_evaluate, done = evaluation.{function}, []
def evaluate(*args, **kwargs):
    if len(done) == 5:  # the sixth stitch (per-stitch loop) or the sixth group of stitches (grouped evaluation)
        os.kill(os.getpid(), signal.SIGKILL)
    done.append(1)
    return real_evaluate(*args, **kwargs)
evaluation.{function} = evaluate
"""

DISK_FULL_AT_SECOND_CHECKPOINT = """
real_save_checkpoint = training.save_checkpoint
def save_checkpoint(path, *args):
    if os.path.basename(path) == "model_final.pth":  # the disk fills before the second (1 MiB per file from now on)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
    return real_save_checkpoint(path, *args)
training.save_checkpoint = save_checkpoint
"""


def run_child(hook, argv):
    code = CHILD.format(repo=REPO, threads=torch.get_num_threads(), hook=textwrap.dedent(hook),
                        argv=[str(a) for a in argv])
    env = dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()), HF_HUB_OFFLINE="1", MPLBACKEND="Agg")
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.fixture(scope="module")
def straight(data_root, tmp_path_factory):
    """An uninterrupted 2-epoch run and its report of every stitch."""
    out = tmp_path_factory.mktemp("straight")
    train_cli.main(cli_args(data_root, out, "--stitch", "all", opts=EPOCHS))
    with open(out / REPORT / "stitch_results.json") as f:
        report = json.load(f)
    return {"dir": out, "checkpoint": out / "model_final.pth", "history": training_history(out), "report": report}


def assert_same_checkpoint(path_a, path_b):
    a, b = (torch.load(p, weights_only=True) for p in (path_a, path_b))
    assert a["epoch"] == b["epoch"] == 2 and a["iteration"] == b["iteration"] == 16
    for part in ("model", "head"):
        assert a[part].keys() == b[part].keys()
        for key, value in a[part].items():
            assert torch.equal(value, b[part][key]), key
    for key, value in a["optimizer"]["state"].items():
        assert torch.equal(value["exp_avg_sq"], b["optimizer"]["state"][key]["exp_avg_sq"])


def test_sigkill_during_training_then_resume_ends_as_the_uninterrupted_run(data_root, straight, tmp_path):
    out = tmp_path / "killed"
    killed = run_child(KILL_AT_ITERATION_11, cli_args(data_root, out, "--stitch", "none", opts=EPOCHS))
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert (out / "last_checkpoint").read_text() == "model_0000007.pth"
    assert training.read_checkpoint_header(str(out / "model_0000007.pth"))["epoch"] == 1
    # the killed epoch's first steps were logged
    assert [r["iteration"] for r in read_metrics(out) if "total_loss" in r][-3:] == [8, 9, 10]
    with pytest.raises(FileExistsError, match="--resume"):  # a plain rerun would overwrite the killed run
        train_cli.main(cli_args(data_root, out, "--stitch", "none", opts=EPOCHS))
    train_cli.main(cli_args(data_root, out, "--resume", "--stitch", "none", opts=EPOCHS))
    assert_same_checkpoint(straight["checkpoint"], out / "model_final.pth")
    # one history: the killed epoch's lines were dropped from metrics.json, then logged again as the first time
    assert training_history(out) == straight["history"]
    # TensorBoard too: the killed run's events after the checkpoint are purged (two event files, one history)
    assert len(list(out.glob("events.out.tfevents.*"))) == 2
    assert tensorboard_scalars(out, "total_loss") == tensorboard_scalars(straight["dir"], "total_loss")


def tensorboard_scalars(output_dir, tag):
    """``[(step, value), ...]`` of ``tag`` as TensorBoard shows it (every event file of the directory, purges
    applied)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(output_dir), size_guidance={"scalars": 0}).Reload()
    return [(e.step, e.value) for e in events.Scalars(tag)]


def test_sigkill_during_a_checkpoint_write_then_resume_from_the_previous_one(data_root, straight, tmp_path):
    out = tmp_path / "killed"
    killed = run_child(KILL_IN_SECOND_CHECKPOINT_WRITE, cli_args(data_root, out, "--stitch", "none", opts=EPOCHS))
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    final = str(out / "model_final.pth")
    assert len(temporaries_of(final)) == 1 and not os.path.exists(final)  # the half-written second checkpoint
    assert (out / "last_checkpoint").read_text() == "model_0000007.pth"  # the first one, named and intact
    assert training.read_checkpoint_header(str(out / "model_0000007.pth"))["epoch"] == 1
    train_cli.main(cli_args(data_root, out, "--resume", "--stitch", "none", opts=EPOCHS))
    assert temporaries_of(final) == []  # removed at the start of the resumed run
    assert_same_checkpoint(straight["checkpoint"], final)
    assert training_history(out) == straight["history"]


@pytest.mark.parametrize("function, setting, finished", [
    ("evaluate", "test.share_prefixes=false", 5),  # 5 stitches written, the 6th lost
    ("evaluate_group", "test.stitch_group_size=2", 10),  # groups of 2: 5 groups written, the 6th lost
])
def test_sigkill_during_the_per_stitch_evaluation_then_resume_loses_no_stitch(data_root, straight, tmp_path, function,
                                                                              setting, finished):
    eval_dir = tmp_path / "eval"
    argv = cli_args(data_root, tmp_path / "out", "--eval-only", "--stitch", "all", "--report-dir", eval_dir,
                    opts=[f"train.init_checkpoint={straight['checkpoint']}", setting])
    killed = run_child(KILL_IN_SIXTH_EVALUATION.format(function=function), argv)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    with open(eval_dir / "stitch_results.json") as f:
        partial = json.load(f)
    assert len(partial["stitches"]) == finished and partial["run_key"] == straight["report"]["run_key"]
    record = train_cli.main(argv)["report"]
    assert len(record["stitches"]) == NUM_STITCHES
    for key, row in partial["stitches"].items():
        assert record["stitches"][key] == row  # kept, not redone
    # every stitch has the metrics of the uninterrupted evaluation of the same checkpoint
    assert json.loads(json.dumps(record["stitches"])) == straight["report"]["stitches"]


def test_full_disk_during_a_checkpoint_save_names_the_file_and_keeps_the_previous_one(data_root, tmp_path):
    out = tmp_path / "full"
    failed = run_child(DISK_FULL_AT_SECOND_CHECKPOINT, cli_args(data_root, out, "--stitch", "none", opts=EPOCHS))
    assert failed.returncode == 1, failed.stderr[-2000:]
    final = str(out / "model_final.pth")
    last_line = failed.stderr.strip().splitlines()[-1]
    assert final in last_line and "no file was written" in last_line and "free space" in last_line, last_line
    assert (out / "last_checkpoint").read_text() == "model_0000007.pth"  # the previous checkpoint stays in use
    assert training.read_checkpoint_header(str(out / "model_0000007.pth"))["epoch"] == 1
    assert temporaries_of(final) == [] and not os.path.exists(final)
    train_cli.main(cli_args(data_root, out, "--resume", "--stitch", "none", opts=EPOCHS))  # space again: continue
    assert training.read_checkpoint_header(final)["epoch"] == 2


def test_two_concurrent_evaluations_with_disjoint_stitches_keep_both_sides(data_root, straight, tmp_path):
    eval_dir = tmp_path / "eval"
    env = dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()), HF_HUB_OFFLINE="1", MPLBACKEND="Agg")
    children = [subprocess.Popen(
        [sys.executable, os.path.join(REPO, "projects", "snnet_dpt", "train.py"),
         *cli_args(data_root, tmp_path / f"out{k}", "--eval-only", "--stitch", stitches, "--report-dir", eval_dir,
                   opts=[f"train.init_checkpoint={straight['checkpoint']}"])],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for k, stitches in enumerate(("0,2,4", "1,3,5"))]
    for child in children:
        output = child.communicate(timeout=300)[0]
        assert child.returncode == 0, output[-2000:]
    with open(eval_dir / "stitch_results.json") as f:
        merged = json.load(f)["stitches"]
    # both sides, each as the uninterrupted evaluation of every stitch computed it
    assert merged == {k: straight["report"]["stitches"][k] for k in map(str, range(6))}
