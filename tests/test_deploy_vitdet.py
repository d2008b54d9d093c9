"""Detection deployment: one stitch of an SN-Net detector exported as a standalone detectron2 model (its own
LazyConfig, loadable without the SN-Net, same outputs), ``--export-stitch`` selections, the demo's drawings and
export formats (``torch.export``, TorchScript tracing through detectron2's ``TracingAdapter``)."""
import glob
import os
import re

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import LazyConfig, instantiate
from detectron2.export import TracingAdapter

from datasets.make_synthetic_coco import make_synthetic_coco
from projects.snnet_vitdet import demo
from projects.snnet_vitdet.backbone import StitchedViTDetBackbone
from projects.snnet_vitdet.evaluation import RESULTS_TASK, detector_flops_table
from projects.snnet_vitdet.export import StitchViTDetBackbone, export_detector
import snnet_core.d2.demo as d2_demo
from snnet_core.select import resolve_export_selection
from snnet_core import evaluate_stitches
from snnet_core.io.image_size import ImageTooLargeError
from snnet_core.select import SelectionError
from tests.test_core_image_size import png_header

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "projects", "snnet_vitdet", "configs", "synthetic", "mask_rcnn_snnetv2_tiny.py")


def tiny_config(data_root):
    cfg = LazyConfig.load(TINY)
    cfg.datasets.root = str(data_root)
    cfg.train.device = "cpu"
    return cfg


@pytest.fixture(scope="module")
def snnet(tmp_path_factory):
    """The tiny SN-Net detector with random weights made non-trivial (LoRA updates, relative position tables),
    saved as train_net.py saves it; 4 synthetic validation images."""
    root = tmp_path_factory.mktemp("coco")
    make_synthetic_coco(str(root), num_train=2, num_val=4, image_size=128, seed=0)
    cfg = tiny_config(root)
    torch.manual_seed(0)
    model = instantiate(cfg.model).eval()
    with torch.no_grad():
        for name, p in model.backbone.net.named_parameters():
            if name.endswith(("lora_up", "rel_pos_h", "rel_pos_w")):
                p.normal_(std=0.2)
    out = tmp_path_factory.mktemp("run")
    DetectionCheckpointer(model, str(out)).save("model_final")
    images = sorted(glob.glob(os.path.join(root, "val", "*")))
    return {"cfg": cfg, "model": model, "weights": str(out / "model_final.pth"), "out": out, "images": images}


def load_exported(config_path):
    """What a user does: the config, instantiate, DetectionCheckpointer -- nothing of the SN-Net."""
    cfg = LazyConfig.load(config_path)
    model = instantiate(cfg.model).eval()
    DetectionCheckpointer(model).load(cfg.train.init_checkpoint)
    return model


def images_of(cfg, model, paths):
    """The model's inputs for image files, as the demo makes them (the config's test-time resize)."""
    predictor = demo.Predictor(cfg, model)
    return [predictor.model_input(demo.read_input(p, predictor.input_format)) for p in paths]


def assert_same_instances(a, b, atol=1e-4):
    assert len(a) == len(b) > 0
    torch.testing.assert_close(a.pred_boxes.tensor, b.pred_boxes.tensor, rtol=0, atol=atol)
    torch.testing.assert_close(a.scores, b.scores, rtol=0, atol=atol)
    assert torch.equal(a.pred_classes, b.pred_classes)
    assert (a.pred_masks != b.pred_masks).float().mean() < 1e-3  # thresholded masks: a pixel may flip at 0.5


