"""projects/snnet_dpt/train.py end to end on a tiny synthetic NYUv2 (the tiny config + command-line overrides):
training, the output layout (detectron2's: log.txt, metrics.json, TensorBoard, model_*.pth, last_checkpoint),
exact resume, the per-stitch report (interrupted and resumed, --report-dir, --pareto-from), exports, a 2-process
gloo DDP run, clear errors; and the recipe: mmcv-style parameter groups, OneCycle, gradient clipping, NYU border
crop, configs."""
import ast
import io
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tokenize

import numpy as np
import pytest
import scipy.io
import torch
import yaml
from timm.layers import PatchEmbed

import projects.snnet_dpt.evaluation as evaluation
import projects.snnet_dpt.model as model_module
import projects.snnet_dpt.train as train_cli
import projects.snnet_dpt.training as training
from datasets.make_synthetic_nyu import make_synthetic_nyu, write_labeled_mat, write_splits_mat
from projects.snnet_dpt.export import load_depth_model, load_exported_model, save_exported_stitch
from projects.snnet_dpt.head import Reassemble
from projects.snnet_dpt.model import build_model
from projects.snnet_dpt.nyu import build_nyu_split
from projects.snnet_dpt.transforms import NYU_CROP, DepthDataset, TrainAugmentation
from snnet_core import UniformSampler, evaluate_stitches
from snnet_core.select import SelectionError, choose_stitch, read_report
from snnet_core.evaluation.selection import pareto_frontier
from tests.plain_train_checks import check_backbone_lora_log, check_ls_init, spy_on_ls_init
from tests.test_core_report import progress_bars  # noqa: F401 (fixture)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(REPO, "projects", "snnet_dpt", "configs")
PAPER = os.path.join(CONFIGS, "dpt_snnetv2_deit3_s_l_nyu.py")
PAPER_B_L = os.path.join(CONFIGS, "dpt_snnetv2_deit3_b_l_nyu.py")
TINY = os.path.join(CONFIGS, "synthetic", "dpt_snnetv2_tiny.py")
PAPER_V1 = os.path.join(CONFIGS, "dpt_snnetv1_deit3_s_l_nyu.py")
NUM_STITCHES = 14  # 4-block / 8-block anchors
REPORT = "stitch_report_nyuv2_synthetic_test"  # the tiny config's report directory under train.output_dir
TIMING = {"time", "data_time", "eta_seconds"}  # the metrics.json keys that measure time, not training


class Interrupted(Exception):
    pass


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("nyu_synth"))
    make_synthetic_nyu(root, num_train=16, num_test=4, size=(64, 80), seed=0)
    return root


def cli_args(data_root, output_dir, *flags, opts=()):
    """Flags, then the tiny config's overrides for 64x80 frames (metrics logged every iteration), then ``opts``
    (later overrides win)."""
    return ["--config-file", TINY, *map(str, flags), f"dataloader.root={data_root}", "dataloader.eval_size=[64,80]",
            "dataloader.augmentation.crop_size=[48,64]", "train.batch_size=2",
            "train.flops_step=0.002", "train.ls_init_images=4", "train.loss_warmup_iters=4", "train.log_period=1",
            f"train.output_dir={output_dir}", *opts]


def read_metrics(output_dir):
    """The lines of ``<output_dir>/metrics.json``."""
    with open(os.path.join(output_dir, "metrics.json")) as f:
        return [json.loads(line) for line in f]


def training_history(output_dir):
    """metrics.json without the timing keys: what a resumed run must log exactly as the uninterrupted one."""
    return [{k: v for k, v in line.items() if k not in TIMING} for line in read_metrics(output_dir)]


def route_of(step):
    """The ``route_loss/...`` key of one iteration's metrics (exactly one: the stitch trained then)."""
    (key,) = [k for k in step if k.startswith("route_loss/")]
    return key


def test_training_reduces_the_loss_and_writes_the_report(data_root, tmp_path, monkeypatch):
    clip_norms = []
    real_clip = torch.nn.utils.clip_grad_norm_
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_",
                        lambda params, max_norm, *a, **k: (clip_norms.append(max_norm), real_clip(params, max_norm))[1])
    out = tmp_path / "run"
    result = train_cli.main(cli_args(data_root, out, "--stitch", "0,1,5", opts=["train.epochs=4"]))
    steps = [r for r in read_metrics(out) if "total_loss" in r]
    assert [r["iteration"] for r in steps] == list(range(4 * 8)) and result["iteration"] == 32
    assert clip_norms == [35.0] * 32  # the paper config's clip value (upstream max_norm=35) reaches every step
    assert all(r[route_of(r)] == r["total_loss"] for r in steps)  # the step's loss, filed under its route type
    assert len({route_of(r) for r in steps}) > 3  # ROS draws many route types
    first = sum(r["total_loss"] for r in steps[4:10]) / 6  # right after the 4 warm-up iterations
    last = sum(r["total_loss"] for r in steps[-6:]) / 6
    assert last < 0.6 * first, (first, last)
    rows = result["report"]["stitches"]
    assert sorted(int(k) for k in rows) == [0, 1, 5]
    assert all(0 <= rows[k]["a1"] <= 1 and 0 < rows[k]["abs_rel"] < 2 for k in rows), rows
    assert max(rows[k]["a1"] for k in rows) > 0.3, rows  # 32 steps over 14 stitches: not every stitch is good yet
    for name in ("stitch_results.json", "stitch_report.csv", "stitch_report.md", "stitch_report.png"):
        assert os.path.isfile(out / REPORT / name)
    with open(out / "config.yaml") as f:  # the resolved recipe, overrides included
        saved = yaml.safe_load(f)
    assert saved["train"]["epochs"] == 4 and saved["dataloader"]["root"] == data_root
    assert train_cli.load_config(str(out / "config.yaml"), []) == saved


def test_resume_is_exact_and_refuses_other_settings(data_root, tmp_path, monkeypatch):
    opts = ["dataloader.layout=sync", "train.epochs=2", "model.drop_path=[0.1,0.1]"]
    train_cli.main(cli_args(data_root, tmp_path / "straight", "--stitch", "none", opts=opts))
    real_epoch = training.train_one_epoch

    def stop_in_second_epoch(*a, **k):
        if a[10] == 1:  # epoch
            raise Interrupted
        return real_epoch(*a, **k)

    monkeypatch.setattr(training, "train_one_epoch", stop_in_second_epoch)
    with pytest.raises(Interrupted):
        train_cli.main(cli_args(data_root, tmp_path / "resumed", "--stitch", "none", opts=opts))
    monkeypatch.setattr(training, "train_one_epoch", real_epoch)
    assert (tmp_path / "resumed" / "last_checkpoint").read_text() == "model_0000007.pth"
    with pytest.raises(ValueError, match="cannot resume.*lr: checkpoint 0.0005 vs now 0.001"):
        train_cli.main(cli_args(data_root, tmp_path / "resumed", "--stitch", "none", "--resume",
                                opts=[*opts, "optimizer.lr=1e-3"]))
    with pytest.raises(ValueError, match="cannot resume.*clip_grad"):
        train_cli.main(cli_args(data_root, tmp_path / "resumed", "--stitch", "none", "--resume",
                                opts=[*opts, "optimizer.clip_grad=1.0"]))
    train_cli.main(cli_args(data_root, tmp_path / "resumed", "--stitch", "none", "--resume", opts=opts))
    a = torch.load(tmp_path / "straight" / "model_final.pth", weights_only=True)
    b = torch.load(tmp_path / "resumed" / "model_final.pth", weights_only=True)
    assert a["iteration"] == b["iteration"] == 16 and a["epoch"] == b["epoch"] == 2
    for part in ("model", "head"):
        for key, value in a[part].items():
            assert torch.equal(value, b[part][key]), key
    for key, value in a["optimizer"]["state"].items():
        assert torch.equal(value["exp_avg"], b["optimizer"]["state"][key]["exp_avg"])
    assert a["scheduler"]["last_epoch"] == b["scheduler"]["last_epoch"] == 16
    assert training_history(tmp_path / "straight") == training_history(tmp_path / "resumed")


