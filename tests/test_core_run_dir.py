"""The shared output-directory guard: a run is continued (--resume) or replaced (--overwrite), never mixed into;
it is held by one training run (or by evaluations side by side), and a killed holder does not block the next."""
import json
import os

import pytest

from snnet_core.io.run_dir import check_output_dir, clear_run, previous_run


def make_run(out):
    for name in ("last_checkpoint", "model_0000009.pth", "metrics.json", "config.yaml", "log.txt",
                 "events.out.tfevents.1.host", "stitch_schedule_from_0.json", "stitch_report_val/stitch_results.json",
                 "stitch_5/model_final.pth", "flops_cache/table.json"):
        path = out / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")


def test_an_empty_or_failed_start_directory_is_free(tmp_path):
    assert check_output_dir(str(tmp_path / "absent"), resume=False, overwrite=False) == []
    (tmp_path / "config.yaml").write_text("x")  # left by a start that failed its checks
    (tmp_path / "log.txt").write_text("x")
    assert previous_run(str(tmp_path)) == [] and check_output_dir(str(tmp_path), False, False) == []


def test_a_run_is_refused_unless_resumed_or_overwritten(tmp_path):
    make_run(tmp_path)
    with pytest.raises(FileExistsError, match=r"already holds a training run \(last_checkpoint, metrics.json, "
                                              r"model_0000009.pth, stitch_report_val/stitch_results.json\): pass "
                                              r"--resume .* --overwrite"):
        check_output_dir(str(tmp_path), resume=False, overwrite=False)
    assert check_output_dir(str(tmp_path), resume=True, overwrite=False) == []
    with pytest.raises(ValueError, match="give one"):
        check_output_dir(str(tmp_path), resume=True, overwrite=True)


def test_overwrite_deletes_the_run_and_keeps_the_flops_cache(tmp_path):
    make_run(tmp_path)
    (tmp_path / "notes.md").write_text("mine")
    with open(tmp_path / "log.txt", "a") as log:  # the stream detectron2 keeps open for the process's next run
        clear_run(check_output_dir(str(tmp_path), resume=False, overwrite=True))
        left = sorted(os.path.relpath(os.path.join(d, f), tmp_path) for d, _, fs in os.walk(tmp_path) for f in fs)
        assert left == ["flops_cache/table.json", "log.txt", "notes.md"]
        assert check_output_dir(str(tmp_path), resume=False, overwrite=False) == []
        log.write("the next run\n")
    assert (tmp_path / "log.txt").read_text() == "the next run\n"  # emptied in place, so still the file logged to


def test_last_checkpoint_names_only_a_checkpoint_of_its_directory(tmp_path):
    from snnet_core.io.run_dir import last_checkpoint, tag_last_checkpoint

    with pytest.raises(FileNotFoundError, match="holds no checkpoint"):
        last_checkpoint(str(tmp_path))
    (tmp_path / "model_0000009.pth").write_bytes(b"x")
    tag_last_checkpoint(str(tmp_path), str(tmp_path / "model_0000009.pth"))
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000009.pth"
    assert last_checkpoint(str(tmp_path)) == str(tmp_path / "model_0000009.pth")
    for name, error in (("../elsewhere.pth", ValueError), (".hidden.pth", ValueError), ("notes.txt", ValueError),
                        ("model_final.pth", FileNotFoundError)):
        (tmp_path / "last_checkpoint").write_text(name)
        with pytest.raises(error, match=r"last_checkpoint names"):
            last_checkpoint(str(tmp_path))


def test_checkpoint_names_are_detectron2s():
    from snnet_core.io.run_dir import checkpoint_name

    assert checkpoint_name(7) == "model_0000007.pth" and checkpoint_name(1234567) == "model_1234567.pth"
    assert checkpoint_name(31, final=True) == "model_final.pth"


