#!/usr/bin/env python
"""The top-5 classes of your own images by a trained SN-Net classifier (one stitch, by id or by budget) or an
exported stitch, with the flags of the other projects' demos.

    python projects/snnet_cls/demo.py --weights output/cls_demo/model_final.pth --stitch 5 --input photo.jpg
    python projects/snnet_cls/demo.py --weights output/cls_demo/model_final.pth --max-gflops 0.0006 \\
        --report output/cls_demo/stitch_report_synthetic_val --input photos/
    python projects/snnet_cls/demo.py --weights output/cls_demo/stitch_5/model_final.pth --input photo.jpg

Each image is read as RGB and transformed as the evaluation does (resize to the checkpoint's input size over its
crop ratio, bicubic, centre crop, ImageNet mean/std); the five most probable classes are printed with their softmax
probability. Class names are those the training run stored (its class folder names: ImageNet's are WordNet ids such
as ``n01440764``); ``--class-names FILE`` gives readable ones, one per line in class order, or ``WNID name`` lines
(e.g. ImageNet's LOC_synset_mapping.txt, which you provide). ``--weights`` is a training checkpoint
(``<train.output_dir>/model_final.pth``; ``--stitch`` picks the stitch, default the large anchor; ``--max-gflops G``
with ``--report`` the stitch with the best top-1 within G GFLOPs) or a stitch exported by ``train.py
--export-stitch ID``. An image of more than ``snnet_core.io.image_size.MAX_IMAGE_PIXELS`` is refused from its header.
"""
from __future__ import annotations

import os
import sys

# run as a script, the repository's packages (snnet_core, projects, datasets) are imported from the checkout
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import argparse
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from PIL import Image

from projects.snnet_cls.console import run_logging
from projects.snnet_cls.evaluation import TASK
from projects.snnet_cls.export import load_classifier
from projects.snnet_cls.transforms import eval_transform
from snnet_core.cli import add_debug_argument, run_command
from snnet_core.io.config_io import local_checkpoint
from snnet_core.io.image_size import check_image_pixels
from snnet_core.io.images import list_images
from snnet_core.select import demo_stitch

Prediction = List[Tuple[str, float]]


def read_class_names(path: str, classes: Sequence[str]) -> List[str]:
    """Readable names of ``classes`` (the stored folder names) from ``path``: ``WNID name`` lines matched by their
    first word, or one name per line in class order; ``ValueError`` naming the file when neither fits."""
    with open(path, encoding="utf-8") as f:
        lines = [line.strip() for line in f if line.strip()]
    by_id: Dict[str, str] = {}
    for line in lines:
        key, _, name = line.partition(" ")
        by_id[key] = name.strip() or key
    if classes and all(c in by_id for c in classes):
        return [by_id[c] for c in classes]
    if not classes or len(lines) == len(classes):
        return lines
    raise ValueError(f"--class-names {path}: {len(lines)} lines for {len(classes)} classes, and its first words do not "
                     f"name the classes ({', '.join(classes[:3])}, ...): give one name per class in class order, or "
                     "'ID name' lines")


def top5(logits: torch.Tensor, names: Sequence[str]) -> Prediction:
    """``logits (num_classes,)`` -> the five most probable ``(name, probability)``, best first."""
    probs = logits.float().softmax(-1)
    values, indices = probs.topk(min(5, probs.numel()))
    return [(names[i] if i < len(names) else f"class {i}", float(v)) for v, i in zip(values.tolist(), indices.tolist())]


def run(weights: str, inputs: Sequence[str], stitch_id: Optional[int] = None, max_gflops: Optional[float] = None,
        report: Optional[str] = None, class_names: Optional[str] = None, device: str = "cpu"
        ) -> Dict[str, Prediction]:
    """Top-5 of every image of ``inputs``, printed; returns ``{image path: [(class name, probability), ...]}``."""
    if stitch_id is not None and max_gflops is not None:
        raise ValueError("give --stitch or --max-gflops, not both")
    images = list_images(inputs)  # bad paths fail before the model is loaded
    for path in images:
        check_image_pixels(path)
    weights = local_checkpoint(weights, "--weights")
    chosen = demo_stitch(max_gflops, report, TASK)
    loaded = load_classifier(weights, stitch_id if chosen is None else chosen, map_location=device)
    names = read_class_names(class_names, loaded.classes) if class_names else loaded.classes
    transform = eval_transform(loaded.input_size, loaded.crop_ratio)
    results: Dict[str, Prediction] = {}
    for path in images:
        try:
            with Image.open(path) as img:
                image = transform(img.convert("RGB"))
        except (OSError, SyntaxError) as exc:
            raise ValueError(f"{path} is not an image PIL can read ({type(exc).__name__}: {exc})") from exc
        results[path] = top5(loaded.logits(image[None].to(device))[0], names)
        print(f"{path} ({loaded.stitch}):")
        for rank, (name, prob) in enumerate(results[path], 1):
            print(f"  {rank}. {name:<30} {100 * prob:5.1f}%")
    return results


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", required=True, metavar="FILE",
                   help="training checkpoint (model_final.pth) or exported stitch (stitch_<ID>/model_final.pth)")
    p.add_argument("--input", nargs="+", required=True, metavar="PATH", help="image files or folders of images")
    choice = p.add_mutually_exclusive_group()
    choice.add_argument("--stitch", type=int, metavar="ID", help="stitch of an SN-Net checkpoint (default: large "
                                                                  "anchor)")
    choice.add_argument("--max-gflops", type=float, metavar="G", help="the best stitch of --report within G GFLOPs")
    p.add_argument("--report", metavar="DIR", help="per-stitch report for --max-gflops (ranks stitches by top-1)")
    p.add_argument("--class-names", metavar="FILE", help="readable class names: one per line in class order, or "
                                                         "'WNID name' lines")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    add_debug_argument(p)
    return p


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Prediction]:
    args = build_parser().parse_args(argv)
    with run_logging():  # detectron2's log format, as train.py's
        return run(args.weights, args.input, args.stitch, args.max_gflops, args.report, args.class_names,
                   args.device)


if __name__ == "__main__":
    run_command(main)
