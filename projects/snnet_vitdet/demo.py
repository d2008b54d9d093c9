#!/usr/bin/env python
"""Detections of one stitch on your own images, drawn by detectron2's ``Visualizer`` (as detectron2's demo/demo.py).

    # an SN-Net: its config and trained weights, one stitch by id or by budget
    python projects/snnet_vitdet/demo.py --config-file projects/snnet_vitdet/configs/synthetic/mask_rcnn_snnetv2_tiny.py \\
        --weights output/snnet_vitdet_tiny/model_final.pth --stitch 5 --input img.jpg images/ --output output/demo
    python projects/snnet_vitdet/demo.py --config-file ... --weights ... --max-gflops 0.3 \\
        --report output/snnet_vitdet_tiny/stitch_report_synthetic_shapes_val --input images/ --output output/demo
    # a stitch exported by train_net.py --export-stitch (its config names its weights)
    python projects/snnet_vitdet/demo.py --config-file output/snnet_vitdet_tiny/stitch_5/config.yaml \\
        --input images/ --output output/demo

Writes ``--output/NAME.png`` per input image: the image with the predicted boxes, masks and class names above
``--confidence-threshold``. ``--max-gflops G`` picks, with ``--report`` (a per-stitch report), the stitch with the
best primary metric within G GFLOPs (``python -m snnet_core.select``'s choice); without a report the most
expensive stitch within G GFLOPs of the FLOPs table at ``snnet.flops_input_size``. Images are read as
detectron2 reads them and resized by the config's test-time augmentation (``dataloader.test.mapper``); an image
larger than what that resize gives (e.g. a 4000x3000 photo for COCO's 1024 pixels) is predicted and drawn at that
size, the model's input size, and named in one log line; a smaller one at its own size. An image of more than
``snnet_core.io.image_size.MAX_IMAGE_PIXELS`` (50 MP) is refused from its header, before it is decoded.

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

import argparse
import json
import logging
from typing import Any, Dict, List, Optional, Sequence

import cv2
import numpy as np
import torch
from detectron2.config import instantiate
from detectron2.data import Metadata, MetadataCatalog
from detectron2.data import transforms as T
from detectron2.data.detection_utils import read_image
from detectron2.utils.visualizer import ColorMode, Visualizer
from omegaconf import DictConfig

from projects.snnet_vitdet.console import LOGGERS
from projects.snnet_vitdet.data import dataset_names, register_coco_json_datasets
from projects.snnet_vitdet.evaluation import RESULTS_TASK, detector_flops_table
from projects.snnet_vitdet.export import StitchViTDetBackbone
from projects.snnet_vitdet.training import stitched_backbone
from snnet_core import best_under_budget
from snnet_core.io.atomic_io import write_atomic
from snnet_core.cli import run_command
from snnet_core.d2.demo import demo_argument_parser, load_demo
from snnet_core.console import run_logging
from snnet_core.io.image_size import check_image_pixels
from snnet_core.select import best_stitch_in_report

logger = logging.getLogger("projects.snnet_vitdet.demo")

def read_input(path: str, fmt: str) -> np.ndarray:
    """``(H, W, 3)`` uint8 in the model's ``fmt`` (``"RGB"``/``"BGR"``); ``ValueError`` naming an unreadable file,
    or (``ImageTooLargeError``) one of more than ``MAX_IMAGE_PIXELS`` pixels (checked before decoding)."""
    check_image_pixels(path)  # from the header: nothing decoded yet
    try:
        return read_image(path, format=fmt)
    except Exception as exc:  # PIL's UnidentifiedImageError, OSError for a truncated file, ...
        raise ValueError(f"cannot read image {path!r} ({type(exc).__name__}: {exc}); give a jpg/png/bmp/tiff/webp "
                         "file or leave it out") from exc


def demo_metadata(cfg: DictConfig) -> Metadata:
    """Metadata of the config's test dataset, its class names read from its COCO json if not known yet (a
    dataset registered from the config gets them only once loaded); empty metadata without a test dataset."""
    names = dataset_names(cfg.dataloader.test) if "dataloader" in cfg else []
    if not names:
        return MetadataCatalog.get("__snnet_demo_no_dataset__")
    meta = MetadataCatalog.get(names[0])
    json_file = meta.get("json_file")
    if not meta.get("thing_classes") and json_file and os.path.isfile(json_file):
        with open(json_file) as f:
            categories = sorted(json.load(f).get("categories", []), key=lambda c: c["id"])
        meta.set(thing_classes=[c["name"] for c in categories])
    return meta


def choose_demo_stitch(cfg: DictConfig, model: torch.nn.Module, stitch: Optional[int], max_gflops: Optional[float],
                       report: Optional[str]) -> Optional[int]:
    """The stitch to run: ``stitch``, or the choice for ``max_gflops`` (by ``report``, else by the FLOPs table);
    ``None`` for a model that is one network (exported stitch or baseline), for which ``stitch`` must be its own."""
    backbone = stitched_backbone(model)
    if backbone is None:
        own = model.backbone.net.stitch_id if isinstance(model.backbone.net, StitchViTDetBackbone) else None
        if max_gflops is not None or (stitch is not None and stitch != own):
            what = f"the exported stitch {own}" if own is not None else "a single-ViT detector"
            raise ValueError(f"the model of this config is {what}: --stitch/--max-gflops choose among the stitches of "
                             "an SN-Net; give the SN-Net's config and weights, or leave them out")
        return None
    if max_gflops is None:
        return backbone.set_stitch(stitch if stitch is not None else backbone.stitch_id).id
    if report is not None:
        chosen = best_stitch_in_report(report, max_gflops, task=RESULTS_TASK)
    else:
        table = detector_flops_table(model, tuple(cfg.snnet.flops_input_size))
        try:
            chosen = best_under_budget(table.gflops, table.gflops, max_gflops, True)
        except ValueError:
            cheapest = min(table.gflops, key=table.gflops.get)
            raise ValueError(f"--max-gflops {max_gflops}: no stitch fits; the cheapest is stitch {cheapest} with "
                             f"{table.gflops[cheapest]:.3f} GFLOPs at {table.input_size}") from None
    return backbone.set_stitch(chosen).id


class Predictor:
    """detectron2's ``DefaultPredictor`` for a LazyConfig: test-time resize, one image in, ``Instances`` out."""

    def __init__(self, cfg: DictConfig, model: torch.nn.Module):
        self.model = model.eval()
        self.input_format = cfg.model.get("input_format", "BGR")
        augmentations = cfg.dataloader.test.mapper.augmentations if "dataloader" in cfg else []
        self.augmentations = T.AugmentationList([instantiate(a) for a in augmentations])

    def model_input(self, image: np.ndarray) -> Dict[str, Any]:
        """``image`` ``(H, W, 3)`` uint8 in ``input_format`` -> the model's input dict (resized ``(3, h, w)``
        image, and the size to predict at)."""
        h, w = image.shape[:2]
        aug = T.AugInput(image)
        self.augmentations(aug)
        return {"image": torch.as_tensor(np.ascontiguousarray(aug.image.transpose(2, 0, 1))), "height": h, "width": w}

    def fit(self, image: np.ndarray) -> np.ndarray:
        """``image`` at the size the model sees it (the test-time resize), if that has fewer pixels; else
        ``image``: predictions and drawings of a large photo are made at the model's input size."""
        aug = T.AugInput(image)
        self.augmentations(aug)
        return aug.image if aug.image.shape[0] * aug.image.shape[1] < image.shape[0] * image.shape[1] else image

    @torch.no_grad()
    def __call__(self, image: np.ndarray):
        """``image`` ``(H, W, 3)`` uint8 in ``input_format`` -> ``Instances`` at the image's size."""
        return self.model([self.model_input(image)])[0]["instances"]