def test_stitch_report_is_resumable_after_an_interruption(data_root, tmp_path, monkeypatch):
    out = tmp_path / "run"
    train_cli.main(cli_args(data_root, out, "--stitch", "none", opts=["train.epochs=1"]))
    calls = []
    real_evaluate = evaluation.evaluate

    def interrupted_after_five(model, *a, **k):
        if len(calls) == 5:
            raise Interrupted
        calls.append(model.backbone.stitch_id)
        return real_evaluate(model, *a, **k)

    monkeypatch.setattr(evaluation, "evaluate", interrupted_after_five)
    eval_args = cli_args(data_root, out, "--eval-only", "--stitch", "all",
                         opts=["test.flip=false", "test.share_prefixes=false"])
    with pytest.raises(Interrupted):
        train_cli.main(eval_args)
    with open(out / REPORT / "stitch_results.json") as f:
        partial = json.load(f)["stitches"]
    assert sorted(int(k) for k in partial) == sorted(calls)
    calls.clear()
    monkeypatch.setattr(evaluation, "evaluate", lambda model, *a, **k: (calls.append(model.backbone.stitch_id),
                                                                          real_evaluate(model, *a, **k))[1])
    record = train_cli.main(eval_args)["report"]
    assert len(record["stitches"]) == NUM_STITCHES and len(calls) == NUM_STITCHES - 5
    for k, row in partial.items():
        assert record["stitches"][k] == row  # finished stitches are not redone
    with open(out / REPORT / "stitch_report.csv") as f:
        assert len(f.readlines()) == NUM_STITCHES + 1
    # the Pareto frontier of this report, evaluated again: nothing new to compute
    calls.clear()
    pareto = train_cli.main(cli_args(data_root, out, "--eval-only", "--stitch", "pareto",
                                     opts=["test.flip=false", "test.share_prefixes=false"]))
    assert calls == [] and 1 <= len(pareto["report"]["stitches"]) == NUM_STITCHES
    with pytest.raises(RuntimeError, match="another model or setting .flip False there vs True now"):
        train_cli.main(cli_args(data_root, out, "--eval-only", "--stitch", "0"))


@pytest.fixture(scope="module")
def trained(data_root, tmp_path_factory):
    """The checkpoint of a 1-epoch run of the tiny config."""
    out = tmp_path_factory.mktemp("trained")
    train_cli.main(cli_args(data_root, out, "--stitch", "none", opts=["train.epochs=1"]))
    return out / "model_final.pth"


