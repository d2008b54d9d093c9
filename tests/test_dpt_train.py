"""projects/snnet_dpt/train.py end to end on a tiny synthetic NYUv2: training, exact resume, the per-stitch
report (interrupted and resumed), a 2-process gloo DDP run, and clear errors."""
import json
import os
import subprocess
import sys

import pytest
import torch

import projects.snnet_dpt.engine as engine
import projects.snnet_dpt.train as train_cli
from datasets.make_synthetic_nyu import make_synthetic_nyu
from projects.snnet_dpt.export import load_exported_model
from projects.snnet_dpt.transforms import DepthDataset
from projects.snnet_dpt.nyu import build_nyu_split

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_STITCHES = 14  # 4-block / 8-block anchors


class Interrupted(Exception):
    pass


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("nyu_synth"))
    make_synthetic_nyu(root, num_train=16, num_test=4, size=(64, 80), seed=0)
    return root


def cli_args(data_root, output_dir, *extra):
    return ["--data-root", data_root, "--tiny", "--eval-size", "64", "80", "--crop-size", "48", "64",
            "--batch-size", "2", "--lr", "2e-3", "--flops-step", "0.002", "--ls-init-images", "4",
            "--workers", "0", "--loss-warmup-iters", "4", "--output-dir", str(output_dir), *extra]


