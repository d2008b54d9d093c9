"""What every detectron2 project's ``demo.py`` shares: its command line (a config, an SN-Net LazyConfig or an
exported stitch's ``config.yaml``, its weights, the stitch to run by id or the best within a GFLOPs budget of a
per-stitch report, the input images and the output folder, then the project's own options and ``KEY=VALUE``
config overrides) and the loading of its images' names, config and model."""
from __future__ import annotations

import argparse
from typing import Any, Callable, List, Mapping, Sequence, Tuple

import torch
import torch.nn as nn
from omegaconf import DictConfig

from snnet_core.cli import add_debug_argument
from snnet_core.d2.checkpoint import load_model
from snnet_core.io.config_io import apply_overrides, check_config_kind, load_config_file
from snnet_core.io.image_size import check_image_pixels
from snnet_core.io.images import list_images, output_paths


def demo_argument_parser(description: str, pictures: str, metric: str,
                         add_options: Callable[[argparse.ArgumentParser], None]) -> argparse.ArgumentParser:
    """The parser of a detectron2 project's demo: ``pictures`` names what it writes per image (e.g. ``NAME.png``),
    ``metric`` the report column ``--max-gflops`` ranks stitches by, ``add_options`` adds the project's options
    (before the trailing ``opts``)."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True, metavar="FILE", help="SN-Net LazyConfig or an exported config.yaml")
    p.add_argument("--weights", metavar="FILE", help="trained weights (default: the config's train.init_checkpoint)")
    p.add_argument("--input", nargs="+", required=True, metavar="PATH", help="image files or folders of images")
    p.add_argument("--output", required=True, metavar="DIR", help=f"folder for {pictures}")
    p.add_argument("--overwrite", action="store_true", help="replace the pictures of an earlier run in --output")
    choice = p.add_mutually_exclusive_group()
    choice.add_argument("--stitch", type=int, metavar="ID", help="the SN-Net's stitch to run (default: large anchor)")
    choice.add_argument("--max-gflops", type=float, metavar="G", help="the best stitch within G GFLOPs")
    p.add_argument("--report", metavar="DIR", help=f"the per-stitch report --max-gflops ranks stitches by ({metric})")
    add_options(p)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    add_debug_argument(p)
    p.add_argument("opts", nargs=argparse.REMAINDER, metavar="KEY=VALUE", help="config overrides")
    return p


def load_demo(config_file: str, inputs: Sequence[str], output_dir: str, suffixes: Sequence[str], overwrite: bool,
              kind: str, register_datasets: Callable[[Mapping[str, Any]], None], weights: str | None, device: str,
              opts: Sequence[str]) -> Tuple[List[str], List[List[str]], DictConfig, nn.Module]:
    """``(images, outputs, cfg, model)`` of a demo run: the images of ``inputs``, the files each one's pictures go
    to (``output_dir/NAME<suffix>``; an earlier run's are replaced only with ``overwrite``), the config of
    ``config_file`` (``kind``: the task whose configs the demo takes) with ``opts`` applied and its ``datasets``
    registered, and the model with ``weights`` on ``device``. Too large an image or a config of another task is
    refused before the model is built."""
    images = list_images(inputs)
    outputs = output_paths(images, output_dir, suffixes, overwrite)
    for path in images:
        check_image_pixels(path)
    cfg = load_config_file(config_file)  # a YAML file (an exported stitch's config.yaml) is read as data
    check_config_kind(cfg, config_file, kind, ("model",))
    cfg = apply_overrides(cfg, opts, config_file)
    if "datasets" in cfg:
        register_datasets(cfg.datasets)
    return images, outputs, cfg, load_model(cfg, weights, device)