def evaluate_cli(data_root, checkpoint, eval_dir, *opts, launcher=(), launcher_output=None):
    """``--eval-only --stitch all`` of ``checkpoint`` into ``eval_dir``: in this process, or as a child under
    ``launcher`` (e.g. torchrun; its stderr is appended to ``launcher_output``); returns the rows of
    stitch_results.json."""
    argv = cli_args(data_root, eval_dir.parent / "out", "--eval-only", "--stitch", "all", "--report-dir", eval_dir,
                    opts=[f"train.init_checkpoint={checkpoint}", *opts])
    if launcher:
        env = dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()), HF_HUB_OFFLINE="1", MPLBACKEND="Agg")
        script = os.path.join(REPO, "projects", "snnet_dpt", "train.py")
        proc = subprocess.run([*launcher, script, *map(str, argv)], cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert launcher_output is not None
        launcher_output.append(proc.stdout + proc.stderr)
    else:
        train_cli.main(argv)
    with open(eval_dir / "stitch_results.json") as f:
        return json.load(f)["stitches"]


def test_grouped_evaluation_gives_the_rows_of_the_per_stitch_loop(data_root, trained, tmp_path, monkeypatch):
    per_stitch = evaluate_cli(data_root, trained, tmp_path / "each", "test.share_prefixes=false")
    assert len(per_stitch) == NUM_STITCHES
    trie_passes = []  # per run_stitches call: the stitch ids asked, the dense features of each stitch in its order
    embeds, reassembles = [], []  # True for each patch embedding / head reassembly run inside a trie pass
    in_pass = [False]
    real_run_stitches, real_embed, real_reassemble = model_module.run_stitches, PatchEmbed.forward, Reassemble.forward

    def recording_run_stitches(net, images, ids):
        trie_passes.append((list(ids), []))
        in_pass[0] = True
        for stitch_id, out in real_run_stitches(net, images, ids):
            trie_passes[-1][1].append(out.features)
            yield stitch_id, out
        in_pass[0] = False

    monkeypatch.setattr(model_module, "run_stitches", recording_run_stitches)
    monkeypatch.setattr(PatchEmbed, "forward", lambda self, x: (embeds.append(in_pass[0]), real_embed(self, x))[1])
    monkeypatch.setattr(Reassemble, "forward",
                        lambda self, *a: (reassembles.append(in_pass[0]), real_reassemble(self, *a))[1])
    grouped = evaluate_cli(data_root, trained, tmp_path / "grouped", "test.stitch_group_size=5")
    assert grouped == per_stitch  # float-equal, flip TTA included
    # 3 groups x 2 batches x (image, mirrored); the per-stitch loop runs 14 x 2 x 2 embeddings and 4 x as many
    # reassemblies
    assert [len(ids) for ids, _ in trie_passes] == [5] * 4 + [5] * 4 + [4] * 4
    snnet = build_model(train_cli.model_spec(train_cli.load_config(TINY, []))).backbone
    # the patch embedding runs once per pass and anchor
    assert sum(embeds) == sum(len({id(snnet.plan(s).embed) for s in ids}) for ids, _ in trie_passes) < 14 * 2 * 2
    # a dense feature is reassembled once for the stitches that receive it one after another
    changes = sum(previous is None or feature is not previous[stage] for _, features in trie_passes
                  for previous, current in zip([None] + features, features) for stage, feature in enumerate(current))
    assert sum(reassembles) == changes < 14 * 2 * 2 * 4


class PoisonedFrames:
    """The test frames of ``frames`` with a NaN pixel in frame ``bad`` (as a float image file or a corrupt decode
    would give)."""

    def __init__(self, frames, bad):
        self.frames, self.bad = frames, bad

    def __len__(self):
        return len(self.frames)

    def frame_keys(self):
        return self.frames.frame_keys()

    def read(self, i):
        image, depth = self.frames.read(i)
        if i == self.bad:
            image = image.astype(np.float32)
            image[5, 7, 1] = np.nan
        return image, depth


def test_test_images_holding_nan_are_left_out_of_the_metrics_and_named_once(data_root, caplog):
    from torch.utils.data import DataLoader, Subset

    from snnet_core.distributed import DistContext
    from snnet_core.evaluation.finite_inputs import NonFiniteImages

    torch.manual_seed(0)
    model = build_model(train_cli.model_spec(train_cli.load_config(TINY, []))).eval()
    frames = build_nyu_split("sync", data_root, "test")
    poisoned = DataLoader(Subset(DepthDataset(PoisonedFrames(frames, 1)), [0, 1, 2, 3]), batch_size=2)
    clean = DataLoader(Subset(DepthDataset(frames), [0, 2, 3]), batch_size=2)
    ctx, record = DistContext(), NonFiniteImages()
    model.backbone.set_stitch(0)
    with caplog.at_level(logging.WARNING, logger=evaluation.__name__):
        metrics = evaluation.evaluate(model, poisoned, ctx, non_finite=record)
        grouped = evaluation.evaluate_group(model, poisoned, [0, 3], ctx, non_finite=record)
    warnings = [r.getMessage() for r in caplog.records if "NaN or inf" in r.getMessage()]
    assert warnings == [f"1 test image(s) hold NaN or inf values and are left out of the evaluation: "
                        f"{frames.frame_keys()[1]}. Every stitch's metrics are over the other test images. They come "
                        "from a float image file or a corrupt decode: repair or remove them"]  # once for both passes
    expected = evaluation.evaluate(model, clean, ctx)
    model.backbone.set_stitch(3)
    expected_3 = evaluation.evaluate(model, clean, ctx)
    for got, want in ((metrics, expected), (grouped[0], expected), (grouped[3], expected_3)):
        assert all(np.isfinite(v) for v in got.values()) and got.keys() == want.keys()
        np.testing.assert_allclose([got[k] for k in want], [want[k] for k in want], rtol=1e-4)


@pytest.mark.parametrize("opt, stitches_per_batch", [("test.share_prefixes=false", [1] * NUM_STITCHES),
                                                     ("test.stitch_group_size=5", [5, 5, 4])])
def test_the_report_bar_counts_images_x_stitches_and_moves_per_batch(data_root, trained, tmp_path, progress_bars,
                                                                       opt, stitches_per_batch):
    evaluate_cli(data_root, trained, tmp_path / "eval", opt, "test.batch_size=3")  # 4 test images: batches 3, 1
    (bar,) = progress_bars
    assert bar.desc.startswith(f"evaluating {NUM_STITCHES} stitches x 4 images")
    assert (bar.total, bar.n) == (NUM_STITCHES * 4, NUM_STITCHES * 4)
    assert bar.updates == [n * b for n in stitches_per_batch for b in (3, 1)]  # per batch of each pass


def test_two_process_grouped_evaluation_deals_the_groups_and_gives_the_rows_of_one_process(data_root, trained,
                                                                                          tmp_path):
    one = evaluate_cli(data_root, trained, tmp_path / "one", "test.stitch_group_size=3")
    output = []
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29733"]
    two = evaluate_cli(data_root, trained, tmp_path / "two", "test.stitch_group_size=3", launcher=torchrun,
                       launcher_output=output)
    assert "14 stitches in 5 groups of up to 3, one pass over the test set each, in 3 rounds over 2" in output[0]
    assert two == one  # each stitch computed by one rank exactly as by one process; rank 0 wrote every row


def test_two_process_ddp_trains_the_same_stitch_on_both_ranks(data_root, tmp_path):
    """Two processes started as detectron2 starts them (``--num-gpus 2``: ``launch``, gloo on CPU); the grouped
    evaluation test above runs under torchrun."""
    out = tmp_path / "ddp"
    cmd = [sys.executable, os.path.join(REPO, "projects", "snnet_dpt", "train.py"),
           *cli_args(data_root, out, "--num-gpus", "2", "--dist-url", "auto", "--stitch", "0,1", "--export-stitch",
                     "7", opts=["train.epochs=2", "train.batch_size=4", "train.device=cpu"])]
    env = dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()), HF_HUB_OFFLINE="1")
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    steps = [r for r in read_metrics(out) if "total_loss" in r]  # rank 0 writes metrics.json
    assert [r["iteration"] for r in steps] == list(range(2 * 8 // 2))  # 16 frames, 2 per rank per step
    assert len({route_of(r) for r in steps}) > 2
    # every rank logs each epoch's mean loss, parameter checksum and stitch sequence (rank 1 into log.txt.rank1)
    epoch_line = re.compile(r"epoch (\d)/2 \(iteration \d+\): mean loss ([\d.]+), parameter checksum (\S+), "
                            r"stitch sequence (\w+)")
    epochs = [epoch_line.findall((out / name).read_text()) for name in ("log.txt", "log.txt.rank1")]
    assert [e[0] for e in epochs[0]] == [e[0] for e in epochs[1]] == ["1", "2"]
    assert [e[2:] for e in epochs[0]] == [e[2:] for e in epochs[1]]  # same stitches, replicas stay identical
    assert all(a[1] != b[1] for a, b in zip(*epochs))  # each rank saw its own frames
    with open(out / REPORT / "stitch_results.json") as f:
        assert sorted(json.load(f)["stitches"]) == ["0", "1"]
    exported = load_exported_model(str(out / "stitch_7" / "model_final.pth"))
    trained = build_model(training.read_checkpoint_header(str(out / "model_final.pth"))["spec"]).eval()
    training.load_checkpoint(str(out / "model_final.pth"), trained)
    trained.backbone.set_stitch(7)
    image, _ = DepthDataset(build_nyu_split("sync", data_root, "test"))[0]
    with torch.no_grad():
        depth = exported(image[None])
        assert depth.shape == (1, 1, 64, 80) and torch.allclose(depth, trained(image[None]), atol=1e-5)


def test_more_processes_than_visible_gpus_are_refused_before_any_starts(monkeypatch, tmp_path):
    """``--num-gpus 4`` on a machine without GPUs: one clear error before any process is spawned (CPU processes
    need ``train.device=cpu``, as the two-process test above passes)."""
    def no_launch(*args, **kwargs):
        pytest.fail("processes were launched")

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.setattr("detectron2.engine.launch", no_launch)
    monkeypatch.setattr(train_cli, "launch", no_launch, raising=False)
    with pytest.raises(ValueError, match=r"4 GPUs asked, 0 visible: use --num-gpus 1 on CPU, or pass "
                                         r"train\.device=cpu to start 4 CPU processes"):
        train_cli.cli(["--config-file", TINY, "--num-gpus", "4", f"train.output_dir={tmp_path / 'run'}"])
    assert not (tmp_path / "run").exists()


def test_clear_errors_for_bad_inputs(data_root, tmp_path):
    with pytest.raises(FileNotFoundError, match="nyu_depth_v2_labeled.mat"):
        train_cli.main(cli_args(str(tmp_path), tmp_path / "a"))
    missing = [str(tmp_path / "nope_small.pth"), str(tmp_path / "nope_large.pth")]
    with pytest.raises(FileNotFoundError, match="nope_small.pth"):
        train_cli.main(cli_args(data_root, tmp_path / "b", opts=[f"model.pretrained=[{missing[0]},{missing[1]}]"]))
    with pytest.raises(KeyError, match="unknown stitch id 99"):
        train_cli.main(cli_args(data_root, tmp_path / "c", "--stitch", "0,99"))
    with pytest.raises(FileNotFoundError, match="stitch_results.json"):
        train_cli.main(cli_args(data_root, tmp_path / "d", "--stitch", "pareto"))
    with pytest.raises(ValueError, match="dataloader.eval_size is 480x640"):
        train_cli.main(cli_args(data_root, tmp_path / "e", opts=["dataloader.eval_size=[480,640]"]))
    with pytest.raises(FileNotFoundError, match=r"--eval-only: .*last_checkpoint does not exist.*init_checkpoint"):
        train_cli.main(cli_args(data_root, tmp_path / "f", "--eval-only"))
    with pytest.raises(ValueError, match="train.init_checkpoint='x.pth' is not valid: expected empty: it names the "
                                         "checkpoint --eval-only evaluates"):
        train_cli.main(cli_args(data_root, tmp_path / "f", opts=["train.init_checkpoint=x.pth"]))
    with pytest.raises(KeyError, match="no key 'optimizer.learning_rate'"):
        train_cli.main(cli_args(data_root, tmp_path / "g", opts=["optimizer.learning_rate=1e-3"]))
    with pytest.raises(ValueError, match="put flags before the overrides"):
        train_cli.main(cli_args(data_root, tmp_path / "h", opts=["--eval-only"]))
    with pytest.raises(ValueError, match="--eval-only evaluates a checkpoint and trains nothing: drop --resume"):
        train_cli.main(cli_args(data_root, tmp_path / "h", "--eval-only", "--resume"))
    with pytest.raises(ValueError, match="train.batch_size=3 .* not divisible"):
        train_cli.recipe_from_config(train_cli.load_config(TINY, ["train.batch_size=3"]), world_size=2)
    with pytest.raises(ValueError, match=r"param_rules\['backbone'\] has unknown fields \['lr'\]"):
        training.param_groups(torch.nn.Linear(2, 2), 1e-3, 0.01, {"backbone": {"lr": 0.1}})
    for name in "abcdefgh":
        assert not os.path.exists(tmp_path / name)  # nothing written


def test_default_config_is_the_paper_recipe_and_fails_fast_without_data(tmp_path, monkeypatch):
    assert train_cli.parse_args(["--stitch", "all"]).config_file == PAPER
    cfg = train_cli.load_config(PAPER, [])
    recipe = train_cli.recipe_from_config(cfg, world_size=4)
    assert (recipe.lr, recipe.epochs, recipe.batch_size, recipe.clip_grad, recipe.ls_init_images) == (
        2e-5, 24, 16, 35.0, 100)
    assert cfg["model"]["lora_rank"] == 4 and cfg["model"]["lora_alpha"] == 1.0
    monkeypatch.chdir(tmp_path)  # no data/nyu here
    with pytest.raises(FileNotFoundError, match="nyudepthv2_train_files_with_gt.txt"):
        train_cli.main(["--stitch", "all"])
    assert not os.path.exists(tmp_path / "output")


def test_deit3_b_l_config_is_the_paper_recipe_with_deit3_b():
    paper, b_l = train_cli.load_config(PAPER, []), train_cli.load_config(PAPER_B_L, [])
    changed = {f"{s}.{k}" for s in paper for k in paper[s] if paper[s][k] != b_l[s][k]}
    assert changed == {"model.anchors", "model.pretrained", "train.output_dir"}
    assert b_l["model"]["anchors"] == ["deit3_base_patch16_224", "deit3_large_patch16_224"]
    assert b_l["model"]["pretrained"][0] == "checkpoints/deit_3_base_224_21k.pth"
    assert b_l["model"]["lora_rank"] == 4  # paper Sec. 5.3 and upstream's B/L config (its S/L config: 16)
    spec = train_cli.model_spec(b_l)
    with torch.device("meta"):
        model = build_model(spec)
    assert model.backbone.embed_dims == (768, 1024) and model.backbone.fast_out_indices == (2, 5, 8, 11)


def test_snnetv1_config_is_the_paper_recipe_in_snnetv1s_space_sampling_and_layers():
    paper, v1 = train_cli.load_config(PAPER, []), train_cli.load_config(PAPER_V1, [])
    changed = {f"{s}.{k}" for s in paper for k in paper[s] if paper[s][k] != v1[s][k]}
    assert changed == {"model.route_types", "model.lora_rank", "train.sampling", "train.output_dir"}
    assert (v1["model"]["route_types"], v1["model"]["lora_rank"], v1["train"]["sampling"]) == (
        ["anchor", "FS"], 0, "uniform")
    assert paper["model"]["route_types"] == ["anchor", "FS", "SF", "FSF", "SFS"] and paper["train"]["sampling"] == "ros"


def test_snnetv1_space_trains_uniformly_and_eval_only_and_resume_keep_the_recorded_space(data_root, tmp_path):
    out = tmp_path / "v1"
    v1 = ["model.route_types=[anchor,FS]", "train.sampling=uniform", "model.lora_rank=0", "train.epochs=1"]
    result = train_cli.main(cli_args(data_root, out, "--stitch", "all", opts=v1))
    fs_ids = [0, 1, 2, 3, 4]  # the anchors and the 3 FS stitches keep their ids of the 14-stitch space
    names = {0: "route_loss/fast_anchor", 1: "route_loss/slow_anchor", 2: "route_loss/FS", 3: "route_loss/FS",
             4: "route_loss/FS"}
    drawn = [names[UniformSampler(fs_ids, seed=0).sample(i)] for i in range(8)]  # train.seed=0
    assert [route_of(r) for r in read_metrics(out) if "total_loss" in r] == drawn
    assert sorted(map(int, result["report"]["stitches"])) == fs_ids
    state = torch.load(out / "model_final.pth", weights_only=True)
    assert state["sampler"]["type"] == "UniformSampler" and state["sampler"]["stitch_ids"] == fs_ids
    assert "uniform sampling over 5 stitches (route types anchor, FS) (train.sampling=uniform" in (
        out / "log.txt").read_text()
    # --eval-only of that checkpoint under the tiny config (all five route types): the space it was trained in
    record = train_cli.main(cli_args(data_root, out, "--eval-only", "--stitch", "all", "--report-dir",
                                     str(tmp_path / "again")))
    assert sorted(map(int, record["report"]["stitches"])) == fs_ids
    # a command-line model.route_types: some of the trained ones (a sub-space, ids kept); an untrained one refused
    anchors_only = train_cli.main(cli_args(data_root, out, "--eval-only", "--stitch", "all", "--report-dir",
                                           str(tmp_path / "anchors"), opts=["model.route_types=[anchor]"]))
    assert sorted(map(int, anchors_only["report"]["stitches"])) == [0, 1]
    with pytest.raises(ValueError, match=r"model.route_types=\['anchor', 'FS', 'SF'\]: .*model_final.pth was trained "
                                         r"without route types \['SF'\]"):
        train_cli.main(cli_args(data_root, out, "--eval-only", "--stitch", "all", "--report-dir",
                                str(tmp_path / "untrained"), opts=["model.route_types=[anchor,FS,SF]"]))
    for other, message in (([v1[0], "train.sampling=ros"], r"sampling: checkpoint uniform vs now ros"),
                           (v1[1:], r"route_types: checkpoint \['anchor', 'FS'\] vs now \['anchor', 'FS', 'SF'")):
        with pytest.raises(ValueError, match="cannot resume.*" + message):
            train_cli.main(cli_args(data_root, out, "--resume", "--stitch", "none", opts=[*v1[2:], *other]))


def test_command_line_overrides_and_the_tiny_config(tmp_path):
    paper, tiny = train_cli.load_config(PAPER, []), train_cli.load_config(TINY, [])
    changed = {f"{s}.{k}" for s in paper for k in paper[s] if paper[s][k] != tiny[s][k]}
    assert changed == {"model.pretrained", "model.anchor_overrides", "model.out_indices", "model.features",
                       "model.post_process_channels", "dataloader.root", "dataloader.layout", "dataloader.eval_size",
                       "dataloader.test_name",
                       "dataloader.augmentation", "dataloader.workers", "optimizer.lr", "train.output_dir",
                       "train.epochs", "train.batch_size", "train.loss_warmup_iters", "train.ls_init_images",
                       "train.flops_step"}
    assert {k for k, v in tiny["dataloader"]["augmentation"].items()
            if v != paper["dataloader"]["augmentation"][k]} == {"crop_size"}
    cfg = train_cli.load_config(TINY, ["optimizer.lr=5e-4", "dataloader.augmentation.crop_size=[32,32]",
                                       "lr_schedule.shared_max_lr=false", "optimizer.param_rules.backbone.lr_mult=0.5",
                                       f"train.output_dir={tmp_path}", "test.max_images=3"])
    recipe = train_cli.recipe_from_config(cfg)
    assert recipe.lr == 5e-4 and recipe.augmentation["crop_size"] == [32, 32] and not recipe.shared_max_lr
    assert recipe.param_rules["backbone"] == {"lr_mult": 0.5}
    assert cfg["train"]["output_dir"] == str(tmp_path) and cfg["test"]["max_images"] == 3


def test_parameter_groups_follow_upstream_mmcv_rules():
    cfg = train_cli.load_config(TINY, ["dataloader.eval_size=[32,32]"])
    model = build_model(train_cli.model_spec(cfg))
    recipe = train_cli.recipe_from_config(cfg)
    groups = {g["name"]: g for g in training.build_optimizer(model, recipe).param_groups}
    group_of = {id(p): name for name, g in groups.items() for p in g["params"]}
    named = dict(model.named_parameters())
    lr, wd = recipe.lr, recipe.weight_decay

    def setting(name):
        g = groups[group_of[id(named[name])]]
        return g["name"], g["lr"] / lr, g["weight_decay"] / wd

    # the longest matching key decides alone: pos_embed / cls_token keep lr x1 (no decay) inside the backbone
    assert setting("backbone.anchors.1.pos_embed") == ("pos_embed", 1.0, 0.0)
    assert setting("backbone.anchors.0.cls_token") == ("cls_token", 1.0, 0.0)
    # stitching layers (LoRA factors and bias) are backbone parameters: lr x0.1, decayed
    assert setting("backbone.stitch_s2l.0.lora_up") == ("backbone", pytest.approx(0.1), 1.0)
    assert setting("backbone.stitch_l2s.0.bias") == ("backbone", pytest.approx(0.1), 1.0)
    # upstream's LayerNorms matched only 'backbone' (mmseg names them ln1/ln2): decayed at lr x0.1
    assert setting("backbone.anchors.0.blocks.0.norm1.weight") == ("backbone", pytest.approx(0.1), 1.0)
    assert setting("head.output.conv3.bias") == ("default", 1.0, 1.0)
    assert id(named["backbone.stitch_s2l.0.weight"]) not in group_of  # frozen LS weight of LoRA SL
    assert training.match_param_rule("a.pos_embed.b", {"pos_embed": {}, "cls_token": {}, "a": {}}) == "pos_embed"
    assert training.match_param_rule("cls_token.pos_embed", {"pos_embed": {}, "cls_token": {}}) == "cls_token"

    def peak_lrs(shared):
        recipe.shared_max_lr = shared
        optimizer = training.build_optimizer(model, recipe)
        training.build_scheduler(optimizer, recipe, total_steps=10)
        return {g["name"]: g["max_lr"] / lr for g in optimizer.param_groups}, optimizer

    # upstream: mmcv's OneCycle gives every group the scalar max_lr (lr_mult is overwritten)
    shared, optimizer = peak_lrs(True)
    assert shared == {"backbone": 1.0, "cls_token": 1.0, "default": 1.0, "pos_embed": 1.0}
    assert all(g["lr"] == pytest.approx(lr / 25) and g["betas"] == (0.95, 0.999) for g in optimizer.param_groups)
    own, _ = peak_lrs(False)
    assert own == {"backbone": pytest.approx(0.1), "cls_token": 1.0, "default": 1.0, "pos_embed": 1.0}


def test_onecycle_momentum_cycles_beta1_as_mmcv():
    recipe = train_cli.recipe_from_config(train_cli.load_config(TINY, []))
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=recipe.lr, betas=recipe.betas)
    optimizer.param_groups[0]["name"] = "default"
    scheduler = training.build_scheduler(optimizer, recipe, total_steps=100)
    lrs, beta1 = [], []
    for _ in range(100):
        lrs.append(optimizer.param_groups[0]["lr"])
        beta1.append(optimizer.param_groups[0]["betas"][0])
        optimizer.step()
        scheduler.step()
    peak = int(np.argmax(lrs))
    assert peak == 29 and lrs[peak] == pytest.approx(recipe.lr)  # end of phase 1: pct_start * 100 - 1
    assert lrs[0] == pytest.approx(recipe.lr / 25) and lrs[-1] == pytest.approx(recipe.lr / 25 / 100)
    assert beta1[0] == beta1[-1] == pytest.approx(0.95) and beta1[peak] == pytest.approx(0.85)


@pytest.mark.parametrize("frame_size, crop_size", [((480, 640), (416, 544)), ((64, 80), (48, 64))])
def test_nyu_border_crop_comes_first(frame_size, crop_size):
    """Border rows/cols outside the NYU crop carry a marker depth that must never reach a training crop."""
    h, w = frame_size
    top, bottom, left, right = (round(v * s) for v, s in zip(NYU_CROP, (h / 480, h / 480, w / 640, w / 640)))
    depth = np.full((h, w), 5.0, np.float32)
    marker = 123.0
    depth[:top], depth[bottom:], depth[:, :left], depth[:, right:] = marker, marker, marker, marker
    image = np.full((h, w, 3), 100, np.uint8)
    seen = []
    for border_crop in (NYU_CROP, (0, 480, 0, 640)):  # the recipe's crop, and none
        aug = TrainAugmentation(crop_size=crop_size, border_crop=border_crop, rotate_prob=0.5, color_prob=0.0)
        seen.append(any((aug(image, depth, np.random.default_rng(s))[1] == marker).any() for s in range(40)))
    assert seen == [False, True]


def test_color_jitter_gamma_on_raw_values_as_the_toolbox():
    image = np.full((4, 4, 3), 100, np.uint8)
    depth = np.ones((4, 4), np.float32)
    rng_args = dict(crop_size=(4, 4), border_crop=(0, 480, 0, 640), rotate_prob=0.0, flip_prob=0.0, color_prob=1.0,
                    gamma=(1.1, 1.1), brightness=(1.0, 1.0), colour=(1.0, 1.0))
    raw = TrainAugmentation(**rng_args)(image, depth, np.random.default_rng(0))[0] * 127.5 + 127.5
    unit = TrainAugmentation(**rng_args, gamma_on_raw_values=False)(image, depth, np.random.default_rng(0))[0]
    assert float(raw[0, 0, 0]) == pytest.approx(100 ** 1.1, rel=1e-4)  # toolbox: 158.5
    assert float(unit[0, 0, 0] * 127.5 + 127.5) == pytest.approx(255 * (100 / 255) ** 1.1, rel=1e-4)  # BTS: 91.0


SOURCE = re.compile(r"#\s*(paper Sec\. [\dA]|upstream|toolbox|project)")


@pytest.mark.parametrize("path, least", [(PAPER, 16), (TINY, 16), (PAPER_B_L, 4)])
def test_every_config_value_names_its_source(path, least):
    with open(path) as f:
        text = f.read()
    comments = {tok.start[0]: tok.string for tok in tokenize.generate_tokens(io.StringIO(text).readline)
                if tok.type == tokenize.COMMENT}

    def is_container(node):
        return isinstance(node, ast.Dict) or (isinstance(node, ast.Call) and getattr(node.func, "id", "") == "dict")

    values = []  # (line, what) of every value assignment
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Assign) and not is_container(node.value):
            values.append((node.lineno, ast.unparse(node.targets[0])))
        elif isinstance(node, ast.keyword) and not is_container(node.value):
            values.append((node.lineno, node.arg))
        elif isinstance(node, ast.Dict):
            values += [(k.lineno, ast.unparse(k)) for k, v in zip(node.keys, node.values)]
    assert len(values) >= least
    missing = [f"line {line}: {what}" for line, what in values if not SOURCE.search(comments.get(line, ""))]
    assert not missing, f"{path}: values without a source comment: {missing}"


