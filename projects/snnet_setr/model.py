"""SETR segmentors in detectron2's meta-architecture style: a ViT backbone with dense features, the SETR-Naive
decode head and (training only) its auxiliary heads, as SN-Netv2's mmsegmentation ``EncoderDecoder`` runs them.

``StitchedSETR`` runs every stitch of a ``snnet_core.StitchedViT`` (one selected at a time, or many sharing route
prefixes: ``stitch_predictions``); ``SETR`` runs any backbone whose ``forward(images)`` returns a
``RouteOutput``: a single DeiT3 (``ViTBackbone``, the paper's anchor baselines) or an exported stitch.

Inputs and outputs follow detectron2's ``SemanticSegmentor``: ``forward(batched_inputs)`` takes one dict per image
with ``"image"`` (uint8 ``(3, H, W)`` in ``input_format`` channel order), in training ``"sem_seg"`` (long
``(H, W)``, ``ignore_value`` = not labelled), optionally ``"height"``/``"width"`` (the size to predict at);
training returns the losses, inference one ``{"sem_seg": (K, height, width) logits}`` per image.

mmseg's semantics, kept here:

- normalisation with ImageNet's RGB mean/std; a training batch is padded at the bottom/right to at least the crop
  size (image 0 after normalisation, label ``ignore_value``: mmseg ``SegDataPreProcessor``);
- the backbone reads the largest multiple of the patch size of each input (mmseg's stride-16 patch conv drops the
  rest), and logits are resized (bilinear, ``align_corners=False``) to the input's full size;
- the loss of each head is the cross-entropy of its logits resized to the label size, averaged over all pixels
  (ignored ones count as 0: mmseg ``CrossEntropyLoss`` with ``avg_non_ignore=False``), times its weight;
- sliding-window inference (mmseg ``slide_inference``): windows of ``crop_size`` every ``stride``, the last one of
  each row/column moved back inside the image, logits summed where windows overlap and divided by the number of
  windows covering each pixel; ``test_mode="whole"`` runs the whole image as one window. All windows of the images
  sharing a window shape go through the backbone as one batch.
"""
from __future__ import annotations

import copy
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from detectron2.config import instantiate
from detectron2.modeling.postprocessing import sem_seg_postprocess
from timm.models.vision_transformer import VisionTransformer

from snnet_core import FlopsTable, Stitch, StitchedViT, StitchSpace, build_flops_table, count_gflops, run_stitches
from snnet_core.model.flops import rng_untouched
from snnet_core.model.route import RouteOutput, RoutePlan, Tap, run_plan, tokens_to_map

from .head import SETRUPHead

__all__ = ["ViTBackbone", "SETR", "StitchedSETR", "stitched_vit", "slide_windows", "decode_head_cost",
           "model_for_counting", "setr_flops_table", "IMAGENET_RGB_MEAN", "IMAGENET_RGB_STD"]

IMAGENET_RGB_MEAN = (123.675, 116.28, 103.53)  # mmseg SegDataPreProcessor in upstream's SETR configs (RGB)
IMAGENET_RGB_STD = (58.395, 57.12, 57.375)

Window = Tuple[int, int, int, int]  # (y1, y2, x1, x2)


class ViTBackbone(nn.Module):
    """One timm ViT giving dense features after the blocks ``out_indices`` (the single-anchor baselines).

    ``forward(images (B, 3, H, W))`` -> ``RouteOutput`` with one ``(B, P + h*w, C)`` feature per index, as a
    ``StitchedViT`` gives (``out_channels`` = the ViT's width).
    """

    def __init__(self, vit: VisionTransformer, out_indices: Sequence[int]):
        super().__init__()
        depth = len(vit.blocks)
        bad = [i for i in out_indices if not 0 <= int(i) < depth]
        if bad:
            raise ValueError(f"out_indices {list(out_indices)}: {bad} outside the ViT's {depth} blocks")
        self.vit = vit
        self.out_indices = tuple(int(i) for i in out_indices)

    @property
    def out_channels(self) -> int:
        return int(self.vit.embed_dim)

    @property
    def patch_size(self) -> int:
        return int(self.vit.patch_embed.patch_size[0])

    def forward(self, images: torch.Tensor) -> RouteOutput:
        taps: Dict[int, List[Tap]] = {}
        for stage, block in enumerate(self.out_indices):
            taps.setdefault(block, []).append(Tap(stage))
        plan = RoutePlan(embed=self.vit, layers=list(self.vit.blocks),
                         layer_names=[f"vit.blocks.{i}" for i in range(len(self.vit.blocks))], taps=taps,
                         finish=self.vit, num_stages=len(self.out_indices))
        return run_plan(plan, images)


