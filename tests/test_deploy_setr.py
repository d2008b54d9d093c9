"""Segmentation deployment: one stitch of a trained SN-Net SETR exported by ``train_net.py --export-stitch`` as a
standalone segmentor (its own LazyConfig, loadable without the SN-Net, the stitch's predictions), and the demo's
pictures."""
import os

import numpy as np
import pytest
import torch
from detectron2.config import instantiate
from PIL import Image

from projects.snnet_setr import demo
from snnet_core.d2.checkpoint import StrictDetectionCheckpointer
from snnet_core.io.config_io import load_config_file
from tests.test_setr_train import run_main, synthetic, tiny_cfg, tiny_opts, trained  # noqa: F401 (fixtures)

STITCH = 5


@pytest.fixture(scope="module")
def exported(synthetic, trained):  # noqa: F811
    run_main("--eval-only", "--export-stitch", str(STITCH), *tiny_opts(synthetic, trained))
    return os.path.join(trained, f"stitch_{STITCH}")


def test_an_exported_stitch_predicts_what_the_stitch_predicts(synthetic, trained, exported):  # noqa: F811
    cfg = load_config_file(os.path.join(exported, "config.yaml"))  # a user's way: the YAML, then detectron2
    alone = instantiate(cfg.model).eval()
    StrictDetectionCheckpointer(alone).load(cfg.train.init_checkpoint)
    assert not any("StitchedViT" in type(m).__name__ for m in alone.modules())
    assert len(alone.auxiliary_heads) == 0

    full = instantiate(tiny_cfg(synthetic, trained).model).eval()
    StrictDetectionCheckpointer(full).load(os.path.join(trained, "model_final.pth"))
    full.set_stitch(STITCH)
    loader = instantiate(tiny_cfg(synthetic, trained).dataloader.test)
    with torch.no_grad():
        for inputs in loader:
            want, got = full(inputs)[0]["sem_seg"], alone(inputs)[0]["sem_seg"]
            torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_the_demo_colours_the_segmentation_with_the_palette(synthetic, trained, exported, tmp_path):  # noqa: F811
    image = sorted(os.listdir(os.path.join(synthetic, "images", "validation")))[0]
    path = os.path.join(synthetic, "images", "validation", image)
    name = os.path.splitext(image)[0]
    argv = ["--config-file", os.path.join(exported, "config.yaml"), "--input", path, "--device", "cpu"]
    written = demo.main([*argv, "--output", str(tmp_path / "a")])
    assert sorted(os.path.basename(p) for p in written) == [f"{name}_overlay.png", f"{name}_seg.png"]
    seg = np.asarray(Image.open(tmp_path / "a" / f"{name}_seg.png").convert("RGB"))
    assert seg.shape[:2] == np.asarray(Image.open(path)).shape[:2]
    colours = {tuple(c) for c in seg.reshape(-1, 3)}
    palette = {tuple(c) for c in demo.palette(load_config_file(os.path.join(exported, "config.yaml")), 150)}
    assert colours <= palette  # every pixel in its class's colour
    with pytest.raises(FileExistsError):  # an earlier run's pictures are kept unless --overwrite
        demo.main([*argv, "--output", str(tmp_path / "a")])