# ---------------------------------------------------------------------------------------------------- reliability
def file_states(directory):
    """{relative path: bytes} of every file under ``directory``."""
    states = {}
    for root, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                states[os.path.relpath(path, directory)] = f.read()
    return states


def test_a_second_training_never_touches_the_run_in_its_output_dir(data_root, tmp_path):
    out = tmp_path / "run"
    train_cli.main(cli_args(data_root, out, "--stitch", "0", opts=["train.epochs=1"]))
    first = file_states(out)
    assert {"model_final.pth", "last_checkpoint", "config.yaml", "log.txt", "metrics.json",
            f"{REPORT}/stitch_results.json"} <= set(first)
    with pytest.raises(FileExistsError, match=r"already holds a training run \(last_checkpoint, metrics.json, "
                                              r"model_final.pth.*--resume.*--overwrite.*another train.output_dir"):
        train_cli.main(cli_args(data_root, out, "--stitch", "0", opts=["train.epochs=1", "train.seed=1"]))
    assert file_states(out) == first  # checkpoint, log, config and report untouched
    # --overwrite replaces the run: one history in the log, a report of the new model only
    result = train_cli.main(cli_args(data_root, out, "--overwrite", "--stitch", "1", opts=["train.epochs=1",
                                                                                           "train.seed=1"]))
    assert [r["iteration"] for r in read_metrics(out) if "total_loss" in r] == list(range(8))
    assert sorted(result["report"]["stitches"]) == ["1"]
    log = (out / "log.txt").read_text()  # the second run's lines, in the file of the same name, in one process
    assert re.search(r"stitch +1 ", log) and not re.search(r"stitch +0 ", log)
    with open(out / "config.yaml") as f:
        assert yaml.safe_load(f)["train"]["seed"] == 1
    with pytest.raises(FileNotFoundError, match=r"--resume: .*last_checkpoint does not exist.*start afresh"):
        train_cli.main(cli_args(data_root, tmp_path / "empty", "--resume", "--stitch", "none"))
    (out / "last_checkpoint").write_text("../elsewhere.pth")  # a tampered tag is refused, not followed
    with pytest.raises(ValueError, match=r"--resume: .*last_checkpoint names '../elsewhere.pth', not a .pth file"):
        train_cli.main(cli_args(data_root, out, "--resume", "--stitch", "none", opts=["train.seed=1"]))


