#!/usr/bin/env python
"""The segmentation of one stitch on your own images, coloured with the dataset's palette.

    # an SN-Net: its config and trained weights, one stitch by id or by budget
    python projects/snnet_setr/demo.py --config-file projects/snnet_setr/configs/synthetic/setr_snnetv2_tiny.py \\
        --weights output/setr_tiny/model_final.pth --stitch 5 --input img.jpg images/ --output output/setr_demo
    python projects/snnet_setr/demo.py --config-file ... --weights ... --max-gflops 0.3 \\
        --report output/setr_tiny/stitch_report_synthetic_ade20k_val --input images/ --output output/setr_demo
    # a stitch exported by train_net.py --export-stitch (its config names its weights)
    python projects/snnet_setr/demo.py --config-file output/setr_tiny/stitch_5/config.yaml \\
        --input images/ --output output/setr_demo

Writes, per input image ``NAME``: ``--output/NAME_seg.png``, every pixel in the colour of its predicted class
(``stuff_colors`` of the config's test dataset, mmseg's palette for ADE20K and COCO-Stuff), and
``NAME_overlay.png``, that colouring blended over the image (``--opacity``). Images are read as the test loader
reads them (BGR, cv2) and predicted as ``train_net.py --eval-only`` evaluates: the config's test-time resize, the
sliding windows, the scores resized back to the image's size. ``--max-gflops G`` with ``--report`` (a per-stitch
report) picks the stitch with the best mIoU within G GFLOPs (``python -m snnet_core.select``'s choice). An
image of more than ``snnet_core.io.image_size.MAX_IMAGE_PIXELS`` (50 MP) is refused from its header, before it is
decoded.

Images of the same ``NAME`` (``a/x.jpg``, ``b/x.png``) get ``NAME_2``, ... (logged); a drawing that would replace
an input image is refused, and so are drawings of an earlier run unless ``--overwrite`` replaces them.
"""
from __future__ import annotations

import os
import sys
import warnings

# run as a script, the repository's packages (snnet_core, projects, datasets) are imported from the
# checkout: only snnet_core is installed, so that `projects`/`datasets` shadow nothing elsewhere
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated", category=FutureWarning)  # fvcore
os.environ.setdefault("DETECTRON2_DATASETS", "data")  # as train_net.py

import argparse
import logging
from typing import List, Optional, Sequence

import cv2
import numpy as np
import torch
from detectron2.config import instantiate
from detectron2.data import MetadataCatalog
from detectron2.data import transforms as T
from omegaconf import DictConfig

from projects.snnet_setr.data import dataset_names, read_bgr_image, register_sem_seg_datasets
from projects.snnet_setr.evaluation import PROJECT, RESULTS_TASK
from projects.snnet_setr.export import StitchBackbone
from projects.snnet_setr.training import stitched_setr
from snnet_core.cli import run_command
from snnet_core.console import run_logging
from snnet_core.d2.console import command_loggers
from snnet_core.d2.demo import demo_argument_parser, load_demo
from snnet_core.io.atomic_io import write_atomic
from snnet_core.select import demo_stitch

logger = logging.getLogger("projects.snnet_setr.demo")

SUFFIXES = ("_seg.png", "_overlay.png")


def palette(cfg: DictConfig, num_classes: int) -> np.ndarray:
    """``(num_classes, 3)`` uint8 RGB colours: the ``stuff_colors`` of the config's test dataset, or (a config
    without a registered test dataset) a fixed pseudo-random palette."""
    names = dataset_names(cfg.dataloader.test) if "dataloader" in cfg else []
    colors = MetadataCatalog.get(names[0]).get("stuff_colors", None) if names else None
    if colors is not None and len(colors) >= num_classes:
        return np.asarray(colors[:num_classes], dtype=np.uint8)
    return np.random.default_rng(0).integers(0, 256, (num_classes, 3), dtype=np.uint8)


def choose_demo_stitch(model: torch.nn.Module, stitch: Optional[int], max_gflops: Optional[float],
                       report: Optional[str]) -> Optional[int]:
    """The stitch to run: ``stitch``, or the best of ``report`` within ``max_gflops`` (``snnet_core.select.
    demo_stitch``); ``None`` for a model that is one network (exported stitch or baseline), for which ``stitch`` must
    be its own."""
    setr = stitched_setr(model)
    if setr is None:
        own = model.backbone.stitch_id if isinstance(model.backbone, StitchBackbone) else None
        if max_gflops is not None or (stitch is not None and stitch != own):
            what = f"the exported stitch {own}" if own is not None else "a single-ViT segmentor"
            raise ValueError(f"the model of this config is {what}: --stitch/--max-gflops choose among the stitches of "
                             "an SN-Net; give the SN-Net's config and weights, or leave them out")
        return None
    chosen = demo_stitch(max_gflops, report, task=RESULTS_TASK)
    if chosen is None:
        chosen = stitch if stitch is not None else setr.stitch_id
    return setr.set_stitch(chosen).id


