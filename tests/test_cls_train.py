"""The classification project end to end on a tiny synthetic ImageFolder (real JPEG files): training lowers the
loss, a resumed run ends with the uninterrupted run's weights, an upstream-layout checkpoint gives the engine's
logits per stitch, the report's top-1 is a direct count of saved logits, an exported stitch is a timm-style
classifier with the stitch's logits, and bad inputs fail before any work, naming the file."""
import argparse
import json
import math
import os
import re
import subprocess
import sys

import pytest
import torch
from torch.utils.data import DataLoader

from benchmarks import compare_upstream_cls
from datasets.make_synthetic_imagefolder import make_synthetic_imagefolder
from projects.snnet_cls import train as cls_train
from projects.snnet_cls.data import SeededSamples, read_split
from projects.snnet_cls.evaluation import UPSTREAM_ID, evaluate_stitches_in_memory
from projects.snnet_cls.export import load_classifier
from projects.snnet_cls.transforms import eval_transform
from snnet_core import classify_stitches, upstream_stitch_id
from snnet_core.model.checkpoint import load_snnet

TINY = os.path.join(os.path.dirname(cls_train.__file__), "configs", "synthetic", "snnetv2_tiny.py")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("imagefolder"))
    make_synthetic_imagefolder(root, num_train=32, num_val=4, size=32, classes=4, seed=0)
    return root


def run(data, output, *flags, epochs=8, extra=()):
    """``train.py`` in this process on the tiny config: 128 training images, 8 iterations of 16 per epoch."""
    return cls_train.main([*flags, "--config-file", TINY, f"dataloader.root={data}", f"train.output_dir={output}",
                           f"train.epochs={epochs}", "train.ls_init_images=16", *extra])


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    output = str(tmp_path_factory.mktemp("run"))
    return output, run(data, output, "--stitch", "none")


def val_batches(data):
    split = read_split(data, "val")
    return split, DataLoader(SeededSamples(split.samples, eval_transform(32)), batch_size=64)


def test_training_lowers_the_loss_on_the_training_images(data, trained):
    """CutMix and label smoothing keep the logged loss of a learning model near ln 4 (1.39 -> 1.36 over the 8 epochs
    here), too close to judge: the trained weights are compared with the initial ones (the run's seed, before LS
    init) on the training images without augmentation, cross-entropy and top-1 averaged over the 14 stitches."""
    output, result = trained
    with open(os.path.join(output, "metrics.json")) as f:
        losses = [row["epoch/mean_loss"] for row in map(json.loads, f) if "epoch/mean_loss" in row]
    assert len(losses) == 8 and all(math.isfinite(loss) for loss in losses)  # one per epoch
    cfg = cls_train.load_config(TINY, [])
    torch.manual_seed(cfg["train"]["seed"])
    initial = cls_train.build_model(cls_train.model_spec(cfg))
    split = read_split(data, "train")
    loader = DataLoader(SeededSamples(split.samples, eval_transform(32)), batch_size=128)
    before, after = (evaluate_stitches_in_memory(net.eval(), loader)
                     for net in (initial, load_snnet(result["checkpoint"])))

    def mean(rows, name):
        return sum(row[name] for row in rows.values()) / len(rows)

    assert len(after) == 14
    assert mean(after, "loss") < mean(before, "loss") - 0.04, (before, after)  # 1.389 -> 1.301 here
    assert mean(after, "acc1") > 35.0, (before, after)  # chance: 25 % (4 classes of 32 images); 43.6 here


def test_resume_after_a_kill_ends_with_the_uninterrupted_weights(data, trained, tmp_path, monkeypatch):
    output, _ = trained
    killed = str(tmp_path / "killed")
    real_prune, epochs = cls_train.prune_checkpoints, []

    def prune_then_die(directory, keep):  # after the 6th epoch's checkpoint is written and tagged
        epochs.append(directory)
        if len(epochs) == 6:
            raise KeyboardInterrupt("killed")
        return real_prune(directory, keep)

    monkeypatch.setattr(cls_train, "prune_checkpoints", prune_then_die)
    with pytest.raises(KeyboardInterrupt):
        run(data, killed, "--stitch", "none")
    monkeypatch.setattr(cls_train, "prune_checkpoints", real_prune)
    assert not os.path.exists(os.path.join(killed, "model_final.pth"))
    run(data, killed, "--resume", "--stitch", "none")
    done, resumed = (torch.load(os.path.join(d, "model_final.pth"), weights_only=True) for d in (output, killed))
    assert done["model"].keys() == resumed["model"].keys()
    assert all(torch.equal(done["model"][k], resumed["model"][k]) for k in done["model"])
    assert done["train_state"]["iteration"] == resumed["train_state"]["iteration"] == 64