def read_log(output_dir, rank=0):
    with open(os.path.join(output_dir, f"train_log.rank{rank}.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_training_reduces_the_loss_and_writes_the_report(data_root, tmp_path):
    out = tmp_path / "run"
    result = train_cli.main(cli_args(data_root, out, "--layout", "mat", "--epochs", "4", "--stitch", "0,1,5"))
    steps = [r for r in read_log(out) if "loss" in r]
    assert len(steps) == 4 * 8 and result["iteration"] == 32
    assert len({r["stitch"] for r in steps}) > 3  # ROS draws many stitches
    first = sum(r["loss"] for r in steps[4:10]) / 6  # right after the 4 warm-up iterations
    last = sum(r["loss"] for r in steps[-6:]) / 6
    assert last < 0.5 * first, (first, last)
    rows = result["report"]["stitches"]
    assert sorted(int(k) for k in rows) == [0, 1, 5]
    assert all(0.2 < rows[k]["a1"] <= 1 and rows[k]["abs_rel"] < 0.6 for k in rows), rows
    for name in ("stitch_results.json", "stitch_report.csv", "stitch_report.md", "stitch_report.png"):
        assert os.path.isfile(out / "stitch_eval" / name)


def test_resume_is_exact_and_refuses_other_settings(data_root, tmp_path, monkeypatch):
    args = ["--layout", "sync", "--epochs", "2", "--stitch", "none", "--drop-path", "0.1", "0.1"]
    train_cli.main(cli_args(data_root, tmp_path / "straight", *args))
    real_epoch = train_cli.train_one_epoch

    def stop_in_second_epoch(*a, **k):
        if a[10] == 1:  # epoch
            raise Interrupted
        return real_epoch(*a, **k)

    monkeypatch.setattr(train_cli, "train_one_epoch", stop_in_second_epoch)
    with pytest.raises(Interrupted):
        train_cli.main(cli_args(data_root, tmp_path / "resumed", *args))
    monkeypatch.setattr(train_cli, "train_one_epoch", real_epoch)
    with pytest.raises(ValueError, match="cannot resume.*lr"):
        train_cli.main(cli_args(data_root, tmp_path / "resumed", *args, "--resume", "--lr", "1e-3"))
    train_cli.main(cli_args(data_root, tmp_path / "resumed", *args, "--resume"))
    a = torch.load(tmp_path / "straight" / "checkpoint_last.pth", weights_only=True)
    b = torch.load(tmp_path / "resumed" / "checkpoint_last.pth", weights_only=True)
    assert a["iteration"] == b["iteration"] == 16 and a["epoch"] == b["epoch"] == 2
    for part in ("model", "head"):
        for key, value in a[part].items():
            assert torch.equal(value, b[part][key]), key
    for key, value in a["optimizer"]["state"].items():
        assert torch.equal(value["exp_avg"], b["optimizer"]["state"][key]["exp_avg"])
    assert a["scheduler"]["last_epoch"] == b["scheduler"]["last_epoch"] == 16
    assert [r for r in read_log(tmp_path / "straight")] == [r for r in read_log(tmp_path / "resumed")]


def test_stitch_report_is_resumable_after_an_interruption(data_root, tmp_path, monkeypatch):
    out = tmp_path / "run"
    train_cli.main(cli_args(data_root, out, "--epochs", "1", "--stitch", "none"))
    calls = []
    real_evaluate = engine.evaluate

    def interrupted_after_five(model, *a, **k):
        if len(calls) == 5:
            raise Interrupted
        calls.append(model.backbone.stitch_id)
        return real_evaluate(model, *a, **k)

    monkeypatch.setattr(engine, "evaluate", interrupted_after_five)
    eval_args = cli_args(data_root, out, "--eval-only", "--stitch", "all", "--no-flip-eval")
    with pytest.raises(Interrupted):
        train_cli.main(eval_args)
    with open(out / "stitch_eval" / "stitch_results.json") as f:
        partial = json.load(f)["stitches"]
    assert sorted(int(k) for k in partial) == sorted(calls)
    calls.clear()
    monkeypatch.setattr(engine, "evaluate", lambda model, *a, **k: (calls.append(model.backbone.stitch_id),
                                                                      real_evaluate(model, *a, **k))[1])
    record = train_cli.main(eval_args)["report"]
    assert len(record["stitches"]) == NUM_STITCHES and len(calls) == NUM_STITCHES - 5
    for k, row in partial.items():
        assert record["stitches"][k] == row  # finished stitches are not redone
    with open(out / "stitch_eval" / "stitch_report.csv") as f:
        assert len(f.readlines()) == NUM_STITCHES + 1
    # the Pareto frontier of this report, evaluated again: nothing new to compute
    calls.clear()
    pareto = train_cli.main(cli_args(data_root, out, "--eval-only", "--stitch", "pareto", "--no-flip-eval"))
    assert calls == [] and 1 <= len(pareto["report"]["stitches"]) == NUM_STITCHES
    with pytest.raises(RuntimeError, match="another run"):  # flip changes the run key
        train_cli.main(cli_args(data_root, out, "--eval-only", "--stitch", "0"))


def test_two_process_ddp_trains_the_same_stitch_on_both_ranks(data_root, tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29731",
           os.path.join(REPO, "projects", "snnet_dpt", "train.py"),
           *cli_args(data_root, out, "--epochs", "2", "--batch-size", "4", "--stitch", "0,1", "--export-stitch", "7")]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    logs = [read_log(out, rank) for rank in (0, 1)]
    steps = [[r for r in log if "loss" in r] for log in logs]
    assert len(steps[0]) == len(steps[1]) == 2 * 8 // 2  # 16 frames, 2 per rank per step
    assert [r["stitch"] for r in steps[0]] == [r["stitch"] for r in steps[1]]
    assert len({r["stitch"] for r in steps[0]}) > 2
    assert any(a["loss"] != b["loss"] for a, b in zip(*steps))  # each rank saw its own frames
    checksums = [[r["param_checksum"] for r in log if r.get("event") == "epoch_end"] for log in logs]
    assert len(checksums[0]) == 2 and checksums[0] == checksums[1]  # replicas stay identical
    with open(out / "stitch_eval" / "stitch_results.json") as f:
        assert sorted(json.load(f)["stitches"]) == ["0", "1"]
    exported = load_exported_model(str(out / "stitch_7_dpt.pth"))
    image, _ = DepthDataset(build_nyu_split("sync", data_root, "test"))[0]
    with torch.no_grad():
        depth = exported(image[None])
    assert depth.shape == (1, 1, 64, 80) and 0.5 < depth.median() < 10


def test_clear_errors_for_bad_inputs(data_root, tmp_path):
    with pytest.raises(FileNotFoundError, match="nyu_depth_v2_labeled.mat"):
        train_cli.main(cli_args(str(tmp_path), tmp_path / "a", "--layout", "mat", "--epochs", "1"))
    with pytest.raises(FileNotFoundError, match="nope_small.pth"):
        train_cli.main(cli_args(data_root, tmp_path / "b", "--epochs", "1", "--pretrained",
                                str(tmp_path / "nope_small.pth"), str(tmp_path / "nope_large.pth")))
    with pytest.raises(KeyError, match="unknown stitch id 99"):
        train_cli.main(cli_args(data_root, tmp_path / "c", "--epochs", "1", "--stitch", "0,99"))
    with pytest.raises(FileNotFoundError, match="stitch_results.json"):
        train_cli.main(cli_args(data_root, tmp_path / "d", "--epochs", "1", "--stitch", "pareto"))
    with pytest.raises(ValueError, match="--eval-size is 480x640"):
        train_cli.main(cli_args(data_root, tmp_path / "e", "--epochs", "1", "--eval-size", "480", "640"))
    with pytest.raises(FileNotFoundError, match="checkpoint"):
        train_cli.main(cli_args(data_root, tmp_path / "f", "--eval-only"))