def test_report_is_keyed_on_the_checkpoint_content_and_the_metric_settings(data_root, tmp_path):
    for seed in (0, 1):
        train_cli.main(cli_args(data_root, tmp_path / f"model{seed}", "--stitch", "none",
                                opts=["train.epochs=1", f"train.seed={seed}"]))
    shared = tmp_path / "shared_eval"
    ckpt = tmp_path / "evaluated.pth"  # one path, two models in turn: the path does not identify the weights
    os.link(tmp_path / "model0" / "model_final.pth", ckpt)

    def evaluate(*flags, report=shared, opts=()):
        return train_cli.main(cli_args(data_root, tmp_path / "eval_out", "--eval-only", "--report-dir", report, *flags,
                                       opts=[f"train.init_checkpoint={ckpt}", *opts]))

    first = evaluate("--stitch", "0")["report"]
    assert re.fullmatch(r"weights=sha256:[0-9a-f]{16}\|test_set=.*nyu_depth_v2_labeled.mat \(rawDepths.*\|images=4"
                        r"\|eval_size=64x80\|eigen_crop=6,63,5,75\|flip=True\|amp=False", first["run_key"])
    os.remove(ckpt)
    os.link(tmp_path / "model1" / "model_final.pth", ckpt)
    with pytest.raises(RuntimeError, match=r"another model or setting \(weights sha256:\w+ there vs sha256:\w+ now\)"):
        evaluate("--stitch", "1")
    for setting, differs in (("test.max_images=2", "images 4 there vs 2 now"), ("dataloader.depth_source=filled",
                                                                               "test_set .*depths")):
        with pytest.raises(RuntimeError, match=differs):
            evaluate("--stitch", "1", opts=[setting])
    with open(shared / "stitch_results.json") as f:
        assert json.load(f) == json.loads(json.dumps(first))  # the first model's report, untouched
    real_load = train_cli.load_checkpoint

    def replaced_while_read(path, *a, **k):  # a training run renames a new checkpoint over the evaluated one
        os.remove(ckpt)
        os.link(tmp_path / "model0" / "model_final.pth", ckpt)
        return real_load(path, *a, **k)

    os.remove(ckpt)
    os.link(tmp_path / "model1" / "model_final.pth", ckpt)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(train_cli, "load_checkpoint", replaced_while_read)
        with pytest.raises(RuntimeError, match="evaluated.pth' was replaced while it was read"):
            evaluate("--stitch", "0", report=tmp_path / "other_eval")
    # a training run refuses, before training, to evaluate into a directory holding another model's report
    with pytest.raises(FileExistsError, match="stitch_results.json holds the per-stitch report of another model"):
        train_cli.main(cli_args(data_root, tmp_path / "model2", "--stitch", "0", "--report-dir", shared,
                                opts=["train.epochs=1"]))
    assert not os.path.exists(tmp_path / "model2")