def upstream_layout(state):
    """Our SN-Net state dict in upstream classification's names (``snnet.py``'s SNNetv2 saved by ``main.py``)."""
    renamed = {}
    for key, value in state.items():
        key = key.replace(".ls1.gamma", ".gamma_1").replace(".ls2.gamma", ".gamma_2")
        for ours, group in (("stitch_s2l.", "stitch_layers.0."), ("stitch_l2s.", "stitch_layers.1.")):
            if key.startswith(ours):
                index, name = key[len(ours):].split(".")
                name = {"lora_down": "lora_A", "lora_up": "lora_B"}.get(name, name)
                key = f"{group}{index}.transform.{name}"
        renamed[key] = value
    return renamed


def write_upstream_checkpoint(net, path):
    torch.save({"model": upstream_layout(net.state_dict()), "optimizer": {}, "epoch": 49,
                "args": argparse.Namespace(lora_r=net.lora_rank, lr=3e-5)}, path)


def test_upstream_checkpoint_scores_every_stitch_with_the_engines_logits(data, tmp_path):
    cfg = cls_train.load_config(TINY, [])
    torch.manual_seed(1)
    net = cls_train.build_model(cls_train.model_spec(cfg)).eval()
    with torch.no_grad():  # random LoRA updates, so that a mis-mapped lora_A / lora_B shows
        for layer in [*net.stitch_s2l, *net.stitch_l2s]:
            layer.lora_up.normal_(0, 0.1)
    path = str(tmp_path / "snnetv2_upstream.pth")
    write_upstream_checkpoint(net, path)

    loaded = cls_train.build_model(cls_train.model_spec(cfg)).eval()
    cls_train.load_weights(path, loaded, None, torch.device("cpu"))
    split, loader = val_batches(data)
    images, labels = next(iter(loader))
    saved = {}
    with torch.no_grad():
        for sid, logits in classify_stitches(loaded, images):
            saved[sid] = logits
            assert torch.equal(logits, net.classify(images, sid)), sid
    assert sorted(saved) == net.space.ids

    result = run(data, str(tmp_path / "eval"), "--eval-only", "--stitch", "all",
                 extra=[f"train.init_checkpoint={path}"])
    rows = result["report"]["stitches"]
    for sid, logits in saved.items():
        correct = int((logits.argmax(1) == labels).sum())
        assert rows[str(sid)]["acc1"] == 100.0 * correct / len(labels)
        assert rows[str(sid)][UPSTREAM_ID] == upstream_stitch_id(net.space, sid)

    # benchmarks/compare_upstream_cls.py against an authors'-format table of these rows, one top-1 0.5 off
    table = tmp_path / "stitches_res.txt"
    with open(table, "w") as f:
        for row in rows.values():
            off = 0.5 if row[UPSTREAM_ID] == 3 else 0.05
            f.write(json.dumps({"loss": 1.0, "acc1": row["acc1"] + off, "acc5": 100.0, "cfg_id": row[UPSTREAM_ID],
                                "flops": row["gflops"] * 1e9}) + "\n")
    report_dir = str(tmp_path / "eval" / "stitch_report_synthetic_val")
    assert compare_upstream_cls.compare(report_dir, str(table))["over"] == [3]
    assert compare_upstream_cls.main([report_dir, str(table)]) == 1
    assert compare_upstream_cls.main([report_dir, str(table), "--tolerance", "1"]) == 0


