"""Least-squares initialisation of every stitching layer from calibration images (SN-Netv1 Sec. 3.3).

For each stitching position ``k`` (small block ``a_k``, large block ``b_k``) the anchors are run alone on the
calibration images and the token features after those blocks, ``X_S`` ``(N, D_S)`` and ``X_L`` ``(N, D_L)``,
give ``[X_S, 1] W = X_L`` (small-to-large) and ``[X_L, 1] W = X_S`` (large-to-small). The normal equations
are accumulated batch by batch in float64, so peak memory does not grow with the number of images.

In SN-Netv1's sliding-window space a layer is shared by the block pairs of its window (``LayerSpec.matches``):
each pair's solution is solved on its own and the layer gets their mean, as SN-Netv1's
``initialize_stitching_weights`` does; its dense-feature projections are fit like a stitching layer.

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
from snnet_core.model.stitch_space import LayerSpec
from snnet_core.model.stitching_layers import LeastSquaresAccumulator

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
        (``"stitch_s2l.3"``; a layer shared by several block pairs: the mean over its pairs); empty for
        ``num_images=0``.
    """
    if isinstance(num_images, bool) or not isinstance(num_images, int) or num_images < 0:
        raise ValueError(f"num_images must be an integer >= 0 (0: no LS init), got {num_images!r}")
    if num_images == 0:
        return {}
    was_training = snnet.training
    snnet.eval()
    device = next(snnet.parameters()).device
    specs = snnet.layer_specs()
    # one accumulator per (layer, block pair), in calibration_pairs' order
    accumulators = [(spec.name, LeastSquaresAccumulator(*_layer_dims(snnet, spec), device))
                    for spec in specs for _ in spec.matches]
    seen = 0
    # closed however the loop ends: an error (e.g. an unreadable image) is then printed below the bar, not into it
    with tqdm(total=num_images, desc="LS init of stitching layers", unit="img", disable=not progress) as bar:
        for images in batches:
            images = images[: num_images - seen].to(device)
            _check_finite_images(images, seen)
            for (spec, match, x, y), (_, acc) in zip(_calibration_items(snnet, images), accumulators):
                _check_finite_features(spec, match, x, y, seen, len(snnet.anchors))
                acc.update(x, y)
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
    for spec in specs:
        layer, shared = snnet.get_submodule(spec.name), [acc for name, acc in accumulators if name == spec.name]
        solutions = [acc.solve() for acc in shared]
        weight, bias = solutions[0] if len(solutions) == 1 else (
            torch.stack([w for w, _ in solutions]).mean(0), torch.stack([b for _, b in solutions]).mean(0))
        layer.load_solution(weight.to(layer.weight), bias.to(layer.bias))
        errors[spec.name] = sum(acc.mean_squared_error(weight, bias) for acc in shared) / len(shared)
    snnet.train(was_training)
    return errors


def _layer_dims(snnet: StitchedViT, spec: LayerSpec) -> Tuple[int, int]:
    return snnet.anchors[spec.source].embed_dim, snnet.anchors[spec.target].embed_dim


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


def _check_finite_features(spec: LayerSpec, match: Tuple[int, int], x: torch.Tensor, y: torch.Tensor,
                           first_index: int, num_anchors: int) -> None:
    """Raise, naming the stitching layer, if its calibration features ``(B, N, D)`` are not finite."""
    for what, features in (("input", x), ("target", y)):
        if not torch.isfinite(features).all():
            raise FloatingPointError(
                f"LS init of stitching layer {spec.name} ({_describe_match(spec, match, num_anchors)}): the {what} "
                "features of "
                f"calibration images {first_index}..{first_index + features.shape[0] - 1} are NaN or inf although "
                "the images are finite; check the anchors' weights (a NaN/inf parameter) and the images' range"
            )


def _describe_match(spec: LayerSpec, match: Tuple[int, int], num_anchors: int) -> str:
    """The blocks whose features the layer maps: ``"fast block 2 -> slow block 5"`` (two anchors),
    ``"A0 block 2 -> A1 embedding"`` (more)."""
    names = ("fast", "slow") if num_anchors == 2 else [f"A{i}" for i in range(num_anchors)]
    source, target = (f"{names[a]} block {b}" if b >= 0 else f"{names[a]} embedding"
                      for a, b in ((spec.source, match[0]), (spec.target, match[1])))
    return f"{source} -> {target}"


def reconstruction_error(layer: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Mean squared error of ``layer(x)`` against ``y``."""
    with torch.no_grad():
        return float(torch.mean((layer(x) - y) ** 2))


def _calibration_items(
    snnet: StitchedViT, images: torch.Tensor
) -> List[Tuple[LayerSpec, Tuple[int, int], torch.Tensor, torch.Tensor]]:
    """``(layer, block pair, input features, target features)`` for each block pair of each layer LS init fits."""
    specs = snnet.layer_specs()
    needed: Dict[int, set] = {}
    for spec in specs:
        for source_block, target_block in spec.matches:
            needed.setdefault(spec.source, set()).add(source_block)
            needed.setdefault(spec.target, set()).add(target_block)
    outputs = {a: snnet.anchor_block_outputs(images, a, sorted(blocks)) for a, blocks in needed.items()}
    return [(spec, match, outputs[spec.source][match[0]], outputs[spec.target][match[1]])
            for spec in specs for match in spec.matches]


def calibration_pairs(snnet: StitchedViT, images: torch.Tensor) -> List[Tuple[str, torch.Tensor, torch.Tensor]]:
    """``(layer name, input features, target features)`` of every layer LS init fits on ``images``: the anchors'
    token features after the matched blocks (``StitchedViT.layer_specs``); a layer shared by several block pairs
    (SN-Netv1's windows) comes once per pair."""
    return [(spec.name, x, y) for spec, _, x, y in _calibration_items(snnet, images)]
