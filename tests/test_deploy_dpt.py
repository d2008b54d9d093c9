"""Depth deployment: a checkpoint to a model in one call (``load_depth_model``), predictions on image files
(``demo.py``) and export formats (``torch.export``, TorchScript tracing) of an exported stitch."""
import glob
import json
import os
import re

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from datasets.make_synthetic_nyu import make_synthetic_nyu
from projects.snnet_dpt import demo
from projects.snnet_dpt import train as train_cli
from projects.snnet_dpt.training import load_checkpoint, read_checkpoint_header
from projects.snnet_dpt.export import load_depth_model
from projects.snnet_dpt.model import build_model
from snnet_core.io.image_size import ImageTooLargeError
from snnet_core.select import SelectionError, choose_stitch, read_report
from tests.test_core_image_size import png_header

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "projects", "snnet_dpt", "configs", "synthetic", "dpt_snnetv2_tiny.py")
EXPORTED = 3


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 1-epoch run of the tiny config on 64x80 synthetic NYUv2, with stitch 3 exported."""
    root = str(tmp_path_factory.mktemp("nyu"))
    make_synthetic_nyu(root, num_train=8, num_test=2, size=(64, 80), seed=0)
    out = tmp_path_factory.mktemp("run")
    train_cli.main(["--config-file", TINY, "--stitch", "none", "--export-stitch", str(EXPORTED),
                    f"dataloader.root={root}", "dataloader.eval_size=[64,80]",
                    "dataloader.augmentation.crop_size=[48,64]", "train.batch_size=2", "train.epochs=1",
                    "train.flops_step=0.002", "train.ls_init_images=4", "train.loss_warmup_iters=2",
                    f"train.output_dir={out}"])
    images = sorted(glob.glob(os.path.join(root, "**", "rgb_*.jpg"), recursive=True))[:2]
    return {"checkpoint": str(out / "model_final.pth"), "exported": str(out / f"stitch_{EXPORTED}" / "model_final.pth"),
            "images": images, "root": root, "out": out}


def reference_model(checkpoint):
    """The trained SN-Net as train.py's --eval-only builds it (ModelSpec from the header, then the weights)."""
    model = build_model(read_checkpoint_header(checkpoint)["spec"])
    load_checkpoint(checkpoint, model)
    return model.eval()


@torch.no_grad()
def test_load_depth_model_gives_the_trained_sn_net_with_set_stitch(run):
    reference = reference_model(run["checkpoint"])
    model = load_depth_model(run["checkpoint"], stitch_id=EXPORTED)
    assert not model.training and model.backbone.stitch_id == EXPORTED
    x = torch.randn(1, 3, 64, 80)
    for sid in (EXPORTED, 0, 1, 13):
        model.backbone.set_stitch(sid)
        reference.backbone.set_stitch(sid)
        torch.testing.assert_close(model(x), reference(x), rtol=0, atol=0)
    reference.backbone.set_stitch(0)
    assert not torch.equal(model(x), reference(x))  # stitch 13 is not stitch 0: the comparison can fail
    with pytest.raises(KeyError, match="unknown stitch id 99"):
        load_depth_model(run["checkpoint"], stitch_id=99)


@torch.no_grad()
def test_load_depth_model_of_an_exported_stitch_equals_the_stitch_in_the_sn_net(run):
    reference = reference_model(run["checkpoint"])
    reference.backbone.set_stitch(EXPORTED)
    model = load_depth_model(run["exported"])
    assert model.backbone.stitch_id == EXPORTED and not hasattr(model.backbone, "space")
    x = torch.randn(2, 3, 64, 80)
    torch.testing.assert_close(model(x), reference(x), rtol=1e-5, atol=1e-5)  # LoRA merged: float rounding only
    with pytest.raises(KeyError, match=f"is the exported stitch {EXPORTED} .*not stitch 5: export stitch 5"):
        load_depth_model(run["exported"], stitch_id=5)