def test_pruning_keeps_the_newest_periodic_checkpoints_of_the_directory_the_final_and_the_tagged_one(tmp_path):
    from snnet_core.io.run_dir import prune_checkpoints, tag_last_checkpoint

    def names():
        return sorted(os.listdir(tmp_path))

    # left by an interrupted run and by this one alike: the directory decides, not who wrote them
    for name in ("model_0000007.pth", "model_0000015.pth", "model_0000023.pth", "model_final.pth",
                 "model_best.pth", "model_0000031.pth.3f2a.tmp", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    tag_last_checkpoint(str(tmp_path), "model_0000023.pth")
    assert prune_checkpoints(str(tmp_path), 5) == []
    assert prune_checkpoints(str(tmp_path), 2) == [str(tmp_path / "model_0000007.pth")]
    assert prune_checkpoints(str(tmp_path), 1) == [str(tmp_path / "model_0000015.pth")]
    assert names() == ["last_checkpoint", "model_0000023.pth", "model_0000031.pth.3f2a.tmp", "model_best.pth",
                       "model_final.pth", "notes.txt"]
    # resumed from an earlier checkpoint: the later ones of the interrupted run stay, but never the tagged save
    (tmp_path / "model_0000007.pth").write_bytes(b"x")
    tag_last_checkpoint(str(tmp_path), "model_0000007.pth")
    assert prune_checkpoints(str(tmp_path), 1) == []
    assert [n for n in names() if n.startswith("model_00")] == ["model_0000007.pth", "model_0000023.pth",
                                                                "model_0000031.pth.3f2a.tmp"]


def test_eval_size_comes_from_the_command_line_then_the_checkpoint_then_the_config(caplog):
    from snnet_core.io.run_dir import command_line_sets, eval_size_for_checkpoint

    caplog.set_level("INFO", logger="snnet_core")
    key = "snnet.flops_input_size"
    assert eval_size_for_checkpoint((128, 128), None, False, "ckpt", key) == ((128, 128), "config")
    assert eval_size_for_checkpoint((128, 128), [96, 96], False, "ckpt", key) == ((96, 96), "checkpoint")
    assert eval_size_for_checkpoint((112, 112), [96, 96], True, "ckpt", key) == ((112, 112), "command line")
    assert eval_size_for_checkpoint((112, 112), None, True, "ckpt", key) == ((112, 112), "command line")
    assert [r.levelname for r in caplog.records] == ["INFO", "WARNING"]
    assert caplog.records[1].getMessage() == ("evaluating at 112x112 (snnet.flops_input_size on the command line), "
                                              "not at 96x96, the size ckpt was trained at")
    assert command_line_sets(["train.device=cpu", "snnet.flops_input_size=[96,96]"], key)
    assert command_line_sets(["dataloader.eval_size=[64,80]"], "dataloader.eval_size")
    assert not command_line_sets(["snnet.ros_step_gflops=1", "train.device=cpu"], key)
    assert not command_line_sets(["dataloader.eval_size_x=1"], "dataloader.eval_size")


def test_file_sha256_is_the_digest_of_the_file_bytes(tmp_path):
    import hashlib

    from snnet_core.io.atomic_io import file_sha256

    data = os.urandom(3 << 20)  # more than one read block
    (tmp_path / "w.pth").write_bytes(data)
    assert file_sha256(str(tmp_path / "w.pth")) == hashlib.sha256(data).hexdigest()


def test_temporaries_of_killed_checkpoint_tag_and_config_writes_are_removed_and_nothing_else(tmp_path):
    from snnet_core.io.run_dir import remove_killed_writes

    killed = ["model_0000007.pth.k1.tmp", "model_final.pth.k2.tmp", "last_checkpoint.k3.tmp", "config.yaml.k4.tmp",
              "run.lock.json.k7.tmp", "flops_cache/flops_ab12.json.k8.tmp", "stitch_5/model_final.pth.k9.tmp",
              "stitch_5/config.yaml.ka.tmp", "stitch_report_val/stitch_report.png.kb.tmp"]
    kept = ["notes.md.k5.tmp", "metrics.json.k6.tmp", "model_final.pth", "mine/notes.md.kc.tmp"]
    for name in killed + kept:
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text("x")
    assert remove_killed_writes(str(tmp_path)) == sorted(str(tmp_path / n) for n in killed)
    left = sorted(os.path.relpath(os.path.join(d, f), tmp_path) for d, _, fs in os.walk(tmp_path) for f in fs)
    assert left == sorted(kept)


HOLD_RUN_DIR = """
import sys, time
sys.path.insert(0, {repo!r})
from snnet_core.io.run_dir import lock_run_dir
with lock_run_dir({out!r}, evaluating={evaluating}):
    print("holding", flush=True)
    time.sleep(120)
"""


def hold_in_child(out, evaluating=False):
    """A child process holding ``out`` (as a training run, or an --eval-only one), once it says so."""
    import subprocess
    import sys

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    child = subprocess.Popen([sys.executable, "-c", HOLD_RUN_DIR.format(repo=repo, out=str(out), evaluating=evaluating),
                              "train.output_dir=" + str(out)], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline() == "holding\n"
    return child


def test_a_second_training_run_is_refused_at_once_naming_the_first(tmp_path):
    from snnet_core.io.run_dir import RunDirInUseError, lock_run_dir

    out = tmp_path / "run"
    child = hold_in_child(out)
    try:
        for evaluating in (False, True):  # neither a training run nor an evaluation beside a training run
            with pytest.raises(RunDirInUseError, match=rf"train.output_dir {out} is in use by another run, the "
                                                       rf"process pid {child.pid} on .*, started .*: .*train.output_dir="
                                                       rf"{out} \(recorded in .*run.lock.json\): wait for it to end"):
                with lock_run_dir(str(out), evaluating=evaluating):
                    pass
    finally:
        child.kill()
        child.wait()
    with lock_run_dir(str(out)):  # a killed holder (SIGKILL) leaves no lock behind
        with open(out / "run.lock.json") as f:
            assert json.load(f)["pid"] == os.getpid()
    assert not (out / "run.lock.json").exists()


def test_evaluations_share_the_directory_and_keep_a_training_run_out(tmp_path):
    from snnet_core.io.run_dir import RunDirInUseError, lock_run_dir

    out = tmp_path / "run"
    child = hold_in_child(out, evaluating=True)
    try:
        with lock_run_dir(str(out), evaluating=True):  # a second evaluation beside it
            pass
        with pytest.raises(RunDirInUseError, match=rf"in use by 1 --eval-only run\(s\), the process pid {child.pid} "):
            with lock_run_dir(str(out)):
                pass
    finally:
        child.kill()
        child.wait()
    assert len([n for n in os.listdir(out) if n.startswith("run.lock.eval-")]) == 2  # the killed one's slot, record
    with lock_run_dir(str(out)):  # the killed evaluation does not count
        assert sorted(os.listdir(out)) == ["run.lock", "run.lock.json"]
    assert os.listdir(out) == []  # no lock file is left behind


def test_the_run_dir_lock_names_an_output_dir_that_is_a_file(tmp_path):
    from snnet_core.io.run_dir import lock_run_dir

    (tmp_path / "out").write_text("x")
    with pytest.raises(NotADirectoryError, match=rf"train.output_dir: {tmp_path / 'out'} is a file, not a directory"):
        with lock_run_dir(str(tmp_path / "out" / "run")):
            pass


def test_a_directory_the_lock_created_is_removed_when_the_run_wrote_nothing(tmp_path):
    from snnet_core.io.run_dir import lock_run_dir

    with pytest.raises(ValueError):
        with lock_run_dir(str(tmp_path / "new")):
            raise ValueError("a check failed")
    assert os.listdir(tmp_path) == []
    with lock_run_dir(str(tmp_path / "new")):
        (tmp_path / "new" / "config.yaml").write_text("x")
    assert os.listdir(tmp_path / "new") == ["config.yaml"]  # the lock's file goes with the run