def run(config_file: str, inputs: Sequence[str], output_dir: str, weights: Optional[str] = None,
        stitch: Optional[int] = None, max_gflops: Optional[float] = None, report: Optional[str] = None,
        confidence_threshold: float = 0.5, device: str = "cpu", opts: Sequence[str] = (), overwrite: bool = False
        ) -> List[str]:
    """Draw the detections of every image of ``inputs`` into ``output_dir``; returns the paths written (named by
    ``snnet_core.io.images.output_paths``: outputs of an earlier run are replaced only with ``overwrite``)."""
    if stitch is not None and max_gflops is not None:
        raise ValueError("give --stitch or --max-gflops, not both")
    images, outputs, cfg, model = load_demo(
        config_file, inputs, output_dir, (".png",), overwrite, "detection",
        lambda datasets: register_coco_json_datasets(datasets.get("coco_json", {})), weights, device, opts)
    stitch_id = choose_demo_stitch(cfg, model, stitch, max_gflops, report)
    if stitch_id is not None:
        logger.info("running stitch %d (%s)", stitch_id, stitched_backbone(model).space[stitch_id].route)
    predictor = Predictor(cfg, model)
    metadata = demo_metadata(cfg)
    written = []
    for path, (out,) in zip(images, outputs):
        image = read_input(path, predictor.input_format)
        fitted = predictor.fit(image)
        if fitted is not image:
            logger.info("%s: %dx%d (HxW) predicted and drawn at %dx%d, the model's input size (the config's "
                        "dataloader.test.mapper resize)", path, *image.shape[:2], *fitted.shape[:2])
            image = fitted
        instances = predictor(image).to("cpu")
        instances = instances[instances.scores >= confidence_threshold]
        rgb = image if predictor.input_format == "RGB" else image[:, :, ::-1]
        np.random.seed(0)  # Visualizer draws its instance colours from numpy's RNG: the same picture every run
        drawn = Visualizer(rgb, metadata, instance_mode=ColorMode.IMAGE).draw_instance_predictions(instances)
        ok, png = cv2.imencode(".png", drawn.get_image()[:, :, ::-1])
        if not ok:
            raise RuntimeError(f"could not encode the drawing of {path}")
        write_atomic(out, lambda f: f.write(png.tobytes()), binary=True)
        written.append(out)
        logger.info("%s: %d detections -> %s", path, len(instances), out)
    return written


def build_parser() -> argparse.ArgumentParser:
    return demo_argument_parser(__doc__, "the drawings (NAME.png)", "AP", lambda p: p.add_argument(
        "--confidence-threshold", type=float, default=0.5, help="the lowest score of a detection drawn"))


@run_logging(LOGGERS)  # detectron2's log format, as train_net.py's
def main(argv: Optional[Sequence[str]] = None) -> List[str]:
    args = build_parser().parse_args(argv)
    return run(args.config_file, args.input, args.output, args.weights, args.stitch, args.max_gflops, args.report,
               args.confidence_threshold, args.device, args.opts, args.overwrite)


if __name__ == "__main__":
    run_command(main)