@pytest.mark.parametrize("override, error, message", [
    ("test.max_images=0", ValueError, r"test.max_images=0 is not valid: expected None \(every test frame\)"),
    ("optimizer.lr=-1e-4", ValueError, r"optimizer.lr=-0.0001 is not valid: expected a finite number > 0"),
    ("optimizer.lr=0", ValueError, r"optimizer.lr=0 is not valid"),
    ("optimizer.lr=nan", ValueError, r"optimizer.lr=nan is not valid"),
    ("train.epochs=0", ValueError, r"train.epochs=0 is not valid: expected an integer >= 1"),
    ("train.log_period=0", ValueError, r"train.log_period=0 is not valid: expected an integer >= 1"),
    ("dataloader.test_name=../x", ValueError, r"dataloader.test_name='../x' is not valid: expected a name without '/'"),
    ("model.anchors=[resnet18,resnet18]", ValueError, r"model.anchors\[0\]='resnet18' is a timm ResNet, not a "
                                                      r"VisionTransformer"),
    ("model.anchors=[deit3_tiny,deit3_large_patch16_224]", ValueError, "'deit3_tiny' is not a timm model name"),
    ("model.route_types=[anchor,XY]", ValueError, r"model.route_types=\['anchor', 'XY'\] is not valid: expected a "
                                                  r"list of distinct values from 'anchor', 'FS', 'SF', 'FSF', 'SFS'"),
    ("model.route_types=[FS]", ValueError, r"model.route_types=\['FS'\] is not valid: .*holding 'anchor'"),
    ("train.sampling=random", ValueError, r"train.sampling='random' is not valid: expected one of 'ros', 'uniform'"),
])
def test_settings_that_would_train_or_evaluate_something_else_fail_first(data_root, tmp_path, override, error,
                                                                          message):
    with pytest.raises(error, match=message):
        train_cli.main(cli_args(data_root, tmp_path / "out", opts=[override]))
    assert not os.path.exists(tmp_path / "out")


def test_overlapping_splits_and_depth_in_millimetres_fail_before_training(data_root, tmp_path):
    overlapping = tmp_path / "overlapping"
    overlapping.mkdir()
    os.symlink(os.path.join(data_root, "nyu_depth_v2_labeled.mat"), overlapping / "nyu_depth_v2_labeled.mat")
    splits = scipy.io.loadmat(os.path.join(data_root, "splits.mat"))
    scipy.io.savemat(overlapping / "splits.mat",
                     {"trainNdxs": splits["trainNdxs"], "testNdxs": splits["trainNdxs"][:3]})
    with pytest.raises(ValueError, match=r"3 of the 3 test frames are training frames too .*overlap"):
        train_cli.main(cli_args(str(overlapping), tmp_path / "a"))
    millimetres = tmp_path / "millimetres"
    frames = build_nyu_split("mat", data_root, "train")
    loaded = [frames.read(i) for i in range(len(frames))]
    write_labeled_mat(str(millimetres / "nyu_depth_v2_labeled.mat"), [(im, d * 1000) for im, d in loaded],
                      [d * 1000 for _, d in loaded])
    write_splits_mat(str(millimetres / "splits.mat"), range(12), range(12, 16))
    with pytest.raises(ValueError, match=r"median depth \d+ is above model.max_depth=10.0 m; .*millimetres"):
        train_cli.main(cli_args(str(millimetres), tmp_path / "b"))
    assert not os.path.exists(tmp_path / "a") and not os.path.exists(tmp_path / "b")


def test_non_finite_loss_names_the_iteration_the_stitch_and_what_to_check(data_root, tmp_path, monkeypatch):
    real_item = DepthDataset.__getitem__

    def inf_depth(self, i):
        image, depth = real_item(self, i)
        return image, depth.masked_fill(depth > 3, float("inf"))

    monkeypatch.setattr(DepthDataset, "__getitem__", inf_depth)
    with pytest.raises(FloatingPointError, match=r"loss is (inf|nan) at epoch 0, iteration 0 \(stitch \d+, .*\): the "
                                                 r"ground-truth depth of this batch holds inf/NaN"):
        train_cli.main(cli_args(data_root, tmp_path / "a", "--stitch", "none", opts=["train.ls_init_images=0"]))
    monkeypatch.setattr(DepthDataset, "__getitem__", real_item)
    real_forward = model_module.DPTDepthModel.forward
    monkeypatch.setattr(model_module.DPTDepthModel, "forward",
                        lambda self, images: real_forward(self, images) * float("nan"))
    with pytest.raises(FloatingPointError, match=r"iteration 0 .*the prediction is not finite .*lower optimizer.lr"):
        train_cli.main(cli_args(data_root, tmp_path / "b", "--stitch", "none", opts=["train.ls_init_images=0"]))


def test_eval_only_names_a_truncated_checkpoint_and_says_it_ignores_pretrained(data_root, tmp_path):
    out = tmp_path / "run"
    train_cli.main(cli_args(data_root, out, "--stitch", "none", opts=["train.epochs=1"]))
    with open(out / "model_final.pth", "rb") as f:
        data = f.read()
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(RuntimeError, match=r"truncated.pth.* is truncated or corrupt"):
        train_cli.main(cli_args(data_root, out, "--eval-only", "--stitch", "0",
                                opts=[f"train.init_checkpoint={truncated}"]))
    missing = [str(tmp_path / "gone_small.pth"), str(tmp_path / "gone_large.pth")]
    result = train_cli.main(cli_args(data_root, out, "--eval-only", "--stitch", "0",
                                     opts=[f"model.pretrained=[{missing[0]},{missing[1]}]"]))
    assert sorted(result["report"]["stitches"]) == ["0"]
    log = (out / "log.txt").read_text()  # logged before the run's checks had passed, written to log.txt after
    assert "gone_small.pth" in log and "it is not read: with --eval-only every weight comes from" in log