def test_load_depth_model_refuses_other_files_naming_them(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        load_depth_model(str(tmp_path / "missing.pth"))
    foreign = tmp_path / "foreign.pth"
    torch.save({"model": {}}, foreign)
    with pytest.raises(RuntimeError, match="foreign.pth.*neither a training checkpoint .* nor a stitch"):
        load_depth_model(str(foreign))
    (tmp_path / "cut.pth").write_bytes(foreign.read_bytes()[:40])
    with pytest.raises(RuntimeError, match="cut.pth.*truncated or corrupt"):
        load_depth_model(str(tmp_path / "cut.pth"))


def test_demo_writes_a_depth_png_with_colour_bar_and_the_raw_depth(run, tmp_path, capsys):
    out = tmp_path / "pred"
    written = demo.main(["--weights", run["checkpoint"], "--stitch", "5", "--input", *run["images"],
                            "--output", str(out), "--no-flip"])
    assert len(written) == 4
    console = re.sub(r"\x1b\[[0-9;]*m", "", capsys.readouterr().out)  # detectron2 colours a terminal
    for image_path in run["images"]:  # detectron2's log format, as train.py's
        assert re.search(rf"^\[\d\d/\d\d \d\d:\d\d:\d\d snnet_dpt.demo\]: {re.escape(image_path)}: [\d.]+-[\d.]+ m -> ",
                         console, re.M), console
    model = load_depth_model(run["checkpoint"], stitch_id=5)
    for image_path in run["images"]:
        stem = out / (os.path.splitext(os.path.basename(image_path))[0] + "_depth")
        depth = np.load(str(stem) + ".npy")
        image = demo.read_rgb(image_path)
        assert depth.shape == image.shape[:2] and depth.dtype == np.float32
        assert np.isfinite(depth).all() and depth.min() > 0  # metres
        np.testing.assert_array_equal(depth, demo.predict_depth(model, image, flip=False))
        png = cv2.imread(str(stem) + ".png")
        assert png is not None and png.shape[1] > 2 * png.shape[0] * 0.9  # image, depth and its colour bar
    # an exported stitch, a folder as input, flip averaging
    folder = tmp_path / "images"
    folder.mkdir()
    for image_path in run["images"]:
        os.link(image_path, folder / os.path.basename(image_path))
    written = demo.main(["--weights", run["exported"], "--input", str(folder), "--output", str(tmp_path / "e")])
    assert sorted(os.path.basename(p) for p in written) == sorted(
        os.path.splitext(os.path.basename(p))[0] + ext for p in run["images"] for ext in ("_depth.npy", "_depth.png"))


def test_demo_runs_a_large_photo_at_the_checkpoints_eval_size_and_refuses_one_over_the_pixel_limit(
        run, tmp_path, monkeypatch, capsys):
    """A 4000x3000 photo runs the network at the checkpoint's eval size 64x80 (in pixels, aspect kept), its depth
    is resized back; an 8000x8000 one is refused from its header before the model is loaded."""
    photo = tmp_path / "photo.png"
    Image.new("RGB", (4000, 3000), (90, 120, 150)).save(photo)  # a few KB on disk, 36 MB decoded
    seen = []

    def network_input(module, args):
        seen.append(tuple(args[0].shape[-2:]))
        assert seen[-1][0] * seen[-1][1] <= 64 * 80, f"the network ran at {seen[-1]}"

    load = demo.load_depth_model
    monkeypatch.setattr(demo, "load_depth_model", lambda *a, **k: _hooked(load(*a, **k), network_input))
    png, npy = demo.main(["--weights", run["checkpoint"], "--input", str(photo), "--output", str(tmp_path / "o"),
                          "--no-flip"])
    assert seen == [(64, 80)] and np.load(npy).shape == (3000, 4000)
    assert max(cv2.imread(png).shape) <= 2000  # the preview is drawn from a copy of at most 1024 pixels a side
    console = re.sub(r"\x1b\[[0-9;]*m", "", capsys.readouterr().out)
    assert re.search(r"photo.png: 3000x4000 \(HxW\) scaled to 64x80 for the network \(at most the pixels of 64x80, "
                     r"the dataloader.eval_size the checkpoint records; --size H W sets it\)", console), console
    big = png_header(tmp_path / "big.png", 8000, 8000)
    monkeypatch.setattr(demo, "load_depth_model", lambda *a, **k: pytest.fail("the model was loaded"))
    with pytest.raises(ImageTooLargeError, match=r"image '.*big.png' is 8000x8000 pixels .*limit of 50 MP"):
        demo.main(["--weights", run["checkpoint"], "--input", str(photo), big, "--output", str(tmp_path / "b")])
    assert not (tmp_path / "b").exists()


def _hooked(model, hook):
    model.register_forward_pre_hook(hook)
    return model


def test_demo_never_loses_an_output_or_an_input(run, tmp_path):
    """Two images of one name (a/x.jpg, b/x.jpg) get two outputs; a rerun is refused before the model is read unless
    --overwrite; an output that would replace an input image is refused."""
    for folder, source in zip("ab", run["images"]):
        os.makedirs(tmp_path / folder)
        os.link(source, tmp_path / folder / "x.jpg")
    inputs = [str(tmp_path / "a" / "x.jpg"), str(tmp_path / "b" / "x.jpg")]
    args = ["--weights", run["exported"], "--input", *inputs, "--output", str(tmp_path / "out"), "--no-flip"]
    written = demo.main(args)
    assert [os.path.basename(p) for p in written] == ["x_depth.png", "x_depth.npy", "x_2_depth.png", "x_2_depth.npy"]
    model = load_depth_model(run["exported"])
    for image_path, npy in zip(inputs, written[1::2]):
        np.testing.assert_array_equal(np.load(npy), demo.predict_depth(model, demo.read_rgb(image_path), flip=False))
    assert not np.array_equal(np.load(written[1]), np.load(written[3]))  # two images: the comparison can fail
    before = os.stat(written[1]).st_mtime_ns
    with pytest.raises(FileExistsError, match=r"already holds .*x_depth.png, .*pass --overwrite to replace them"):
        demo.main(args[:1] + [str(tmp_path / "missing.pth")] + args[2:])  # refused before the weights are read
    assert os.stat(written[1]).st_mtime_ns == before
    assert demo.main(args + ["--overwrite"]) == written
    os.link(run["images"][0], tmp_path / "a" / "x_depth.png")  # an input named like an output
    with pytest.raises(ValueError, match=r"output .*a/x_depth.png of .*a/x.jpg would replace the input image"):
        demo.main(["--weights", run["exported"], "--input", str(tmp_path / "a"), "--output", str(tmp_path / "a"),
                   "--overwrite"])


def test_demo_names_an_unreadable_image_and_an_unknown_stitch(run, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(ValueError, match="cannot read image .*broken.jpg"):
        demo.main(["--weights", run["exported"], "--input", str(broken), "--output", str(tmp_path / "o")])
    with pytest.raises(FileNotFoundError, match="nowhere.png.*neither an image file nor a folder"):
        demo.main(["--weights", run["exported"], "--input", str(tmp_path / "nowhere.png"),
                      "--output", str(tmp_path / "o")])
    with pytest.raises(KeyError, match="unknown stitch id 14: .* ids 0..13"):
        demo.main(["--weights", run["checkpoint"], "--stitch", "14", "--input", *run["images"],
                      "--output", str(tmp_path / "o")])
    assert not (tmp_path / "o").exists()


@torch.no_grad()
def test_an_exported_stitch_goes_through_torch_export_and_tracing(run):
    model = load_depth_model(run["exported"])
    x = torch.randn(1, 3, 64, 80)
    expected = model(x)
    program = torch.export.export(model, (x,))
    torch.testing.assert_close(program.module()(x), expected, rtol=1e-5, atol=1e-5)
    other = torch.randn(1, 3, 64, 80)  # the program computes, not replays
    torch.testing.assert_close(program.module()(other), model(other), rtol=1e-5, atol=1e-5)
    traced = torch.jit.trace(model, (x,), check_trace=False)
    torch.testing.assert_close(traced(other), model(other), rtol=1e-5, atol=1e-5)


def test_demo_runs_the_best_stitch_of_a_report_within_a_gflops_budget(run, tmp_path):
    report = tmp_path / "report"
    train_cli.main(["--config-file", TINY, "--eval-only", "--stitch", "all", "--report-dir", str(report),
                    f"dataloader.root={run['root']}", "dataloader.eval_size=[64,80]",
                    f"train.output_dir={run['out']}"])
    source, record = read_report(str(report))
    budget = sorted(r["gflops"] for r in record["stitches"].values())[5]
    best = int(choose_stitch(record, source, max_gflops=budget).chosen["id"])
    written = demo.main(["--weights", run["checkpoint"], "--max-gflops", str(budget), "--report", str(report),
                         "--input", run["images"][0], "--output", str(tmp_path / "d"), "--no-flip"])
    model = load_depth_model(run["checkpoint"], stitch_id=best)
    expected = demo.predict_depth(model, demo.read_rgb(run["images"][0]), flip=False)
    np.testing.assert_array_equal(np.load(written[1]), expected)
    model.backbone.set_stitch(0 if best else 1)  # another stitch predicts otherwise: the comparison can fail
    other = demo.predict_depth(model, demo.read_rgb(run["images"][0]), flip=False)
    assert not np.array_equal(np.load(written[1]), other)
    with pytest.raises(ValueError, match="--max-gflops G needs --report REPORT"):
        demo.main(["--weights", run["checkpoint"], "--max-gflops", "1", "--input", run["images"][0],
                   "--output", str(tmp_path / "x")])
    with pytest.raises(SelectionError, match="no stitch"):
        demo.main(["--weights", run["checkpoint"], "--max-gflops", "0.001", "--report", str(report),
                   "--input", run["images"][0], "--output", str(tmp_path / "x")])
    foreign = tmp_path / "detection_report" / "stitch_results.json"  # the same rows, filed as another task's
    foreign.parent.mkdir()
    foreign.write_text(json.dumps(dict(record, task="detection")))
    with pytest.raises(SelectionError, match="is a detection report .*not a depth one"):
        demo.main(["--weights", run["checkpoint"], "--max-gflops", str(budget), "--report", str(foreign.parent),
                   "--input", run["images"][0], "--output", str(tmp_path / "x")])
    assert not (tmp_path / "x").exists()