def test_augmentations(cfg: DictConfig) -> T.AugmentationList:
    """The test loader's resize (``dataloader.test.mapper.augmentations``), none without a test loader."""
    augmentations = cfg.dataloader.test.mapper.get("augmentations", []) if "dataloader" in cfg else []
    return T.AugmentationList([instantiate(a) for a in augmentations])


@torch.no_grad()
def segment(model: torch.nn.Module, augmentations: T.AugmentationList, image: np.ndarray) -> np.ndarray:
    """BGR ``(H, W, 3)`` uint8 -> class per pixel ``(H, W)`` int64, predicted as the evaluation predicts."""
    height, width = image.shape[:2]
    aug = T.AugInput(image)
    augmentations(aug)
    resized = aug.image if model.input_format == "BGR" else aug.image[:, :, ::-1]
    inputs = {"image": torch.as_tensor(np.ascontiguousarray(resized.transpose(2, 0, 1))), "height": height,
              "width": width}
    return model([inputs])[0]["sem_seg"].argmax(dim=0).cpu().numpy()


def colour(classes: np.ndarray, colors: np.ndarray, image: np.ndarray, opacity: float) -> List[np.ndarray]:
    """BGR pictures of ``classes`` ``(H, W)``: the palette colouring, and that blended over ``image`` (BGR)."""
    seg = colors[classes][:, :, ::-1]
    overlay = (image.astype(np.float32) * (1 - opacity) + seg.astype(np.float32) * opacity).round()
    return [seg, overlay.astype(np.uint8)]


def run(config_file: str, inputs: Sequence[str], output_dir: str, weights: Optional[str] = None,
        stitch: Optional[int] = None, max_gflops: Optional[float] = None, report: Optional[str] = None,
        opacity: float = 0.5, device: str = "cpu", opts: Sequence[str] = (), overwrite: bool = False) -> List[str]:
    """Colour the segmentation of every image of ``inputs`` into ``output_dir`` (``NAME_seg.png``,
    ``NAME_overlay.png``); returns the paths written (named by ``snnet_core.io.images.output_paths``: outputs of
    an earlier run are replaced only with ``overwrite``)."""
    if stitch is not None and max_gflops is not None:
        raise ValueError("give --stitch or --max-gflops, not both")
    if not 0.0 <= opacity <= 1.0:
        raise ValueError(f"--opacity {opacity}: expected a number in [0, 1]")
    images, outputs, cfg, model = load_demo(
        config_file, inputs, output_dir, SUFFIXES, overwrite, "segmentation",
        lambda datasets: register_sem_seg_datasets(datasets.get("sem_seg", {})), weights, device, opts)
    stitch_id = choose_demo_stitch(model, stitch, max_gflops, report)
    if stitch_id is not None:
        logger.info("running stitch %d (%s)", stitch_id, stitched_setr(model).space[stitch_id].route)
    colors = palette(cfg, model.num_classes)
    augmentations = test_augmentations(cfg)
    written = []
    for path, outs in zip(images, outputs):
        try:
            image = read_bgr_image(path)
        except OSError as exc:
            raise ValueError(f"{exc}; give a jpg/png/bmp/tiff/webp file or leave it out") from exc
        classes = segment(model, augmentations, image)
        for out, picture in zip(outs, colour(classes, colors, image, opacity)):
            ok, png = cv2.imencode(".png", picture)
            if not ok:
                raise RuntimeError(f"could not encode the picture of {path}")
            write_atomic(out, lambda f: f.write(png.tobytes()), binary=True)
            written.append(out)
        logger.info("%s: %d classes -> %s", path, len(np.unique(classes)), ", ".join(outs))
    return written


def build_parser() -> argparse.ArgumentParser:
    return demo_argument_parser(__doc__, "NAME_seg.png and NAME_overlay.png", "mIoU", lambda p: p.add_argument(
        "--opacity", type=float, default=0.5, help="weight of the colouring in the overlay (0..1)"))


@run_logging(command_loggers(PROJECT))  # detectron2's log format, as train_net.py's
def main(argv: Optional[Sequence[str]] = None) -> List[str]:
    args = build_parser().parse_args(argv)
    return run(args.config_file, args.input, args.output, args.weights, args.stitch, args.max_gflops, args.report,
               args.opacity, args.device, args.opts, args.overwrite)


if __name__ == "__main__":
    run_command(main)
