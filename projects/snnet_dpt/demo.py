#!/usr/bin/env python
"""Depth of your own images from a trained SN-Net DPT (one stitch, by id or by budget) or an exported stitch, with
the flags of the detection demo (``projects/snnet_vitdet/demo.py``).

    python projects/snnet_dpt/demo.py --weights output/dpt_demo/model_final.pth --stitch 5 \\
        --input photo.jpg more_photos/ --output output/dpt_demo/demo
    python projects/snnet_dpt/demo.py --weights output/dpt_demo/model_final.pth --max-gflops 0.27 \\
        --report output/dpt_demo/stitch_report_nyuv2_synthetic_test --input photo.jpg --output output/dpt_demo/demo
    python projects/snnet_dpt/demo.py --weights output/dpt_demo/stitch_5/model_final.pth --input photo.jpg \\
        --output output/dpt_demo/demo

For each image ``NAME.EXT`` it writes, into ``--output``:

- ``NAME_depth.png``: the image beside its depth, colour-mapped, with a colour bar in metres;
- ``NAME_depth.npy``: the raw prediction, ``(H, W)`` float32 metres at the image's own size.

Images of the same ``NAME`` (``a/x.jpg``, ``b/x.jpg``) get ``NAME_2``, ... (logged); an output that would replace
an input image is refused, and so are outputs of an earlier run unless ``--overwrite`` replaces them.

The image is read as RGB, resized to ``--size H W`` (default: the model's input size, i.e. its own size scaled
down, aspect kept, to at most the pixels of the ``dataloader.eval_size`` the training checkpoint records, NYUv2's
480x640 for a file that records none, then rounded to multiples of the patch size; a smaller image keeps its
size; each scaled image is named in one log line), normalised as in training (mean = std = 127.5); the prediction
(with the flip average of the evaluation unless ``--no-flip``) is resized back to the image's size (bilinear), so
the ``.npy`` is at the image's size and the PNG preview at most ``PREVIEW_SIDE`` pixels a side. An image of more
than ``snnet_core.io.image_size.MAX_IMAGE_PIXELS`` (50 MP) is refused from its header, before it is decoded.
``--weights`` is a training checkpoint (``<train.output_dir>/model_final.pth``; ``--stitch`` picks the stitch,
default the large anchor; ``--max-gflops G`` with ``--report`` the stitch with the best primary metric within G
GFLOPs, as ``python -m snnet_core.select REPORT --max-gflops G`` chooses it) or a stitch exported by ``train.py --export-stitch ID``
(``<train.output_dir>/stitch_<ID>/model_final.pth``).
"""
from __future__ import annotations

import os
import sys

# run as a script, the repository's packages (snnet_core, projects, datasets) are imported from the
# checkout: only snnet_core is installed, so that `projects`/`datasets` shadow nothing elsewhere
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import argparse
import io
import logging
from typing import List, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from projects.snnet_dpt.console import run_logging
from projects.snnet_dpt.evaluation import TASK, flip_average
from projects.snnet_dpt.export import load_depth_model
from projects.snnet_dpt.model import DPTDepthModel
from projects.snnet_dpt.transforms import PIXEL_MEAN, PIXEL_STD
from snnet_core import StitchedViT
from snnet_core.io.atomic_io import write_atomic
from snnet_core.io.config_io import local_checkpoint
from snnet_core.cli import add_debug_argument, run_command
from snnet_core.io.image_size import check_image_pixels
from snnet_core.io.images import list_images, output_paths
from snnet_core.select import demo_stitch

logger = logging.getLogger("projects.snnet_dpt.demo")
DEFAULT_EVAL_SIZE = (480, 640)  # dpt_snnetv2_deit3_s_l_nyu.py's dataloader.eval_size (NYUv2's test frames)
PREVIEW_SIDE = 1024  # pixels: the PNG's image and depth panels are drawn from copies at most this large