def test_export_gives_a_timm_style_classifier_with_the_stitchs_logits(data, trained):
    from timm.data import resolve_data_config

    output, result = trained
    run(data, output, "--eval-only", "--stitch", "none", "--export-stitch", "5")
    exported = load_classifier(os.path.join(output, "stitch_5", "model_final.pth"))
    net = load_snnet(result["checkpoint"])
    _, loader = val_batches(data)
    images, _ = next(iter(loader))
    with torch.no_grad():
        torch.testing.assert_close(exported.model(images), net.classify(images, 5), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(exported.model.forward_head(exported.model.forward_features(images)),
                                   net.classify(images, 5), rtol=1e-5, atol=1e-5)
    assert exported.model.num_classes == 4 and exported.classes == ["circle", "cross", "square", "triangle"]
    config = resolve_data_config({}, model=exported.model)
    assert config["input_size"] == (3, 32, 32) and config["crop_pct"] == 1.0 and config["interpolation"] == "bicubic"


def test_evaluation_in_memory_matches_the_report_rows(data, trained, tmp_path):
    output, result = trained
    report = run(data, output, "--eval-only", "--stitch", "all", "--report-dir", str(tmp_path / "report"))["report"]
    net = load_snnet(result["checkpoint"])
    _, loader = val_batches(data)
    rows = evaluate_stitches_in_memory(net, loader)
    for sid, metrics in rows.items():
        for name in ("acc1", "acc5", "loss"):
            assert report["stitches"][str(sid)][name] == pytest.approx(metrics[name], rel=1e-6)


@pytest.fixture
def copy_of(data, tmp_path):
    import shutil

    root = str(tmp_path / "data")
    shutil.copytree(data, root)
    return root


def test_class_folders_that_differ_between_train_and_val_fail_before_training(copy_of, tmp_path):
    os.rename(os.path.join(copy_of, "val", "cross"), os.path.join(copy_of, "val", "crosses"))
    with pytest.raises(ValueError, match=r"class folders of .*train.*differ.*only in .*train: cross.*crosses"):
        run(copy_of, str(tmp_path / "out"))
    assert not os.path.exists(str(tmp_path / "out" / "last_checkpoint"))


def test_a_non_image_file_is_named_before_training(copy_of, tmp_path):
    bad = os.path.join(copy_of, "train", "square", "broken.JPEG")
    with open(bad, "w") as f:
        f.write("not a JPEG")
    with pytest.raises(ValueError, match=rf"{bad} is not an image"):
        run(copy_of, str(tmp_path / "out"))
    assert not os.path.exists(str(tmp_path / "out" / "last_checkpoint"))


def test_ranks_read_their_share_of_the_image_headers_and_all_name_the_first_bad_file(copy_of, monkeypatch):
    """Two ranks (their ``gather_objects`` simulated in this process): each reads every other header, and both raise
    the error of the first bad file, the one rank 0 found before the one rank 1 found."""
    from PIL import Image

    from projects.snnet_cls import data as data_module
    from snnet_core.distributed import DistContext

    split = read_split(copy_of, "train")
    for index in (6, 9):
        with open(split.samples[index][0], "w") as f:
            f.write("not a JPEG")
    opened, found = {0: [], 1: []}, {}
    real_open = Image.open

    def gather(ctx, obj):
        found[ctx.rank] = obj
        return [found.get(rank) for rank in range(ctx.world_size)]

    monkeypatch.setattr(data_module, "gather_objects", gather)
    index_of = {path: i for i, (path, _) in enumerate(split.samples)}
    for rank in (0, 1):
        monkeypatch.setattr(data_module.Image, "open", lambda path: (opened[rank].append(index_of[path]),
                                                                     real_open(path))[1])
        with pytest.raises(ValueError, match=rf"^{split.samples[6][0]} is not an image"):
            data_module.check_images(split, ctx=DistContext(rank=rank, world_size=2))
    assert opened == {0: [0, 2, 4, 6], 1: [1, 3, 5, 7, 9]}  # each stops at its first bad file


def test_a_checkpoint_of_another_anchor_pair_is_refused_naming_the_file(data, tmp_path):
    cfg = cls_train.load_config(TINY, ["model.anchor_overrides.1.embed_dim=64", "model.anchor_overrides.1.num_heads=4"])
    other = cls_train.build_model(cls_train.model_spec(cfg))
    path = str(tmp_path / "other_pair.pth")
    write_upstream_checkpoint(other, path)
    with pytest.raises(ValueError, match=rf"{path}.*does not fit this SN-Net.*anchor pair"):
        run(data, str(tmp_path / "eval"), "--eval-only", "--stitch", "all", extra=[f"train.init_checkpoint={path}"])
    assert not os.path.exists(str(tmp_path / "eval" / "stitch_report_synthetic_val"))


def test_a_classification_config_and_a_depth_config_name_each_others_script():
    from projects.snnet_dpt import train as dpt_train

    with pytest.raises(ValueError, match=r"is a classification config.*projects/snnet_cls/train.py"):
        dpt_train.load_config(TINY, [])
    depth = os.path.join(os.path.dirname(dpt_train.__file__), "configs", "synthetic", "dpt_snnetv2_tiny.py")
    with pytest.raises(ValueError, match=r"is a depth config.*projects/snnet_dpt/train.py"):
        cls_train.load_config(depth, [])


def test_demo_prints_the_top_classes_with_the_folder_names_or_a_names_file(data, trained, tmp_path, capsys):
    from projects.snnet_cls import demo

    output, result = trained
    image = os.path.join(data, "val", "circle", "00000.JPEG")
    top = demo.run(result["checkpoint"], [image], stitch_id=5)[image]
    assert len(top) == 4 and {name for name, _ in top} == {"circle", "cross", "square", "triangle"}
    assert sum(p for _, p in top) == pytest.approx(1.0) and top == sorted(top, key=lambda t: -t[1])
    assert f"{image} (stitch 5 (L[0:2] -> S[1:4])):" in capsys.readouterr().out
    names = tmp_path / "names.txt"
    names.write_text("circle a round shape\ncross a plus sign\nsquare four sides\ntriangle three sides\n")
    named = demo.run(result["checkpoint"], [image], stitch_id=5, class_names=str(names))[image]
    assert [n for n, _ in named] == [{"circle": "a round shape", "cross": "a plus sign", "square": "four sides",
                                      "triangle": "three sides"}[n] for n, _ in top]
    names.write_text("one\ntwo\n")
    with pytest.raises(ValueError, match=rf"--class-names {names}: 2 lines for 4 classes"):
        demo.run(result["checkpoint"], [image], class_names=str(names))


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_two_processes(data, output, *flags, extra=()):
    """``train.py --num-gpus 2`` on the tiny config: two gloo processes on CPU started as detectron2 starts them
    (``launch``; torchrun's processes run the same ``snnet_core.train_script``, tested by the depth project), with
    this process's threads per child (docs/tests.md)."""
    command = [sys.executable, os.path.join(REPO, "projects", "snnet_cls", "train.py"), "--num-gpus", "2",
               "--dist-url", "auto", *flags, "--config-file", TINY, f"dataloader.root={data}",
               f"train.output_dir={output}", "train.ls_init_images=16", "train.device=cpu", *extra]
    env = dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()), HF_HUB_OFFLINE="1", MPLBACKEND="Agg")
    proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def test_two_process_ddp_training_writes_its_checkpoint_and_reports_as_one_process(data, tmp_path):
    """``--num-gpus 2`` (gloo on CPU): 2 epochs of 8 iterations of 8 images per rank, the same stitch and weights on
    both ranks, the checkpoint written; its report with each stitch on each rank's half of the val images
    (``test.share_prefixes=false``, counts summed over the ranks) equals the 1-process grouped ``--eval-only`` of
    the checkpoint."""
    output = tmp_path / "ddp"
    run_two_processes(data, output, "--stitch", "all", extra=["train.epochs=2", "test.share_prefixes=false",
                                                              "test.batch_size=3"])
    with open(output / "metrics.json") as f:  # rank 0 writes metrics.json
        steps = [row for row in map(json.loads, f) if "total_loss" in row]
    assert steps[-1]["iteration"] == 15  # 128 images, 16 per step over both ranks
    epoch_line = re.compile(r"epoch (\d)/2 \(iteration \d+\): mean loss ([\d.]+), parameter checksum (\S+), "
                            r"stitch sequence (\w+)")
    epochs = [epoch_line.findall((output / name).read_text()) for name in ("log.txt", "log.txt.rank1")]
    assert [e[0] for e in epochs[0]] == [e[0] for e in epochs[1]] == ["1", "2"]
    assert [e[2:] for e in epochs[0]] == [e[2:] for e in epochs[1]]  # same stitches, replicas stay identical
    assert all(a[1] != b[1] for a, b in zip(*epochs))  # each rank trained on its own images
    assert (output / "last_checkpoint").read_text().strip() == "model_final.pth"
    assert torch.load(output / "model_final.pth", weights_only=True)["train_state"]["iteration"] == 16
    with open(output / "stitch_report_synthetic_val" / "stitch_results.json") as f:
        two = json.load(f)["stitches"]
    one = run(data, str(output), "--eval-only", "--stitch", "all", "--report-dir", str(tmp_path / "one"))
    one = one["report"]["stitches"]
    assert two.keys() == one.keys() and len(two) == 14
    for sid, row in one.items():  # top-1 and top-5 are counts; the loss sums other batches (batches of 3 and 2)
        assert {k: v for k, v in two[sid].items() if k != "loss"} == {k: v for k, v in row.items() if k != "loss"}
        assert two[sid]["loss"] == pytest.approx(row["loss"], rel=1e-6)