def test_stitch_selections_that_evaluate_nothing_twice_or_another_tasks_frontier_are_refused(data_root, tmp_path):
    out = tmp_path / "run"
    train_cli.main(cli_args(data_root, out, "--stitch", "none", opts=["train.epochs=1"]))
    with pytest.raises(ValueError, match="names no stitch"):
        train_cli.main(cli_args(data_root, out, "--eval-only", "--stitch", ","))
    calls = []
    real_evaluate_group = evaluation.evaluate_group
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(evaluation, "evaluate_group", lambda model, loader, ids, *a: (calls.append(list(ids)),
                                                                                real_evaluate_group(model, loader, ids,
                                                                                                    *a))[1])
        record = train_cli.main(cli_args(data_root, out, "--eval-only", "--stitch", "3,3,3"))["report"]
    assert calls == [[3]] and sorted(record["stitches"]) == ["3"] and record["task"] == "depth"
    detection = tmp_path / "detection"  # a detection report of the same stitch space
    model = build_model(train_cli.model_spec(train_cli.load_config(TINY, [])))
    flops = train_cli.depth_flops_table(model, (64, 80))
    evaluate_stitches(lambda sid: {"bbox_AP": float(sid)}, [0, 1], model.backbone.space, flops, str(detection),
                      "bbox_AP", task="detection", progress=False)
    with pytest.raises(ValueError, match="is a detection report .*not a depth one"):
        train_cli.main(cli_args(data_root, out, "--eval-only", "--stitch", "pareto", "--pareto-from",
                                detection / "stitch_results.json", "--report-dir", tmp_path / "pareto"))
    with pytest.raises(SelectionError, match="is a detection report .*not a depth one"):
        train_cli.main(cli_args(data_root, out, "--eval-only", "--stitch", "none", "--report-dir", detection,
                                "--export-stitch", "best:1"))


# ---------------------------------------------------------------------------------------- layout, defaults, exports
def test_training_writes_detectron2s_output_layout_and_keeps_max_to_keep_checkpoints(data_root, tmp_path):
    out = tmp_path / "run"
    loggers = [logging.getLogger(name) for name in ("projects.snnet_dpt", "snnet_core", "detectron2")]
    before = [(lg.handlers[:], lg.level, lg.propagate) for lg in loggers]
    train_cli.main(cli_args(data_root, out, "--stitch", "none",
                            opts=["train.epochs=4", "train.log_period=3", "train.max_to_keep=2"]))
    assert [(lg.handlers, lg.level, lg.propagate) for lg in loggers] == before  # main leaves logging as it was
    names = set(os.listdir(out))
    assert {"config.yaml", "log.txt", "metrics.json", "last_checkpoint", "flops_cache"} <= names
    assert len([n for n in names if n.startswith("events.out.tfevents.")]) == 1
    # epochs of 8 iterations end at iterations 7, 15, 23, 31: the newest two periodic checkpoints and the final one
    assert sorted(n for n in names if n.startswith("model_")) == ["model_0000015.pth", "model_0000023.pth",
                                                                  "model_final.pth"]
    assert (out / "last_checkpoint").read_text() == "model_final.pth"
    headers = {n: training.read_checkpoint_header(str(out / n)) for n in ("model_0000015.pth", "model_final.pth")}
    assert [(h["epoch"], h["iteration"], h["eval_size"]) for h in headers.values()] == [(2, 16, (64, 80)),
                                                                                        (4, 32, (64, 80))]
    metrics = read_metrics(out)
    # every 3rd iteration, and the end of every epoch with its mean loss and parameter checksum
    assert [r["iteration"] for r in metrics if "total_loss" in r] == sorted(
        {i for i in range(32) if (i + 1) % 3 == 0} | {7, 15, 23, 31})
    assert [r["iteration"] for r in metrics if "epoch/mean_silog" in r and "epoch/param_checksum" in r] == [
        7, 15, 23, 31]
    assert all("lr" in r and r[route_of(r)] == r["total_loss"] for r in metrics if "total_loss" in r)
    routes = {k for r in metrics for k in r if k.startswith("route_loss/")}
    assert len(routes) >= 3 and routes <= {f"route_loss/{t}" for t in ("fast_anchor", "slow_anchor", "FS", "SF",
                                                                       "FSF", "SFS")}
    assert not any("stitch" in k for r in metrics for k in r)  # no stitch-id curve
    log = (out / "log.txt").read_text()
    assert "epoch 4/4 (iteration 32): mean loss" in log and "total_loss: " in log  # detectron2's printer too
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out))
    events.Reload()
    assert {"total_loss", "lr", "epoch/mean_silog"} | routes <= set(events.Tags()["scalars"])
    # --resume of a finished run trains nothing and logs nothing more
    train_cli.main(cli_args(data_root, out, "--resume", "--stitch", "none",
                            opts=["train.epochs=4", "train.log_period=3", "train.max_to_keep=2"]))
    assert read_metrics(out) == metrics and len([n for n in os.listdir(out) if n.startswith("events.")]) == 1
    with pytest.raises(ValueError, match=r"train.max_to_keep=0 is not valid"):
        train_cli.main(cli_args(data_root, tmp_path / "x", opts=["train.max_to_keep=0"]))


@pytest.fixture(scope="module")
def nyu_128x160(tmp_path_factory):
    """Synthetic NYUv2 at the tiny config's own size, 128x160."""
    root = str(tmp_path_factory.mktemp("nyu_128x160"))
    make_synthetic_nyu(root, num_train=8, num_test=2, size=(128, 160), seed=1)
    return root


def test_eval_only_evaluates_what_last_checkpoint_names_at_the_size_it_was_trained_at(data_root, nyu_128x160,
                                                                                      tmp_path):
    out = tmp_path / "run"
    train_cli.main(cli_args(data_root, out, "--stitch", "none", opts=["train.epochs=2"]))

    def evaluate(*flags, root=data_root, opts=()):
        """--eval-only without dataloader.eval_size on the command line (the tiny config says 128x160)."""
        argv = cli_args(root, out, "--eval-only", "--stitch", "0", *flags, opts=opts)
        argv.remove("dataloader.eval_size=[64,80]")
        return train_cli.main(argv)

    result = evaluate()
    assert result["checkpoint"] == str(out / "model_final.pth") and result["iteration"] == 16
    assert "|eval_size=64x80|" in result["report"]["run_key"]  # the checkpoint's size, not the config's 128x160
    assert "evaluating at 64x80, the dataloader.eval_size" in (out / "log.txt").read_text()
    (out / "last_checkpoint").write_text("model_0000007.pth")
    result = evaluate("--report-dir", tmp_path / "epoch1")
    assert result["checkpoint"] == str(out / "model_0000007.pth") and result["iteration"] == 8
    # the command line's size wins, with a warning naming both
    result = evaluate("--report-dir", tmp_path / "big", root=nyu_128x160, opts=["dataloader.eval_size=[128,160]"])
    assert "|eval_size=128x160|" in result["report"]["run_key"]
    assert re.search(r"WARNING: evaluating at 128x160 \(dataloader.eval_size on the command line\), not at 64x80, "
                     r"the size .*model_0000007.pth was trained at", (out / "log.txt").read_text())
    # a checkpoint that does not record its size is evaluated at the config's
    state = torch.load(out / "model_final.pth", weights_only=True)
    del state["eval_size"]
    torch.save(state, tmp_path / "older.pth")
    with pytest.raises(ValueError, match="test frames are 64x80 but dataloader.eval_size is 128x160"):
        evaluate(opts=[f"train.init_checkpoint={tmp_path / 'older.pth'}"])


