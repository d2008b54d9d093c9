"""The command line every detectron2 project's ``demo.py`` shares: a config (an SN-Net LazyConfig or an exported
stitch's ``config.yaml``), its weights, the stitch to run (by id, or the best within a GFLOPs budget of a
per-stitch report), the input images and the output folder, then the project's own options and ``KEY=VALUE``
config overrides."""
from __future__ import annotations

import argparse
from typing import Callable

import torch

from snnet_core.cli import add_debug_argument


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