def stitched_vit(fast: VisionTransformer, slow: VisionTransformer, **kwargs) -> StitchedViT:
    """``StitchedViT(fast, slow, **kwargs)`` with the anchors as keywords, as a LazyConfig names them
    (``model.backbone.fast`` / ``.slow``)."""
    return StitchedViT(fast, slow, **kwargs)


def slide_windows(height: int, width: int, crop_size: Tuple[int, int], stride: Tuple[int, int]) -> List[Window]:
    """mmseg ``slide_inference``'s windows ``(y1, y2, x1, x2)`` over a ``height x width`` image, row by row.

    ``max(size - crop + stride - 1, 0) // stride + 1`` windows per side; a window that would pass the image's
    edge is moved back to end there, and a side shorter than the crop gets one window of the image's length.
    """
    (crop_h, crop_w), (stride_h, stride_w) = crop_size, stride
    rows = max(height - crop_h + stride_h - 1, 0) // stride_h + 1
    cols = max(width - crop_w + stride_w - 1, 0) // stride_w + 1
    windows = []
    for r in range(rows):
        for c in range(cols):
            y2, x2 = min(r * stride_h + crop_h, height), min(c * stride_w + crop_w, width)
            windows.append((max(y2 - crop_h, 0), y2, max(x2 - crop_w, 0), x2))
    return windows