@torch.no_grad()
@pytest.mark.parametrize("stitch_id", [5, 0, 9])  # SF ending in the small anchor, the small anchor, FSF
def test_an_exported_stitch_loads_without_the_sn_net_and_predicts_as_the_stitch_inside_it(snnet, stitch_id):
    model = snnet["model"]
    paths = export_detector(snnet["cfg"], model, stitch_id, str(snnet["out"]), source=snnet["weights"])
    assert paths["config"] == str(snnet["out"] / f"stitch_{stitch_id}" / "config.yaml")
    exported = load_exported(paths["config"])
    net = exported.backbone.net
    assert isinstance(net, StitchViTDetBackbone) and net.stitch_id == stitch_id
    assert not any(isinstance(m, StitchedViTDetBackbone) for m in exported.modules())
    assert net.output_shape() == model.backbone.net.output_shape()
    route = model.backbone.net.space[stitch_id].route
    assert net.stitch.route == route
    assert sum(p.numel() for p in net.parameters()) < sum(p.numel() for p in model.backbone.net.parameters())
    model.backbone.net.set_stitch(stitch_id)
    inputs = images_of(snnet["cfg"], model, snnet["images"][:2])
    for a, b in zip(model(inputs), exported(inputs)):
        assert_same_instances(a["instances"], b["instances"])
    model.backbone.net.set_stitch(1)  # another stitch predicts otherwise: the comparison can fail
    other = model(inputs[:1])[0]["instances"]
    assert not torch.allclose(other.scores[:5], exported(inputs[:1])[0]["instances"].scores[:5])


def test_export_refuses_a_stitch_the_checkpoint_lacks_and_a_single_vit(snnet, tmp_path):
    with pytest.raises(KeyError, match="cannot export stitch 14: the SN-Net of .*model_final.pth does not hold it "
                                       ".*ids 0..13"):
        export_detector(snnet["cfg"], snnet["model"], 14, str(tmp_path), source=snnet["weights"])
    assert not os.listdir(tmp_path)
    single = torch.nn.Module()
    single.backbone = torch.nn.Module()
    with pytest.raises(ValueError, match="single ViT: it is deployable as it is"):
        export_detector(snnet["cfg"], single, 0, str(tmp_path))


def test_export_selection_ids_pareto_and_best_under_gflops(snnet, tmp_path):
    space = snnet["model"].backbone.net.space
    assert resolve_export_selection("3,5", space) == [3, 5]
    table = detector_flops_table(snnet["model"], (128, 128))
    ap = {sid: float(sid % 5) for sid in space.ids}  # made-up AP: stitches 4 and 9 best
    evaluate_stitches(lambda sid: {"bbox_AP": ap[sid]}, space.ids, space, table, str(tmp_path / "report"),
                      primary_metric="bbox_AP", task=RESULTS_TASK, progress=False)
    frontier = resolve_export_selection("pareto", space, str(tmp_path / "report"))
    assert frontier and all(ap[s] == max(ap[t] for t in space.ids if table.gflops[t] <= table.gflops[s])
                            for s in frontier)
    budget = (table.gflops[4] + table.gflops[9]) / 2 if table.gflops[4] < table.gflops[9] else table.gflops[9]
    (best,) = resolve_export_selection(f"best:{budget}", space, str(tmp_path / "report"))
    assert ap[best] == 4 and table.gflops[best] <= budget
    with pytest.raises(SelectionError, match="the cheapest"):
        resolve_export_selection("best:0.0001", space, str(tmp_path / "report"))
    with pytest.raises(ValueError, match="best:G with G a number"):
        resolve_export_selection("best:fast", space, str(tmp_path / "report"))
    with pytest.raises(KeyError, match="unknown stitch id 40"):
        resolve_export_selection("40", space)
    with pytest.raises(SelectionError, match="is a detection report .*not a depth one"):
        resolve_export_selection("best:1e9", space, str(tmp_path / "report"), task="depth")


