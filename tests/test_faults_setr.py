"""Segmentation under faults: kill -9 during training, then ``--resume``, ends with the uninterrupted run's weights
(RNGs seeded per iteration, the training batch a function of (seed, iteration), atomic checkpoints)."""
import os
import subprocess
import sys
import textwrap

import torch

from tests.test_setr_train import REPO, TINY, synthetic, tiny_opts  # noqa: F401 (fixture)

MAX_ITER, PERIOD = 6, 2  # checkpoints of iterations 1 and 3, model_final of iteration 5

# train_net's CLI with SIGKILL (no cleanup of any kind runs) at the start of training iteration AT; -1: no fault
FAULT_RUNNER = textwrap.dedent("""
    import os, signal, sys
    from projects.snnet_setr import train_net
    from snnet_core.d2 import hooks

    at = int(sys.argv[1])
    before_step = hooks.StitchSamplingHook.before_step
    def killing_before_step(self):
        if self.trainer.iter == at:
            os.kill(os.getpid(), signal.SIGKILL)
        before_step(self)
    hooks.StitchSamplingHook.before_step = killing_before_step
    train_net.cli(sys.argv[2:])
""")


def train_net(root, out, *argv, at=-1):
    env = dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()), HF_HUB_OFFLINE="1", PYTHONPATH=REPO)
    opts = tiny_opts(root, out, f"train.max_iter={MAX_ITER}", f"train.checkpointer.period={PERIOD}")
    return subprocess.run([sys.executable, "-c", FAULT_RUNNER, str(at), "--config-file", TINY, *argv, *opts],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def test_kill_during_training_then_resume_gives_the_uninterrupted_weights(synthetic, tmp_path):  # noqa: F811
    reference = str(tmp_path / "uninterrupted")
    done = train_net(synthetic, reference)
    assert done.returncode == 0, done.stderr[-3000:]

    out = str(tmp_path / "killed")
    killed = train_net(synthetic, out, at=4)
    assert killed.returncode == -9, killed.stderr[-3000:]
    with open(os.path.join(out, "last_checkpoint")) as f:
        assert f.read().strip() == "model_0000003.pth"
    assert not os.path.exists(os.path.join(out, "model_final.pth"))

    resumed = train_net(synthetic, out, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    got, want = weights(os.path.join(out, "model_final.pth")), weights(os.path.join(reference, "model_final.pth"))
    assert got.keys() == want.keys()
    differ = [k for k in want if not torch.equal(got[k], want[k])]
    assert not differ, f"{len(differ)} of {len(want)} tensors differ from the uninterrupted run, e.g. {differ[:3]}"