def test_pareto_from_report_dir_and_exports_of_the_frontier_and_of_a_budget(data_root, trained, tmp_path):
    full = tmp_path / "full"
    rows = evaluate_cli(data_root, trained, full)  # every stitch, into --report-dir full
    frontier = sorted(pareto_frontier({int(k): r["gflops"] for k, r in rows.items()},
                                      {int(k): r["a1"] for k, r in rows.items()}, True))
    assert 1 <= len(frontier) < NUM_STITCHES
    out = tmp_path / "out"
    result = train_cli.main(cli_args(data_root, out, "--eval-only", "--stitch", "pareto", "--pareto-from",
                                     full / "stitch_results.json", "--report-dir", tmp_path / "front",
                                     "--export-stitch", "pareto", opts=[f"train.init_checkpoint={trained}"]))
    assert sorted(int(k) for k in result["report"]["stitches"]) == frontier  # exactly full's frontier, into front/
    assert result["export"] == [str(out / f"stitch_{sid}" / "model_final.pth") for sid in frontier]
    budget = sorted(r["gflops"] for r in rows.values())[NUM_STITCHES // 2]
    source, record = read_report(str(full))
    best = int(choose_stitch(record, source, max_gflops=budget).chosen["id"])
    result = train_cli.main(cli_args(data_root, out, "--eval-only", "--overwrite", "--stitch", "none", "--report-dir",
                                     full, "--export-stitch", f"best:{budget}",  # it may be on the frontier, exported
                                     opts=[f"train.init_checkpoint={trained}"]))
    assert result["export"] == [str(out / f"stitch_{best}" / "model_final.pth")]
    assert os.path.getsize(out / f"stitch_{best}" / "stitch_report.png") > 0  # the report, the export marked
    assert load_exported_model(result["export"][0]).backbone.stitch_id == best
    with pytest.raises(KeyError, match="unknown stitch id 99"):  # ids are checked before anything is computed
        train_cli.main(cli_args(data_root, tmp_path / "never", "--stitch", "none", "--export-stitch", "3,99"))
    assert not os.path.exists(tmp_path / "never")


def test_a_warm_flops_cache_trains_the_same_weights_as_a_cold_one(data_root, tmp_path):
    """Counting the FLOPs table draws random numbers (merged stitching layers); reading it from flops_cache/ does
    not: the same seed must give the same weights either way (--overwrite keeps the cache)."""
    cold, warm = tmp_path / "cold", tmp_path / "warm"
    for out in (cold, warm):
        if out == warm:
            shutil.copytree(cold / "flops_cache", warm / "flops_cache")
        train_cli.main(cli_args(data_root, out, "--stitch", "none", opts=["train.epochs=1"]))
    weights = [torch.load(out / "model_final.pth", map_location="cpu", weights_only=True)["model"]
               for out in (cold, warm)]
    differ = [k for k in weights[0] if not torch.equal(weights[0][k], weights[1][k])]
    assert not differ, f"{len(differ)} of {len(weights[0])} tensors differ, e.g. {differ[:3]}"


def test_a_directory_in_use_is_refused_and_an_export_is_never_overwritten(data_root, trained, tmp_path):
    from snnet_core.io.run_dir import RunDirInUseError
    from tests.test_core_run_dir import hold_in_child

    out = tmp_path / "out"
    child = hold_in_child(out)  # a training run holding out/
    try:
        for flags in (("--stitch", "none"), ("--eval-only", "--stitch", "0")):
            with pytest.raises(RunDirInUseError, match=rf"in use by another run, the process pid {child.pid} on "):
                train_cli.main(cli_args(data_root, out, *flags, opts=["train.epochs=1"]))
    finally:
        child.kill()
        child.wait()
    assert set(os.listdir(out)) == {"run.lock", "run.lock.json"}  # the refused runs wrote nothing
    export = ("--eval-only", "--stitch", "none", "--export-stitch", "3")
    opts = [f"train.init_checkpoint={trained}"]
    (path,) = train_cli.main(cli_args(data_root, out, *export, opts=opts))["export"]
    first = os.stat(path).st_ino
    with pytest.raises(FileExistsError, match=rf"--export-stitch would replace {path}, exported before: pass "
                                              "--overwrite to replace it, or move it away"):
        train_cli.main(cli_args(data_root, out, *export, opts=opts))
    assert os.stat(path).st_ino == first
    assert train_cli.main(cli_args(data_root, out, "--overwrite", *export, opts=opts))["export"] == [path]
    assert os.stat(path).st_ino != first  # replaced, as asked
    with pytest.raises(FileNotFoundError, match=r"--export-stitch best:1 chooses from the per-stitch report, and "
                                                r".*stitch_results.json does not exist \(this run evaluates no stitch"):
        train_cli.main(cli_args(data_root, tmp_path / "fresh", "--stitch", "none", "--export-stitch", "best:1"))
    assert not os.path.exists(tmp_path / "fresh")  # refused before training


@pytest.mark.parametrize("rank, images", [(2, 0), (0, 4)])
def test_backbone_lora_rank_and_ls_init_images_reach_training(data_root, tmp_path, monkeypatch, rank, images):
    """``model.backbone_lora_rank=r`` trains the anchors' LoRA factors only and the checkpoint loads back with them;
    ``train.ls_init_images=0`` leaves the stitching layers at PyTorch's default init, N feeds LS init N images."""
    fed, start = spy_on_ls_init(monkeypatch, training)
    out = tmp_path / "run"
    train_cli.main(cli_args(data_root, out, "--stitch", "none", opts=[
        "train.epochs=1", "train.batch_size=8", f"model.backbone_lora_rank={rank}", f"train.ls_init_images={images}"]))
    with open(out / "log.txt") as f:
        log = f.read()
    model = load_depth_model(str(out / "model_final.pth"))
    assert model.backbone.backbone_lora_rank == rank
    end = model.state_dict()
    factors = [k for k in end if k.startswith("backbone.anchors.") and k.endswith(("lora_down", "lora_up"))]
    anchor_weights = [k for k in end if k.startswith("backbone.anchors.") and k not in factors]
    moved = {k for k in end if not torch.equal(end[k], start[k])}
    stitch_weights = [k for k in end if k.startswith("backbone.stitch_") and k.endswith(".weight")]
    check_backbone_lora_log(log, rank)
    if rank:
        assert factors and moved & set(factors) and not moved & set(anchor_weights)
        assert not any(p.requires_grad for n, p in model.named_parameters()
                       if n.startswith("backbone.anchors.") and not n.endswith(("lora_down", "lora_up")))
        path = str(tmp_path / "stitch_5.pth")  # the export merges the factors: plain Linear layers, same depth
        save_exported_stitch(path, model, training.read_checkpoint_header(str(out / "model_final.pth"))["spec"], 5)
        exported, frames = load_exported_model(path), torch.rand(1, 3, 64, 80)
        assert not any(n.endswith(("lora_down", "lora_up")) for n in exported.state_dict())
        model.backbone.set_stitch(5)
        with torch.no_grad():
            torch.testing.assert_close(exported(frames), model(frames), rtol=1e-4, atol=1e-5)
    else:
        assert not factors and moved & set(anchor_weights)
    check_ls_init(log, images, fed, moved, stitch_weights)


def test_a_backbone_lora_run_resumes_exactly_and_refuses_another_rank(data_root, tmp_path, monkeypatch):
    opts = ["train.batch_size=8", "train.epochs=2", "model.backbone_lora_rank=2", "train.ls_init_images=4"]
    train_cli.main(cli_args(data_root, tmp_path / "straight", "--stitch", "none", opts=opts))
    real_epoch = training.train_one_epoch

    def stop_in_second_epoch(*a, **k):
        if a[10] == 1:  # epoch
            raise Interrupted
        return real_epoch(*a, **k)

    monkeypatch.setattr(training, "train_one_epoch", stop_in_second_epoch)
    with pytest.raises(Interrupted):
        train_cli.main(cli_args(data_root, tmp_path / "resumed", "--stitch", "none", opts=opts))
    monkeypatch.setattr(training, "train_one_epoch", real_epoch)
    with pytest.raises(ValueError, match="cannot resume.*backbone_lora_rank: checkpoint 2 vs now 4"):
        train_cli.main(cli_args(data_root, tmp_path / "resumed", "--stitch", "none", "--resume",
                                opts=[*opts, "model.backbone_lora_rank=4"]))
    train_cli.main(cli_args(data_root, tmp_path / "resumed", "--stitch", "none", "--resume", opts=opts))
    a = torch.load(tmp_path / "straight" / "model_final.pth", weights_only=True)
    b = torch.load(tmp_path / "resumed" / "model_final.pth", weights_only=True)
    assert a["iteration"] == b["iteration"] == 4 and any(k.endswith("lora_up") for k in a["model"])
    for part in ("model", "head"):
        for key, value in a[part].items():
            assert torch.equal(value, b[part][key]), key
