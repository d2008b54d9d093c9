"""Least-squares initialisation of every stitching layer from calibration images (SN-Netv1 Sec. 3.3).

For each stitching position ``k`` (small block ``a_k``, large block ``b_k``) the anchors are run alone on the
calibration images and the token features after those blocks, ``X_S`` ``(N, D_S)`` and ``X_L`` ``(N, D_L)``,
give ``[X_S, 1] W = X_L`` (small-to-large) and ``[X_L, 1] W = X_S`` (large-to-small). The normal equations
are accumulated batch by batch in float64, so peak memory does not grow with the number of images.

The number of calibration images is a setting of every project (SN-Netv1 supplementary F compares 0, 50, 100 and
200): 0 solves nothing, and the stitching layers keep PyTorch's default initialisation
(``StitchingLayer.reset_parameters``: ``nn.Linear``'s Kaiming-uniform weight and uniform bias).
"""
from __future__ import annotations

import logging
from typing import Dict, Iterable, List, Tuple

import torch
from tqdm import tqdm

from snnet_core.model.snnet import StitchedViT
from snnet_core.model.stitch_space import FAST, SLOW
from snnet_core.model.stitching_layers import LeastSquaresAccumulator, StitchingLayer

logger = logging.getLogger(__name__)


@torch.no_grad()
def ls_init_stitching_layers(
    snnet: StitchedViT,
    batches: Iterable[torch.Tensor],
    num_images: int = 100,
    progress: bool = True,
) -> Dict[str, float]:
    """Solve and load the LS solution into all stitching layers.

    Args:
        snnet: the SN-Net; its anchors are run in eval mode (restored afterwards).
        batches: iterable of image batches ``(B, 3, H, W)`` on the model's device.
        num_images: number of calibration images to use (the paper uses 100); 0: none, ``batches`` is not read
            and the layers keep their initialisation.
        progress: show a tqdm bar.

    Returns:
        mean squared error of the LS solution on the calibration features, per layer name
        (``"stitch_s2l.3"``); empty for ``num_images=0``.
    """
    if isinstance(num_images, bool) or not isinstance(num_images, int) or num_images < 0:
        raise ValueError(f"num_images must be an integer >= 0 (0: no LS init), got {num_images!r}")
    if num_images == 0:
        return {}
    was_training = snnet.training
    snnet.eval()
    device = next(snnet.parameters()).device
    accumulators = {
        name: LeastSquaresAccumulator(layer.in_dim, layer.out_dim, device)
        for name, layer in snnet.named_modules() if isinstance(layer, StitchingLayer)
    }
    seen = 0
    # closed however the loop ends: an error (e.g. an unreadable image) is then printed below the bar, not into it
    with tqdm(total=num_images, desc="LS init of stitching layers", unit="img", disable=not progress) as bar:
        for images in batches:
            images = images[: num_images - seen].to(device)
            _check_finite_images(images, seen)
            for name, x, y in calibration_pairs(snnet, images):
                _check_finite_features(snnet, name, x, y, seen)
                accumulators[name].update(x, y)
            seen += images.shape[0]
            bar.update(images.shape[0])
            del images, x, y  # release this batch and its features before the loader produces the next
            if seen >= num_images:
                break
    if seen == 0:
        raise RuntimeError("LS init got no calibration images: the data loader is empty")
    if seen < num_images:
        logger.warning("LS init used %d calibration images (%d requested): the loader ran out", seen, num_images)
    errors = {}
    for name, acc in accumulators.items():
        layer = snnet.get_submodule(name)
        weight, bias = acc.solve()
        layer.load_solution(weight.to(layer.weight), bias.to(layer.bias))
        errors[name] = acc.mean_squared_error(weight, bias)
    snnet.train(was_training)
    return errors


def describe_ls_init(num_images: int, key: str) -> str:
    """What a training run does with its stitching layers, for its log: ``key`` names the config value holding
    ``num_images`` (e.g. ``"snnet.ls_init_images"``)."""
    if num_images == 0:
        return (f"LS init off ({key}=0): the stitching layers keep PyTorch's default initialisation (nn.Linear's "
                "Kaiming-uniform weights, uniform biases)")
    return f"LS init of the stitching layers on {num_images} training images ({key}={num_images})"


def _check_finite_images(images: torch.Tensor, first_index: int) -> None:
    """Raise, naming the images, if a calibration batch ``(B, 3, H, W)`` holds NaN or inf values."""
    bad = ~torch.isfinite(images.flatten(1)).all(dim=1)
    if bad.any():
        indices = [first_index + int(i) for i in torch.nonzero(bad).flatten()]
        raise ValueError(
            f"LS init: calibration images {indices[:10]} (counted from 0 over the loader) hold NaN or inf values; "
            "they would make every stitching layer NaN. Check the calibration data (decoding, normalisation, "
            "division by a zero std) and drop or repair these images"
        )


def _check_finite_features(snnet: StitchedViT, name: str, x: torch.Tensor, y: torch.Tensor, first_index: int) -> None:
    """Raise, naming the stitching layer, if its calibration features ``(B, N, D)`` are not finite."""
    for what, features in (("input", x), ("target", y)):
        if not torch.isfinite(features).all():
            raise FloatingPointError(
                f"LS init of stitching layer {name} ({_describe_layer(snnet, name)}): the {what} features of "
                f"calibration images {first_index}..{first_index + features.shape[0] - 1} are NaN or inf although "
                "the images are finite; check the anchors' weights (a NaN/inf parameter) and the images' range"
            )


def _describe_layer(snnet: StitchedViT, name: str) -> str:
    """``"fast block 2 -> slow block 5"`` for ``stitch_s2l.2`` (the blocks whose features the layer maps)."""
    direction, position = name.split("_")[1].split(".")
    k = int(position)
    fast, slow = f"fast block {k}", f"slow block {snnet.space.pairs[k]}"
    return f"{fast} -> {slow}" if direction == "s2l" else f"{slow} -> {fast}"


def reconstruction_error(layer: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Mean squared error of ``layer(x)`` against ``y``."""
    with torch.no_grad():
        return float(torch.mean((layer(x) - y) ** 2))


def calibration_pairs(snnet: StitchedViT, images: torch.Tensor) -> List[Tuple[str, torch.Tensor, torch.Tensor]]:
    """``(layer name, input features, target features)`` for every stitching layer on ``images``: the two
    anchors' token features after the paired blocks (only the paired large-anchor blocks are kept)."""
    pairs = snnet.space.pairs
    fast_out = snnet.anchor_block_outputs(images, FAST)
    slow_out = snnet.anchor_block_outputs(images, SLOW, pairs)
    out = [(f"stitch_s2l.{k}", fast_out[k], slow_out[pairs[k]]) for k in range(len(snnet.stitch_s2l))]
    out += [(f"stitch_l2s.{k}", slow_out[pairs[k]], fast_out[k]) for k in range(len(snnet.stitch_l2s))]
    return out