def read_rgb(path: str) -> np.ndarray:
    """``(H, W, 3)`` uint8 RGB; ``ValueError`` naming the file if it is not an image OpenCV can decode, or
    (``ImageTooLargeError``) if it has more than ``MAX_IMAGE_PIXELS`` pixels (checked before decoding)."""
    known = check_image_pixels(path)  # from the header: nothing decoded yet
    image = cv2.imread(path, cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"cannot read image {path!r}: not an image file OpenCV decodes (jpg, png, bmp, tiff, "
                         "webp), or truncated; convert it or leave it out")
    if known is None:  # a format PIL does not read: checked once decoded
        check_image_pixels(path, image.shape[:2])
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def input_size(image_hw: Tuple[int, int], patch_size: int, size: Optional[Sequence[int]],
               max_pixels: Optional[int] = None) -> Tuple[int, int]:
    """The network's input ``(H, W)``: ``size``, or the image's, scaled down (aspect kept) to at most
    ``max_pixels`` pixels if it has more, rounded to the nearest multiple of the patch."""
    if size is not None:
        h, w = (int(s) for s in size)
        if h % patch_size or w % patch_size or h <= 0 or w <= 0:
            raise ValueError(f"--size {h} {w}: both must be positive multiples of the patch size {patch_size}")
        return h, w
    scale = 1.0
    if max_pixels is not None and image_hw[0] * image_hw[1] > max_pixels:
        scale = (max_pixels / (image_hw[0] * image_hw[1])) ** 0.5
    return tuple(max(patch_size, round(s * scale / patch_size) * patch_size) for s in image_hw)


def recorded_eval_size(weights: str) -> Optional[Tuple[int, int]]:
    """The ``dataloader.eval_size`` ``(H, W)`` a training checkpoint records (read memory-mapped, after
    ``load_depth_model`` checked the file); ``None`` for an exported stitch or a checkpoint without it."""
    state = torch.load(weights, map_location="cpu", weights_only=True, mmap=True)
    size = state.get("eval_size") if isinstance(state, dict) else None
    return None if size is None else (int(size[0]), int(size[1]))


@torch.no_grad()
def predict_depth(model: DPTDepthModel, image: np.ndarray, size: Optional[Sequence[int]] = None,
                  flip: bool = True, max_pixels: Optional[int] = None) -> np.ndarray:
    """Metric depth ``(H, W)`` float32 of an ``(H, W, 3)`` RGB uint8 ``image`` (the model's selected stitch), the
    network run at ``input_size(image, patch, size, max_pixels)``."""
    device = next(model.parameters()).device
    h, w = image.shape[:2]
    net_h, net_w = input_size((h, w), model.patch_size, size, max_pixels)
    resized = cv2.resize(image, (net_w, net_h), interpolation=cv2.INTER_LINEAR) if (net_h, net_w) != (h, w) else image
    x = torch.from_numpy((resized.astype(np.float32) - PIXEL_MEAN) / PIXEL_STD).permute(2, 0, 1)[None].to(device)
    pred = model(x)
    if flip:
        pred = flip_average(pred, model(x.flip(-1)))
    pred = F.interpolate(pred.float(), size=(h, w), mode="bilinear", align_corners=False)
    return pred[0, 0].cpu().numpy().astype(np.float32)


