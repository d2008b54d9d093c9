"""Fault injection for snnet_vitdet (tiny synthetic config, CPU, subprocesses): kill -9 during training, during a
checkpoint write and during the per-stitch evaluation, then resume; a full disk (file-size limit) during a
save; malicious pickles. A resumed training must end with the weights of the uninterrupted run, bit for bit."""
import glob
import hashlib
import json
import os
import pickle
import resource
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from detectron2.config import instantiate

from snnet_core.d2.checkpoint import StrictDetectionCheckpointer
from snnet_core.io.file_claims import CheckpointClaimError
from snnet_core.io.safe_pickle import UnsafePickleError, load_safe_pickle
from tests.test_core_checkpoints import deflate_bomb, torch_load_forbidden  # noqa: F401 (fixture)
from tests.test_faults_dpt import tensorboard_scalars
from tests.test_vitdet_train import REPO, TINY, run_main, synthetic, tiny_cfg, tiny_opts  # noqa: F401 (fixture)

MAX_ITER, PERIOD = 8, 3  # checkpoints of iterations 2 and 5, model_final of iteration 7

# Runs train_net's CLI with a fault injected at a precise point: SIGKILL (no cleanup of any kind runs) at the
# start of training iteration AT ("train"), halfway through writing the checkpoint of iteration AT ("save"),
# or when the AT-th pass of the per-stitch report starts ("eval": a stitch of the per-stitch loop, or a group of
# stitches sharing route prefixes); "none" injects nothing.
FAULT_RUNNER = textwrap.dedent("""
    import io, os, signal, sys
    import torch
    from projects.snnet_vitdet import evaluation, train_net
    from snnet_core.d2 import hooks

    kind, at = sys.argv[1], int(sys.argv[2])
    kill = lambda: os.kill(os.getpid(), signal.SIGKILL)
    if kind == "train":
        before_step = hooks.StitchSamplingHook.before_step
        def killing_before_step(self):
            if self.trainer.iter == at:
                kill()
            before_step(self)
        hooks.StitchSamplingHook.before_step = killing_before_step
    elif kind == "save":
        save = torch.save
        def killing_save(obj, f, *args, **kwargs):
            if isinstance(obj, dict) and obj.get("iteration") == at:
                buffer = io.BytesIO()
                save(obj, buffer, *args, **kwargs)
                f.write(buffer.getvalue()[: buffer.tell() // 2])
                f.flush()
                kill()
            save(obj, f, *args, **kwargs)
        torch.save = killing_save
    elif kind == "eval":
        started = []
        def killing(evaluate):
            def evaluate_after_check(*args, **kwargs):
                if len(started) == at:
                    kill()
                started.append(1)
                return evaluate(*args, **kwargs)
            return evaluate_after_check
        evaluation.evaluate_model = killing(evaluation.evaluate_model)
        evaluation.evaluate_stitch_group = killing(evaluation.evaluate_stitch_group)
    train_net.cli(sys.argv[3:])
""")


def train_net(*argv, fault="none", at=-1, file_size_limit=None):
    """``train_net.py --config-file TINY *argv`` in a subprocess with ``fault`` injected (see FAULT_RUNNER)."""
    def limit_file_size():  # Python ignores SIGXFSZ, so a write past the limit fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, file_size_limit))

    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONPATH=REPO)
    return subprocess.run([sys.executable, "-c", FAULT_RUNNER, fault, str(at), "--config-file", TINY, *argv],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
                          preexec_fn=limit_file_size if file_size_limit else None)


def train_opts(root, out):
    return tiny_opts(root, out, f"train.max_iter={MAX_ITER}", f"train.checkpointer.period={PERIOD}",
                     "train.log_period=1")


def weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def assert_same_weights(path, reference):
    got, want = weights(path), weights(reference)
    assert got.keys() == want.keys()
    differ = [k for k in want if not torch.equal(got[k], want[k])]
    assert not differ, f"{len(differ)} of {len(want)} tensors differ from the uninterrupted run, e.g. {differ[:3]}"