V1_TINY = os.path.join(os.path.dirname(cls_train.__file__), "configs", "synthetic", "snnetv1_tiny_three_anchors.py")


def test_three_anchor_snnetv1_space_trains_reports_upstream_ids_exports_and_reloads(data, tmp_path):
    """The tiny SN-Netv1 config (three anchors, sliding window k=2 s=1, nearest stitching): one epoch, every stitch
    in the report with SN-Netv1's cfg_id, an exported stitch between the second and third anchors with the stitch's
    logits, and the checkpoint rebuilt by ``--eval-only`` (same window space, same rows)."""
    output = tmp_path / "v1"
    argv = ["--config-file", V1_TINY, f"dataloader.root={data}", f"train.output_dir={output}"]
    result = cls_train.main(["--stitch", "all", *argv, "train.epochs=1", "train.ls_init_images=16"])
    net = load_snnet(result["checkpoint"]).eval()
    assert net.space.window == (2, 1) and net.space.num_anchors == 3 and len(net.space) == 23
    rows = result["report"]["stitches"]
    assert sorted(map(int, rows)) == net.space.ids
    assert all(row[UPSTREAM_ID] == int(sid) == upstream_stitch_id(net.space, int(sid)) for sid, row in rows.items())
    (stitch,) = [s for s in net.space if s.route == "A1[0:3] -> A2[2:4]"]
    header = cls_train.read_checkpoint_header(result["checkpoint"])
    assert header["spec"].window == (2, 1) and len(header["spec"].anchors) == 3
    again = cls_train.main(["--eval-only", "--stitch", "all", "--export-stitch", str(stitch.id), "--report-dir",
                            str(tmp_path / "again"), *argv])
    assert again["report"]["stitches"] == rows
    exported = load_classifier(os.path.join(again["export"][0]))
    _, loader = val_batches(data)
    images, _ = next(iter(loader))
    with torch.no_grad():
        torch.testing.assert_close(exported.model(images), net.classify(images, stitch.id), rtol=1e-5, atol=1e-5)