def depth_figure(image: np.ndarray, depth: np.ndarray, title: str) -> bytes:
    """PNG bytes: ``image`` beside ``depth`` colour-mapped (``magma_r``: near is bright) with a colour bar in m."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    h, w = depth.shape
    if max(h, w) > PREVIEW_SIDE:  # the figure is about 800 pixels wide: drawing 50 MP arrays would only cost memory
        scale = PREVIEW_SIDE / max(h, w)
        shown_hw = (max(1, round(w * scale)), max(1, round(h * scale)))
        image = cv2.resize(image, shown_hw, interpolation=cv2.INTER_AREA)
        depth = cv2.resize(depth, shown_hw, interpolation=cv2.INTER_AREA)
    fig, axes = plt.subplots(1, 2, figsize=(2 * 4.0 * w / max(h, w) + 1.2, 4.0 * h / max(h, w) + 0.6),
                             gridspec_kw={"width_ratios": [1, 1.08]})
    axes[0].imshow(image)
    axes[0].set_title("image", fontsize=9)
    shown = axes[1].imshow(depth, cmap="magma_r")
    axes[1].set_title(title, fontsize=9)
    fig.colorbar(shown, ax=axes[1], fraction=0.046, pad=0.03).set_label("depth (m)")
    for ax in axes:
        ax.axis("off")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()


def describe(model: DPTDepthModel) -> str:
    """``stitch 5 (S[0:2] -> L[4:8])`` for the stitch the model runs."""
    backbone = model.backbone
    route = backbone.space[backbone.stitch_id].route if isinstance(backbone, StitchedViT) else backbone.route
    return f"stitch {backbone.stitch_id} ({route})"


def run(weights: str, inputs: Sequence[str], output_dir: str, stitch_id: Optional[int] = None,
        size: Optional[Sequence[int]] = None, flip: bool = True, device: str = "cpu",
        max_gflops: Optional[float] = None, report: Optional[str] = None, overwrite: bool = False) -> List[str]:
    """Predict every image of ``inputs``; returns the paths written (PNG and ``.npy`` per image, named by
    ``snnet_core.io.images.output_paths``: outputs of an earlier run are replaced only with ``overwrite``)."""
    if stitch_id is not None and max_gflops is not None:
        raise ValueError("give --stitch or --max-gflops, not both")
    images = list_images(inputs)  # bad paths fail before the model is loaded
    outputs = output_paths(images, output_dir, ("_depth.png", "_depth.npy"), overwrite)
    for path in images:  # too large an image is refused from its header before the model is loaded
        check_image_pixels(path)
    weights = local_checkpoint(weights, "--weights")  # a URL: refused unless already downloaded
    chosen = demo_stitch(max_gflops, report, TASK)
    model = load_depth_model(weights, stitch_id if chosen is None else chosen, map_location=device)
    title = f"depth, {describe(model)}"
    eval_size = recorded_eval_size(weights)
    budget, source = ((eval_size, "the dataloader.eval_size the checkpoint records") if eval_size else
                      (DEFAULT_EVAL_SIZE, "NYUv2's eval size: the file records none"))
    max_pixels = budget[0] * budget[1]
    written: List[str] = []
    for path, (png_path, npy_path) in zip(images, outputs):
        image = read_rgb(path)
        net_hw = input_size(image.shape[:2], model.patch_size, size, max_pixels)
        if size is None and net_hw[0] * net_hw[1] < image.shape[0] * image.shape[1]:
            logger.info("%s: %dx%d (HxW) scaled to %dx%d for the network (at most the pixels of %dx%d, %s; "
                        "--size H W sets it); its depth is resized back to %dx%d", path, *image.shape[:2], *net_hw,
                        *budget, source, *image.shape[:2])
        depth = predict_depth(model, image, size, flip, max_pixels)
        write_atomic(npy_path, lambda f: np.save(f, depth), binary=True)
        png = depth_figure(image, depth, title)
        write_atomic(png_path, lambda f: f.write(png), binary=True)
        written += [png_path, npy_path]
        logger.info("%s: %.2f-%.2f m -> %s, %s", path, depth.min(), depth.max(), png_path, npy_path)
    return written


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", required=True, metavar="FILE",
                   help="training checkpoint (model_final.pth) or exported stitch (stitch_<ID>/model_final.pth)")
    p.add_argument("--input", nargs="+", required=True, metavar="PATH", help="image files or folders of images")
    p.add_argument("--output", required=True, metavar="DIR", help="folder for NAME_depth.png and NAME_depth.npy")
    p.add_argument("--overwrite", action="store_true", help="replace the outputs of an earlier run in --output")
    choice = p.add_mutually_exclusive_group()
    choice.add_argument("--stitch", type=int, metavar="ID",
                        help="stitch of an SN-Net checkpoint (default: large anchor)")
    choice.add_argument("--max-gflops", type=float, metavar="G", help="the best stitch of --report within G GFLOPs")
    p.add_argument("--report", metavar="DIR", help="per-stitch report for --max-gflops (ranks stitches by its metric)")
    p.add_argument("--size", type=int, nargs=2, metavar=("H", "W"),
                   help="network input size (multiples of the patch size; default: the image's, scaled down to at "
                        "most the pixels of the checkpoint's eval size, rounded)")
    p.add_argument("--no-flip", action="store_true", help="no flip averaging (half the compute)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    add_debug_argument(p)
    return p


@run_logging()  # detectron2's log format, as train.py's
def main(argv: Optional[Sequence[str]] = None) -> List[str]:
    args = build_parser().parse_args(argv)
    return run(args.weights, args.input, args.output, args.stitch, args.size, not args.no_flip, args.device,
               args.max_gflops, args.report, args.overwrite)


if __name__ == "__main__":
    run_command(main)