def test_demo_draws_the_detections_of_a_stitch_and_of_an_exported_stitch(snnet, tmp_path, capsys):
    args = ["--config-file", TINY, "--weights", snnet["weights"], "--input", *snnet["images"][:2],
            "--confidence-threshold", "0", f"datasets.root={os.path.dirname(os.path.dirname(snnet['images'][0]))}"]
    written = demo.main(args[:4] + ["--stitch", "5", "--output", str(tmp_path / "snnet")] + args[4:])
    assert len(written) == 2
    console = re.sub(r"\x1b\[[0-9;]*m", "", capsys.readouterr().out)  # detectron2 colours a terminal
    stamp = r"^\[\d\d/\d\d \d\d:\d\d:\d\d snnet_vitdet.demo\]: "  # detectron2's log format, as train_net.py's
    assert re.search(stamp + r"running stitch 5 ", console, re.M), console
    assert len(re.findall(stamp + r".+: \d+ detections -> ", console, re.M)) == 2, console
    predictor = demo.Predictor(snnet["cfg"], snnet["model"])
    for path, image_path in zip(written, snnet["images"]):
        drawn, original = cv2.imread(path), cv2.imread(image_path)
        fitted = predictor.fit(original)  # the test-time resize to at most 128 pixels a side
        assert drawn.shape == fitted.shape and max(drawn.shape[:2]) == 128
        assert not (drawn == fitted).all()  # boxes were drawn on it
    paths = export_detector(snnet["cfg"], snnet["model"], 5, str(tmp_path / "exp"))
    exported = demo.main(["--config-file", paths["config"], "--input", os.path.dirname(snnet["images"][0]),
                          "--output", str(tmp_path / "exported"), "--confidence-threshold", "0"])
    assert len(exported) == 4
    for a, b in zip(written, exported):  # the same stitch draws the same picture
        assert np.abs(cv2.imread(a).astype(int) - cv2.imread(b).astype(int)).mean() < 1.0
    table = detector_flops_table(snnet["model"], (128, 128))
    budget = sorted(table.gflops.values())[3]
    by_budget = demo.main(args[:4] + ["--max-gflops", str(budget), "--output", str(tmp_path / "budget")] + args[4:])
    assert len(by_budget) == 2


def test_demo_never_draws_over_an_input_image_or_an_earlier_drawing(snnet, tmp_path):
    """--output equal to the input folder would replace photo.png with its drawing: refused, naming both, before
    the model is built; a second run into one --output is refused unless --overwrite."""
    folder = tmp_path / "photos"
    folder.mkdir()
    os.link(snnet["images"][0], folder / "photo.png")
    original = (folder / "photo.png").read_bytes()
    base = ["--config-file", TINY, "--weights", str(tmp_path / "not_read.pth"), "--input", str(folder)]
    with pytest.raises(ValueError, match=rf"output {folder / 'photo.png'} of {folder / 'photo.png'} would replace the "
                                         rf"input image {folder / 'photo.png'}: give --output another folder"):
        demo.main(base + ["--output", str(folder), "--overwrite"])
    assert (folder / "photo.png").read_bytes() == original
    args = ["--config-file", TINY, "--weights", snnet["weights"], "--input", str(folder), "--output",
            str(tmp_path / "out"), f"datasets.root={os.path.dirname(os.path.dirname(snnet['images'][0]))}"]
    (drawing,) = demo.main(args)
    with pytest.raises(FileExistsError, match=r"already holds .*photo.png, written before: pass --overwrite"):
        demo.main(args)
    assert demo.main(args[:-1] + ["--overwrite", args[-1]]) == [drawing]