def test_randaugment_posterize_keeping_0_bits_gives_a_black_image():
    """SN-Netv1's recipe (RandAugment ``rand-m9-mstd0.5-inc1``): ``PosterizeIncreasing`` at level 10 keeps 0 bits,
    which Pillow 13 refuses; the project's transform gives the black image older Pillows gave."""
    from PIL import Image

    from projects.snnet_cls.transforms import train_transform

    transform = train_transform(32, three_augment_on=False, color_jitter=0.4, re_prob=0.25)
    (op,) = [op for step in transform.transforms for op in getattr(step, "ops", ()) if op.name == "PosterizeIncreasing"]
    op.prob, op.magnitude, op.magnitude_std = 1.0, 10, 0
    image = Image.new("RGB", (32, 32), (200, 100, 50))
    assert op(image).getextrema() == ((0, 0), (0, 0), (0, 0))
    op.magnitude = 5  # 2 bits kept: Pillow's posterize
    assert op(image).getpixel((0, 0)) == (192, 64, 0)


def test_seeded_samples_draw_randaugments_operations_from_the_images_seed(data):
    """RandAugment picks its operations with numpy: an image's augmentation is the same whatever numpy's state
    (loader workers, a resume)."""
    import numpy as np

    from projects.snnet_cls.transforms import train_transform

    split = read_split(data, "train")
    samples = SeededSamples(split.samples[:4], train_transform(32, three_augment_on=False), seed=3)
    np.random.seed(1)
    first = [samples[i][0] for i in range(4)]
    np.random.seed(2)
    state = np.random.get_state()
    assert all(torch.equal(a, samples[i][0]) for i, a in enumerate(first))
    assert np.array_equal(np.random.get_state()[1], state[1])  # numpy's state left as it was