def last_checkpoint(out):
    with open(os.path.join(out, "last_checkpoint")) as f:
        return f.read().strip()


def digest(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


@pytest.fixture(scope="module")
def uninterrupted(synthetic, tmp_path_factory):  # noqa: F811
    out = str(tmp_path_factory.mktemp("uninterrupted"))
    proc = train_net(*train_opts(synthetic, out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


# --- kill -9 -----------------------------------------------------------------------------------------
def test_kill_during_training_then_resume_gives_the_uninterrupted_weights(
        synthetic, uninterrupted, tmp_path):  # noqa: F811
    out = str(tmp_path)
    killed = train_net(*train_opts(synthetic, out), fault="train", at=7)
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert last_checkpoint(out) == "model_0000005.pth" and not os.path.exists(os.path.join(out, "model_final.pth"))

    resumed = train_net("--resume", *train_opts(synthetic, out))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_weights(os.path.join(out, "model_final.pth"), os.path.join(uninterrupted, "model_final.pth"))
    with open(os.path.join(out, "metrics.json")) as f:  # one history: 6 (logged before the kill) once
        iterations = [int(line.split('"iteration": ')[1].split(",")[0]) for line in f if line.strip()]
    assert iterations == list(range(MAX_ITER))
    # TensorBoard too: the step logged after the checkpoint by the killed run is purged, not drawn twice. (Values
    # differ after a resume: detectron2 smooths losses over a window the resumed run starts empty.)
    assert len(glob.glob(os.path.join(out, "events.out.tfevents.*"))) == 2
    assert [step for step, _ in tensorboard_scalars(out, "total_loss")] == list(range(MAX_ITER))


def test_kill_during_checkpoint_write_resumes_from_the_previous_checkpoint(
        synthetic, uninterrupted, tmp_path):  # noqa: F811
    out = str(tmp_path)
    killed = train_net(*train_opts(synthetic, out), fault="save", at=5)
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert not os.path.exists(os.path.join(out, "model_0000005.pth"))  # the half-written file is a temporary
    assert len(glob.glob(os.path.join(out, "model_0000005.pth.*.tmp"))) == 1
    assert last_checkpoint(out) == "model_0000002.pth"

    resumed = train_net("--resume", *train_opts(synthetic, out))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "removed 1 temporary file(s) of killed checkpoint writes" in resumed.stdout + resumed.stderr
    assert not glob.glob(os.path.join(out, "*.tmp"))
    assert_same_weights(os.path.join(out, "model_final.pth"), os.path.join(uninterrupted, "model_final.pth"))


def test_kill_during_the_first_checkpoint_write_then_resume_is_refused_and_overwrite_reproduces_the_run(
        synthetic, uninterrupted, tmp_path):  # noqa: F811
    """No checkpoint to resume from: --resume says so (it used to train from 0 and append a second history to
    metrics.json); --overwrite, which keeps flops_cache/, then gives the uninterrupted run's weights."""
    out = str(tmp_path)
    killed = train_net(*train_opts(synthetic, out), fault="save", at=PERIOD - 1)
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert not os.path.exists(os.path.join(out, "last_checkpoint"))
    metrics = os.path.join(out, "metrics.json")
    logged = digest(metrics)
    with pytest.raises(FileNotFoundError, match=r"--resume: .*last_checkpoint does not exist.*start afresh without "
                                                r"--resume \(with --overwrite"):
        run_main("--resume", *train_opts(synthetic, out))
    assert digest(metrics) == logged
    run_main("--overwrite", *train_opts(synthetic, out))
    with open(metrics) as f:
        iterations = [json.loads(line)["iteration"] for line in f]
    assert iterations == list(range(MAX_ITER)), iterations  # one history
    assert_same_weights(os.path.join(out, "model_final.pth"), os.path.join(uninterrupted, "model_final.pth"))


@pytest.mark.parametrize("mode, done", [("snnet.eval_share_prefixes=False", ["0"]),  # per-stitch loop
                                        ("snnet.eval_group_size=2", ["0", "1"])])  # groups [0, 1], [13, 5]
def test_kill_during_stitch_evaluation_then_resume_loses_no_stitch(
        synthetic, uninterrupted, tmp_path, mode, done):  # noqa: F811
    report = str(tmp_path / "report")
    argv = ("--eval-only", "--stitch", "0,1,13,5", "--report-dir", report,
            *tiny_opts(synthetic, str(tmp_path), f"train.init_checkpoint={uninterrupted}/model_final.pth", mode))
    killed = train_net(*argv, fault="eval", at=1)  # killed when the second pass starts
    assert killed.returncode == -9, killed.stderr[-3000:]
    with open(os.path.join(report, "stitch_results.json")) as f:
        assert sorted(json.load(f)["stitches"]) == done

    resumed = train_net(*argv)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"{4 - len(done)} of 4 stitches to evaluate" in resumed.stdout + resumed.stderr
    with open(os.path.join(report, "stitch_results.json")) as f:
        stitches = json.load(f)["stitches"]
    assert sorted(stitches) == ["0", "1", "13", "5"]


# --- full disk ---------------------------------------------------------------------------------------
def test_full_disk_during_save_is_an_error_naming_the_file_and_keeps_the_previous_checkpoint(
        synthetic, uninterrupted, tmp_path):  # noqa: F811
    out = str(tmp_path)
    shutil.copy(os.path.join(uninterrupted, "model_0000002.pth"), out)
    with open(os.path.join(out, "last_checkpoint"), "w") as f:
        f.write("model_0000002.pth")
    before = digest(os.path.join(out, "model_0000002.pth"))
    size = os.path.getsize(os.path.join(out, "model_0000002.pth"))

    full = train_net("--resume", *train_opts(synthetic, out), file_size_limit=size // 2)
    assert full.returncode == 1, full.stderr[-3000:]
    message = full.stderr.strip().splitlines()[-1]
    assert "could not save checkpoint" in message and "model_0000005.pth" in message, message
    assert "File too large" in message or "unexpected pos" in message, message
    assert "--resume continues from the last one" in message and "model_0000002.pth" in message, message
    assert digest(os.path.join(out, "model_0000002.pth")) == before and last_checkpoint(out) == "model_0000002.pth"
    assert not os.path.exists(os.path.join(out, "model_0000005.pth")) and not glob.glob(os.path.join(out, "*.tmp"))

    resumed = train_net("--resume", *train_opts(synthetic, out))  # room again: the run completes exactly
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_weights(os.path.join(out, "model_final.pth"), os.path.join(uninterrupted, "model_final.pth"))


def test_resume_of_an_ended_run_writes_a_missing_final_model(synthetic, uninterrupted, tmp_path):  # noqa: F811
    """A final save that failed after the last periodic checkpoint (same iteration): --resume must not exit 0
    without a model_final.pth."""
    out = str(tmp_path)
    shutil.copy(os.path.join(uninterrupted, "model_final.pth"), os.path.join(out, "model_0000007.pth"))
    with open(os.path.join(out, "last_checkpoint"), "w") as f:
        f.write("model_0000007.pth")
    run_main("--resume", *train_opts(synthetic, out))
    assert_same_weights(os.path.join(out, "model_final.pth"), os.path.join(uninterrupted, "model_final.pth"))


# --- malicious pickles -------------------------------------------------------------------------------
class CreatesFile:
    """Unpickling it calls ``open(path, "w")``: a stand-in for any code an attacker's pickle runs."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return open, (self.path, "w")


def test_malicious_pickle_is_refused_and_never_executed(synthetic, tmp_path):  # noqa: F811
    marker = str(tmp_path / "pwned")
    evil = {"model": {"w": CreatesFile(marker)}, "__author__": "attacker"}
    for name in ("evil.pkl", "evil.pth"):
        with open(tmp_path / name, "wb") as f:
            pickle.dump(evil, f)
    with pytest.raises(UnsafePickleError, match=r"evil.pkl: refusing to unpickle global io.open: this file could"):
        run_main("--eval-only", *tiny_opts(synthetic, tmp_path, f"train.init_checkpoint={tmp_path}/evil.pkl"))
    with pytest.raises(RuntimeError, match=r"refusing to load checkpoint .*evil.pth"):
        run_main("--eval-only", *tiny_opts(synthetic, tmp_path, f"train.init_checkpoint={tmp_path}/evil.pth"))
    # --resume reads the file last_checkpoint names: only a .pth inside the output directory
    run = tmp_path / "run"
    run.mkdir()
    for name in ("evil.pkl", "../evil.pth", str(tmp_path / "evil.pth")):
        (run / "last_checkpoint").write_text(name)
        with pytest.raises(ValueError, match="not a .pth file of this directory"):
            run_main("--resume", *tiny_opts(synthetic, str(run)))
    (run / "last_checkpoint").write_text("evil.pth")
    shutil.copy(tmp_path / "evil.pth", run / "evil.pth")
    with pytest.raises(RuntimeError, match=r"refusing to load checkpoint .*run/evil.pth"):
        run_main("--resume", *tiny_opts(synthetic, str(run)))
    assert not os.path.exists(marker)


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_model_zoo_pickle_of_numpy_arrays_loads(synthetic, tmp_path, protocol):  # noqa: F811
    cfg = tiny_cfg(synthetic, tmp_path)
    source, target = instantiate(cfg.model), instantiate(cfg.model)
    zoo = {"model": {k: v.numpy() for k, v in source.state_dict().items()}, "__author__": "model zoo",
           "matching_heuristics": False, "extra": [np.float32(1.5), (1, "a"), {"b": None}]}
    with open(tmp_path / "zoo.pkl", "wb") as f:
        pickle.dump(zoo, f, protocol=protocol)
    assert load_safe_pickle(str(tmp_path / "zoo.pkl"))["extra"][0] == np.float32(1.5)
    StrictDetectionCheckpointer(target).load(str(tmp_path / "zoo.pkl"))
    for k, v in source.state_dict().items():
        assert torch.equal(target.state_dict()[k], v), k
    with open(tmp_path / "truncated.pkl", "wb") as f:
        f.write(pickle.dumps(zoo, protocol=protocol)[:1000])
    with pytest.raises(ValueError, match="truncated.pkl: not a readable weights pickle"):
        load_safe_pickle(str(tmp_path / "truncated.pkl"))


# --- files claiming far more than the model ----------------------------------------------------------
def test_checkpoints_claiming_far_more_than_the_detector_are_refused_before_reading(synthetic, tmp_path,  # noqa: F811
                                                                                   torch_load_forbidden):
    model = instantiate(tiny_cfg(synthetic, tmp_path).model)
    torch.save({"model": model.state_dict()}, tmp_path / "model.pth")
    bomb = deflate_bomb(tmp_path / "model.pth", tmp_path / "bomb.pth", claim=256 << 20)
    with pytest.raises(CheckpointClaimError, match=r"checkpoint '.*bomb.pth' claims 2\d\d MiB of data"):
        StrictDetectionCheckpointer(model).load(str(bomb))
    # a small pickle of many names: detectron2 would match each against every model key (minutes, then MemoryError)
    keys = len(model.state_dict())
    with open(tmp_path / "names.pkl", "wb") as f:
        pickle.dump({"model": {f"w{i}": np.zeros(1, np.float32) for i in range(5 * keys + 1024)},
                     "__author__": "crafted"}, f)
    with pytest.raises(CheckpointClaimError, match=rf"names.pkl' holds {5 * keys + 1024} weight entries for a model "
                                                   rf"of {keys} \(limit {4 * keys + 1024}\): refused before matching"):
        StrictDetectionCheckpointer(model).load(str(tmp_path / "names.pkl"))
    large = tmp_path / "large.pkl"  # sparse: 1 GiB long, nothing written
    with open(large, "wb") as f:
        f.truncate(1 << 30)
    with pytest.raises(CheckpointClaimError, match=r"weights pickle '.*large.pkl' claims 1024 MiB"):
        StrictDetectionCheckpointer(model).load(str(large))