def test_demo_errors_name_the_image_the_stitch_and_the_budget(snnet, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n but not a png")
    base = ["--config-file", TINY, "--weights", snnet["weights"], "--output", str(tmp_path / "o")]
    with pytest.raises(ValueError, match="cannot read image .*broken.png"):
        demo.main(base + ["--input", str(broken)])
    with pytest.raises(KeyError, match="unknown stitch id 20"):
        demo.main(base + ["--stitch", "20", "--input", snnet["images"][0]])
    with pytest.raises(ValueError, match="--max-gflops 1e-06: no stitch fits; the cheapest is stitch"):
        demo.main(base + ["--max-gflops", "1e-6", "--input", snnet["images"][0]])
    space = snnet["model"].backbone.net.space
    evaluate_stitches(lambda sid: {"a1": 0.5}, space.ids, space, detector_flops_table(snnet["model"], (128, 128)),
                      str(tmp_path / "depth_report"), primary_metric="a1", task="depth", progress=False)
    with pytest.raises(SelectionError, match="is a depth report .*not a detection one"):
        demo.main(base + ["--max-gflops", "1e9", "--report", str(tmp_path / "depth_report"),
                          "--input", snnet["images"][0]])
    paths = export_detector(snnet["cfg"], snnet["model"], 5, str(tmp_path / "exp"))
    with pytest.raises(ValueError, match="exported stitch 5: --stitch/--max-gflops choose among"):
        demo.main(["--config-file", paths["config"], "--stitch", "3", "--input", snnet["images"][0],
                   "--output", str(tmp_path / "o")])
    assert not (tmp_path / "o").exists()


def test_demo_predicts_and_draws_a_large_photo_at_the_models_input_size_and_refuses_one_over_the_limit(
        snnet, tmp_path, monkeypatch, capsys):
    """A 3000x2000 photo is resized by the config's test-time resize (128 pixels) once, predicted and drawn at
    that size; an 8000x8000 one is refused from its header before the model is built."""
    photo = tmp_path / "photo.png"
    Image.new("RGB", (3000, 2000), (90, 120, 150)).save(photo)  # a few KB on disk, 18 MB decoded
    seen = []
    call = demo.Predictor.__call__

    def recording(self, image):
        seen.append(image.shape[:2])
        return call(self, image)

    monkeypatch.setattr(demo.Predictor, "__call__", recording)
    (drawing,) = demo.main(["--config-file", TINY, "--weights", snnet["weights"], "--input", str(photo),
                            "--output", str(tmp_path / "o")])
    assert seen == [(85, 128)] and cv2.imread(drawing).shape[:2] == (85, 128)
    console = re.sub(r"\x1b\[[0-9;]*m", "", capsys.readouterr().out)
    assert re.search(r"photo.png: 2000x3000 \(HxW\) predicted and drawn at 85x128, the model's input size", console)
    big = png_header(tmp_path / "big.png", 8000, 8000)
    monkeypatch.setattr(d2_demo, "load_model", lambda *a, **k: pytest.fail("the model was built"))
    with pytest.raises(ImageTooLargeError, match=r"image '.*big.png' is 8000x8000 pixels .*limit of 50 MP"):
        demo.main(["--config-file", TINY, "--weights", snnet["weights"], "--input", str(photo), big,
                   "--output", str(tmp_path / "b")])
    assert not (tmp_path / "b").exists()


def test_demo_weights_that_are_a_directory_or_missing_name_the_file_to_give(snnet, tmp_path):
    base = ["--config-file", TINY, "--input", snnet["images"][0], "--output", str(tmp_path / "o")]
    with pytest.raises(IsADirectoryError, match=r"--weights '.*' is a directory, not a checkpoint file: give a file "
                                                r"in it, e.g. '.*model_final.pth'"):
        demo.main(base + ["--weights", str(snnet["out"])])
    with pytest.raises(FileNotFoundError, match=r"--weights '.*nothing.pth' does not exist: pass --weights PATH"):
        demo.main(base + ["--weights", str(tmp_path / "nothing.pth")])
    assert not (tmp_path / "o").exists()


@torch.no_grad()
def test_an_exported_detector_goes_through_torch_export_and_tracing(snnet, tmp_path):
    paths = export_detector(snnet["cfg"], snnet["model"], 5, str(tmp_path))
    model = load_exported(paths["config"])
    x = torch.randn(1, 3, 128, 128)
    # torch.export: the backbone (the stitch + the simple feature pyramid), images -> p2..p6
    program = torch.export.export(model.backbone, (x,))
    other = torch.randn(1, 3, 128, 128)
    expected = model.backbone(other)
    for name, value in program.module()(other).items():
        torch.testing.assert_close(value, expected[name], rtol=1e-5, atol=1e-5)
    # TorchScript tracing of the whole Mask R-CNN through detectron2's TracingAdapter
    inputs = [{"image": images_of(snnet["cfg"], model, snnet["images"][:1])[0]["image"]}]
    adapter = TracingAdapter(model, inputs)
    traced = torch.jit.trace(adapter, adapter.flattened_inputs, check_trace=False)
    eager = model(inputs)[0]["instances"]
    traced_outputs = adapter.outputs_schema(traced(*adapter.flattened_inputs))
    assert_same_instances(traced_outputs[0]["instances"], eager)


def test_train_net_exports_a_stitch_and_the_config_key_selects_one(snnet, tmp_path):
    """``train_net.py --eval-only --export-stitch ID`` writes the standalone detector (no code); the config key
    ``model.backbone.net.stitch_id`` builds an SN-Net whose forward runs that stitch."""
    from projects.snnet_vitdet import train_net

    args = train_net.build_argument_parser().parse_args([
        "--config-file", TINY, "--eval-only", "--export-stitch", "5",
        f"datasets.root={snnet['cfg'].datasets.root}", "train.device=cpu",
        f"train.output_dir={tmp_path}", f"train.init_checkpoint={snnet['weights']}"])
    assert args.stitch is None
    train_net.main(args)
    weights = tmp_path / "stitch_5" / "model_final.pth"
    first = os.stat(weights).st_ino
    with pytest.raises(FileExistsError, match=rf"--export-stitch would replace {weights}, .*exported before: pass "
                                              "--overwrite to replace it"):
        train_net.main(args)  # never over an earlier export
    assert os.stat(weights).st_ino == first
    args.overwrite = True
    train_net.main(args)
    assert os.stat(weights).st_ino != first
    exported = load_exported(str(tmp_path / "stitch_5" / "config.yaml"))
    assert isinstance(exported.backbone.net, StitchViTDetBackbone)
    cfg = tiny_config(snnet["cfg"].datasets.root)
    cfg.model.backbone.net.stitch_id = 5
    assert instantiate(cfg.model).backbone.net.stitch_id == 5
    with pytest.raises(ValueError, match="--eval-only"):
        train_net.main(train_net.build_argument_parser().parse_args(
            ["--config-file", TINY, "--export-stitch", "5", f"train.output_dir={tmp_path / 'train'}"]))


def test_an_id_export_over_an_earlier_one_is_refused_before_the_evaluation(snnet, tmp_path, monkeypatch):
    """``--eval-only --stitch all --export-stitch 5`` over an earlier stitch_5/ fails before the per-stitch report
    (hours on COCO), as depth does; pareto / best:G, which read the report, are checked after it."""
    from projects.snnet_vitdet import train_net

    (tmp_path / "stitch_5").mkdir()
    (tmp_path / "stitch_5" / "model_final.pth").write_bytes(b"an earlier export")
    args = train_net.build_argument_parser().parse_args([
        "--config-file", TINY, "--eval-only", "--stitch", "all", "--export-stitch", "5",
        f"datasets.root={snnet['cfg'].datasets.root}", "train.device=cpu",
        f"train.output_dir={tmp_path}", f"train.init_checkpoint={snnet['weights']}"])
    monkeypatch.setattr(train_net.DetectionApp, "do_stitch_report",
                        lambda *a: pytest.fail("evaluated before the export check"))
    with pytest.raises(FileExistsError, match=r"--export-stitch would replace .*stitch_5/model_final.pth"):
        train_net.main(args)
    assert (tmp_path / "stitch_5" / "model_final.pth").read_bytes() == b"an earlier export"