def test_snnetv1_deit_ti_s_b_config_is_snnetv1s_recipe_and_per_anchor_keys_are_checked(tmp_path):
    from snnet_core import StitchSpace
    from snnet_core.io.config_io import ConfigError

    path = os.path.join(os.path.dirname(cls_train.__file__), "configs", "snnetv1_deit_ti_s_b_in1k.py")
    cfg = cls_train.load_config(path, [])
    cls_train.check_settings(cfg, training=True, source=path)
    spec = cls_train.model_spec(cfg)
    assert spec.anchors == ("deit_tiny_patch16_224", "deit_small_patch16_224", "deit_base_patch16_224")
    assert spec.window == (2, 1) and spec.lora_rank == 0 and spec.route_types == ("anchor", "FS")
    assert len(StitchSpace(12, 12, 12, route_types=spec.route_types, window=spec.window)) == 71  # its cfg_ids 0..70
    recipe = cls_train.recipe_from_config(cfg, world_size=8)
    assert (recipe.opt, recipe.lr, recipe.batch_size, recipe.sampling, recipe.distillation["type"]) == (
        "adamw", 5e-5 * 1024 / 512, 1024, "uniform", "hard")
    assert cfg["dataloader"]["eval_crop_ratio"] == 224 / 256 and not cfg["dataloader"]["augmentation"]["three_augment"]
    tiny = [f"train.output_dir={tmp_path / 'out'}", "dataloader.root=unused"]
    for override in ("model.drop_path=[0.0,0.0]", "model.pretrained=[null,null]", "model.window=[0,1]"):
        key = override.split("=")[0]
        with pytest.raises(ConfigError, match=rf"{key}="):
            cls_train.main(["--config-file", V1_TINY, *tiny, override])


@pytest.mark.parametrize("override, message", [
    ("model.route_types=[anchor,FS,SF]", r"model.route_types=\['anchor', 'FS', 'SF'\] \(model.window=\[2, 1\]\): the "
                                         r"sliding-window space \(SN-Netv1\) stitches small to large only"),
    ("model.anchor_overrides=[{embed_dim:32,depth:4,num_heads:2},{embed_dim:48,depth:6,num_heads:3},"
     "{embed_dim:64,depth:4,num_heads:4}]", r"model.anchors=.* \(depths \[4, 6, 4\], model.window=\[2, 1\]\): .*"
                                            r"anchors of one positive depth"),
    ("model.anchors=[vit_tiny_patch16_224]", r"model.anchors=\['vit_tiny_patch16_224'\] is not valid: expected two or "
                                             r"more timm ViT names"),
])
def test_stitch_space_of_the_anchors_is_checked_before_any_data_is_read(tmp_path, monkeypatch, override, message):
    """The anchors' depths (built on the meta device), ``model.window`` and ``model.route_types`` make a stitch
    space, or ``check_settings`` names the key to change before an image header is read or a model built."""
    from snnet_core.io.config_io import ConfigError

    monkeypatch.setattr(cls_train, "read_data", lambda *a, **k: pytest.fail("the data was read"))
    monkeypatch.setattr(cls_train, "build_model", lambda *a, **k: pytest.fail("the model was built"))
    with pytest.raises(ConfigError, match=message):
        cls_train.main(["--config-file", V1_TINY, f"train.output_dir={tmp_path / 'out'}", "dataloader.root=unused",
                        override])