class SETR(nn.Module):
    """SETR-Naive segmentor on a ViT backbone with dense features (see the module docstring).

    Args:
        backbone: ``forward(images)`` -> ``RouteOutput``; has ``patch_size`` (and ``out_channels``).
        decode_head: reads ``features[decode_head.in_index]`` (SETR-Naive: the last of 4).
        auxiliary_heads: training-only heads, each on its own ``in_index`` (SETR-Naive: features 0, 1, 2);
            never run at inference nor counted in FLOPs.
        aux_loss_weight: weight of each auxiliary loss (mmseg ``loss_weight=0.4``).
        pixel_mean / pixel_std: RGB normalisation.
        input_format: channel order of ``"image"``: ``"RGB"`` or ``"BGR"`` (converted to RGB).
        ignore_value: label of unlabelled pixels (mmseg ``ignore_index=255``).
        crop_size: ``(H, W)`` training crop (the padding target) and inference window.
        test_stride: ``(H, W)`` step of the inference windows.
        test_mode: ``"slide"`` (mmseg ``mode='slide'``) or ``"whole"`` (the whole image as one window).
        align_corners: bilinear resizing of logits (mmseg ``align_corners=False``).
    """

    def __init__(self, *, backbone: nn.Module, decode_head: SETRUPHead,
                 auxiliary_heads: Sequence[SETRUPHead] = (), aux_loss_weight: float = 0.4,
                 pixel_mean: Sequence[float] = IMAGENET_RGB_MEAN, pixel_std: Sequence[float] = IMAGENET_RGB_STD,
                 input_format: str = "RGB", ignore_value: int = 255, crop_size: Tuple[int, int] = (512, 512),
                 test_stride: Tuple[int, int] = (341, 341), test_mode: str = "slide", align_corners: bool = False):
        super().__init__()
        if input_format not in ("RGB", "BGR"):
            raise ValueError(f"input_format must be 'RGB' or 'BGR', got {input_format!r}")
        if test_mode not in ("slide", "whole"):
            raise ValueError(f"test_mode must be 'slide' or 'whole', got {test_mode!r}")
        self.backbone = backbone
        self.decode_head = decode_head
        self.auxiliary_heads = nn.ModuleList(auxiliary_heads)
        self.aux_loss_weight = float(aux_loss_weight)
        self.input_format, self.ignore_value = input_format, int(ignore_value)
        self.crop_size = (int(crop_size[0]), int(crop_size[1]))
        self.test_stride = (int(test_stride[0]), int(test_stride[1]))
        self.test_mode, self.align_corners = test_mode, bool(align_corners)
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean, dtype=torch.float32).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std, dtype=torch.float32).view(-1, 1, 1), False)

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    @property
    def num_classes(self) -> int:
        return self.decode_head.num_classes

    # ------------------------------------------------------------------------------------------ inputs
    def normalize(self, image: torch.Tensor) -> torch.Tensor:
        """uint8 ``(3, H, W)`` in ``input_format`` -> normalised float RGB ``(3, H, W)`` on the model's device."""
        image = image.to(self.device, non_blocking=True).float()
        if self.input_format == "BGR":
            image = image.flip(0)
        return (image - self.pixel_mean) / self.pixel_std

    def _fit_to_patches(self, images: torch.Tensor) -> torch.Tensor:
        """The largest top-left part of ``images`` whose sides are multiples of the patch size (what mmseg's
        stride-16 patch conv reads)."""
        patch = self.backbone.patch_size
        h, w = images.shape[-2:]
        if h < patch or w < patch:
            raise ValueError(f"input {h}x{w} is smaller than the patch size {patch}")
        return images[..., : h // patch * patch, : w // patch * patch]

    # ------------------------------------------------------------------------------------------ heads
    def decode(self, out: RouteOutput, size: Tuple[int, int]) -> torch.Tensor:
        """The decode head on a backbone output -> logits ``(B, K, *size)`` (resized, bilinear, to ``size``, the
        input the features came from). Runs only the feature the head reads."""
        index = self.decode_head.in_index
        feature = tokens_to_map(out.features[index], out.grid, out.num_prefix_tokens)
        logits = self.decode_head(feature)
        return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=self.align_corners)

    def encode_decode(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised images ``(B, 3, H, W)`` -> logits ``(B, K, H, W)`` (mmseg ``encode_decode``)."""
        return self.decode(self.backbone(self._fit_to_patches(images)), images.shape[-2:])

    def losses(self, out: RouteOutput, targets: torch.Tensor) -> Dict[str, torch.Tensor]:
        """``loss_sem_seg`` (decode head, weight 1) and ``loss_aux_<i>`` (auxiliary head ``i``, weight
        ``aux_loss_weight``) for labels ``targets`` ``(B, H, W)``."""
        maps = out.feature_maps()
        heads = [("loss_sem_seg", self.decode_head, 1.0)] + [
            (f"loss_aux_{i}", head, self.aux_loss_weight) for i, head in enumerate(self.auxiliary_heads)]
        losses = {}
        for name, head, weight in heads:
            logits = F.interpolate(head(maps[head.in_index]), size=targets.shape[-2:], mode="bilinear",
                                   align_corners=self.align_corners)
            loss = F.cross_entropy(logits, targets, ignore_index=self.ignore_value, reduction="none")
            losses[name] = loss.mean() * weight  # mmseg avg_non_ignore=False: ignored pixels count as 0
        return losses

    # ------------------------------------------------------------------------------------------ forward
    def forward(self, batched_inputs: List[dict]):
        if self.training:
            return self.forward_train(batched_inputs)
        return self.inference(batched_inputs)

    def forward_train(self, batched_inputs: List[dict]) -> Dict[str, torch.Tensor]:
        """Losses of a batch; images and labels padded at the bottom/right to the batch's largest size, at
        least ``crop_size`` (image 0 after normalisation, label ``ignore_value``)."""
        if any("sem_seg" not in x for x in batched_inputs):
            raise ValueError("training needs a 'sem_seg' label in every input dict")
        height = max([self.crop_size[0]] + [int(x["image"].shape[-2]) for x in batched_inputs])
        width = max([self.crop_size[1]] + [int(x["image"].shape[-1]) for x in batched_inputs])
        images, targets = [], []
        for x in batched_inputs:
            image, label = self.normalize(x["image"]), x["sem_seg"].to(self.device)
            if tuple(label.shape) != tuple(image.shape[-2:]):
                raise ValueError(f"label {tuple(label.shape)} and image {tuple(image.shape[-2:])} differ in size"
                                 f"{' (' + str(x['file_name']) + ')' if 'file_name' in x else ''}")
            pad = (0, width - image.shape[-1], 0, height - image.shape[-2])
            images.append(F.pad(image, pad, value=0.0))
            targets.append(F.pad(label.long(), pad, value=self.ignore_value))
        images, targets = torch.stack(images), torch.stack(targets)
        fitted = self._fit_to_patches(images)
        return self.losses(self.backbone(fitted), targets)

    def windows(self, height: int, width: int) -> List[Window]:
        """The inference windows of a ``height x width`` image (``test_mode``)."""
        if self.test_mode == "whole":
            return [(0, height, 0, width)]
        return slide_windows(height, width, self.crop_size, self.test_stride)

    def inference(self, batched_inputs: List[dict]) -> List[Dict[str, torch.Tensor]]:
        """``[{"sem_seg": logits (K, height, width)}]``, one per input, in order."""
        results: List[Optional[Dict[str, torch.Tensor]]] = [None] * len(batched_inputs)
        for indices, images, boxes in self._window_groups(batched_inputs):
            crops = torch.cat([_crops(image, b) for image, b in zip(images, boxes)])
            logits = self.encode_decode(crops)
            for i, merged in zip(indices, _merge_windows(logits, images, boxes)):
                results[i] = self._postprocess(merged, batched_inputs[i])
        return results

    def _window_groups(self, batched_inputs: List[dict]
                       ) -> List[Tuple[List[int], List[torch.Tensor], List[List[Window]]]]:
        """The inputs grouped by window shape: ``(indices, normalised images, windows of each)``."""
        groups: Dict[Tuple[int, int], Tuple[List[int], List[torch.Tensor], List[List[Window]]]] = {}
        for i, x in enumerate(batched_inputs):
            image = self.normalize(x["image"])
            boxes = self.windows(*image.shape[-2:])
            y1, y2, x1, x2 = boxes[0]
            group = groups.setdefault((y2 - y1, x2 - x1), ([], [], []))
            group[0].append(i)
            group[1].append(image)
            group[2].append(boxes)
        return list(groups.values())

    def _postprocess(self, logits: torch.Tensor, x: dict) -> Dict[str, torch.Tensor]:
        """Logits ``(K, H, W)`` of the input image -> ``{"sem_seg": (K, height, width)}`` (bilinear)."""
        height, width = logits.shape[-2:]
        return {"sem_seg": sem_seg_postprocess(logits, (height, width), x.get("height", height),
                                               x.get("width", width))}


class StitchedSETR(SETR):
    """SETR on a ``StitchedViT``: every stitch of two anchors, the selected one run by ``forward``.

    Every dense feature comes at the large anchor's width (1024 for DeiT3-L) through the stitching layers, so
    one decode head and one set of auxiliary heads serve all stitches. Same arguments as ``SETR``;
    ``stitch_id`` selects the stitch ``forward`` runs (default: the large anchor), e.g. from a config key for an
    evaluation of one stitch.
    """

    def __init__(self, *, backbone: StitchedViT, stitch_id: Optional[int] = None, **kwargs):
        if not isinstance(backbone, StitchedViT):
            raise TypeError(f"StitchedSETR needs a snnet_core.StitchedViT backbone, got {type(backbone).__name__} "
                            "(a single ViT: use SETR with ViTBackbone)")
        super().__init__(backbone=backbone, **kwargs)
        if stitch_id is not None:
            self.set_stitch(stitch_id)

    @property
    def space(self) -> StitchSpace:
        """The stitch space (``space.ids``, ``space[id]``)."""
        return self.backbone.space

    @property
    def stitch_id(self) -> int:
        return self.backbone.stitch_id

    def set_stitch(self, stitch_id: int) -> Stitch:
        """Select the stitch ``forward`` runs; ``KeyError`` naming the valid range for an unknown id."""
        return self.backbone.set_stitch(stitch_id)

    def stitch_predictions(self, batched_inputs: List[dict], stitch_ids: Sequence[int]
                           ) -> Iterator[Tuple[int, List[dict], List[Dict[str, torch.Tensor]]]]:
        """Yield ``(stitch_id, inputs, outputs)``: for every stitch of ``stitch_ids``, what ``self(inputs)``
        returns at inference with that stitch selected, for the ``inputs`` of ``batched_inputs`` that share a
        window shape (all of them when the images have one size).

        The windows of those images go through the backbone as one batch with ``snnet_core.run_stitches`` (each
        shared route prefix once, stitches in trie order), then the decode head per stitch. Call in eval mode
        under ``torch.no_grad()``; memory: one activation per trie level plus one stitch's logits.
        """
        for indices, images, boxes in self._window_groups(batched_inputs):
            crops = torch.cat([_crops(image, b) for image, b in zip(images, boxes)])
            inputs = [batched_inputs[i] for i in indices]
            for stitch_id, out in run_stitches(self.backbone, self._fit_to_patches(crops), stitch_ids):
                logits = self.decode(out, crops.shape[-2:])
                yield stitch_id, inputs, [self._postprocess(merged, x) for merged, x in
                                          zip(_merge_windows(logits, images, boxes), inputs)]


def _crops(image: torch.Tensor, windows: List[Window]) -> torch.Tensor:
    """``(3, H, W)`` -> ``(len(windows), 3, h, w)``."""
    return torch.stack([image[:, y1:y2, x1:x2] for y1, y2, x1, x2 in windows])


def _merge_windows(logits: torch.Tensor, images: List[torch.Tensor], boxes: List[List[Window]]
                   ) -> List[torch.Tensor]:
    """Window logits ``(sum of windows, K, h, w)`` (images in order) -> one ``(K, H, W)`` per image: the sum over
    the windows covering each pixel divided by their number (mmseg's count matrix)."""
    merged, start = [], 0
    for image, windows in zip(images, boxes):
        height, width = image.shape[-2:]
        total = logits.new_zeros((logits.shape[1], height, width))
        count = logits.new_zeros((1, height, width))
        for k, (y1, y2, x1, x2) in enumerate(windows):
            total[:, y1:y2, x1:x2] += logits[start + k]
            count[:, y1:y2, x1:x2] += 1
        merged.append(total / count)
        start += len(windows)
    return merged


# ---------------------------------------------------------------------------------------------- FLOPs
def decode_head_cost(model: SETR, image_size: Tuple[int, int]) -> Tuple[float, int]:
    """GFLOPs (fvcore) and parameters of the decode head on one ``image_size`` ``(H, W)`` input: the head's
    forward on the stride-16 feature, without the resize of its logits to the image (upstream's
    ``get_flops_snnet.py`` counts ``EncoderDecoder._forward``, which stops at the head). The same for every
    stitch (every feature has the large anchor's width); auxiliary heads are never counted."""
    patch = model.backbone.patch_size
    head = model.decode_head
    feature = torch.zeros(1, head.in_channels, image_size[0] // patch, image_size[1] // patch, device=model.device)
    return count_gflops(head, (feature,)), sum(p.numel() for p in head.parameters())


def model_for_counting(model_cfg: Any) -> SETR:
    """The segmentor of a LazyConfig ``model`` section built for FLOPs counting only: no pretrained weights read,
    built on the meta device and materialised on the CPU with every parameter and buffer zero (fvcore's counts
    do not depend on values; this skips the random initialisation of a DeiT3-L), in eval mode."""
    model_cfg = copy.deepcopy(model_cfg)
    for key in ("fast", "slow", "vit"):
        if key in model_cfg.backbone:
            model_cfg.backbone[key].pretrained = None
    with torch.device("meta"):
        model = instantiate(model_cfg)
    model = model.to_empty(device="cpu")
    with torch.no_grad():
        for tensor in list(model.parameters()) + list(model.buffers()):
            tensor.zero_()
    return model.eval()


def setr_flops_table(model: StitchedSETR, image_size: Tuple[int, int] = (512, 512),
                     cache_dir: Optional[str] = None) -> FlopsTable:
    """GFLOPs and parameters (M) of every stitch at ``image_size``, counted as upstream SN-Netv2 counts its
    SETR-Naive table (``tools/analysis_tools/get_flops_snnet.py``: fvcore on the model in eval mode, auxiliary heads
    removed): the stitched backbone + the decode head (``decode_head_cost``).

    Of the small-to-large layers that map features read in the small anchor, upstream's trace keeps only those of
    feature 0 and of the decode head's feature (3): fvcore's jit trace drops dead code, the auxiliary heads that
    read features 1 and 2 are gone, and feature 0 stays alive because upstream's ``format_out_features`` reshapes
    every feature by its shape. The engine's table (``build_flops_table``, cached in ``cache_dir``) counts all four;
    the layers of the other features are taken off here, so that every stitch has upstream's count. Parameters are
    the engine's: an exported stitch holds all four layers.
    """
    gflops, params = decode_head_cost(model, image_size)
    head = model.decode_head
    snnet = model.backbone
    key = f"setr-naive-c{head.in_channels}-k{head.num_classes}-p{params}-g{gflops:.6f}"
    table = build_flops_table(snnet, image_size, mode="features", head_gflops=gflops, head_params=params,
                              head_key=key, cache_dir=cache_dir)
    counted = {0, head.in_index % len(snnet.out_indices)}
    cost = _projection_gflops(snnet, image_size)
    for stitch_id in snnet.space.ids:
        dropped = sum(1 for taps in snnet.plan(stitch_id).taps.values() for tap in taps
                      if tap.projection is not None and tap.stage not in counted)
        table.gflops[stitch_id] -= dropped * cost
    return table


def _projection_gflops(snnet: StitchedViT, image_size: Tuple[int, int]) -> float:
    """GFLOPs (fvcore) of one merged small-to-large stitching layer on the tokens of an ``image_size`` input (the
    same for every such layer)."""
    grid = (image_size[0] // snnet.patch_size, image_size[1] // snnet.patch_size)
    device = next(snnet.parameters()).device
    tokens = torch.zeros(1, snnet.num_prefix_tokens + grid[0] * grid[1], snnet.embed_dims[0], device=device)
    with rng_untouched(tokens.device):  # merged() draws nn.Linear's initialisation
        layer = snnet.stitch_s2l[0].merged()
    return count_gflops(layer, (tokens,))
