"""DPT decoder (Ranftl et al., "Vision Transformers for Dense Prediction", 2021) for metric depth.

Layer for layer the ``DPTHead`` of the Monocular-Depth-Estimation-Toolbox that SN-Netv2's NYUv2 config
uses (``readout_type='project'``, ``channels=256``, ``norm_cfg=None``, ReLU); ``tests/test_dpt_model.py``
checks parameters, outputs and FLOPs against a re-implementation of that head's layer list.

The head consumes the four dense token features of a (stitched) ViT, all at one width ``C``:

1. *Reassemble*: readout ``project`` (each patch token concatenated with the cls token, ``Linear(2C, C)``
   + GELU), tokens -> ``(B, C, h, w)`` map, 1x1 projection to ``post_process_channels`` and resampling by
   x4 (transposed conv), x2 (transposed conv), x1 and x1/2 (stride-2 3x3 conv).
2. 3x3 convs (no bias) to ``features`` (256) channels.
3. Four fusion blocks (pre-activation residual conv units, x2 upsampling, 1x1 conv), coarsest first.
4. ``project``: 3x3 conv (with bias) + ReLU on the fused stride-2 map.
5. Depth head: 3x3 conv to ``features // 2``, x2 upsampling to the input size, 3x3 conv to 32, ReLU,
   1x1 conv to one channel; metric depth = ``ReLU(out) + min_depth``.

Fusion blocks upsample to the size of the next (finer) feature map and the depth head to the input size,
where the toolbox upsamples by a fixed x2. Both are the same function whenever the patch grid has even
sides (480x640: 30x40, 416x544: 26x34). On a grid with an odd side the toolbox instead resizes the skip
map to the upsampled size (``align_corners=False``) and resizes the depth map to the input at the end;
this head keeps every map at the skip's size (``align_corners=True``), so it runs on any multiple of the
patch size but is not the toolbox's function there.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

DEFAULT_POST_PROCESS_CHANNELS = (96, 192, 384, 768)
STAGE_RESAMPLING = (4.0, 2.0, 1.0, 0.5)


def conv_module(in_channels: int, out_channels: int, kernel_size: int, bias: bool = True) -> nn.Conv2d:
    """A same-padded conv initialised as mmcv's ``ConvModule`` initialises the toolbox's (He normal over
    fan-out, zero bias); the layers the toolbox builds as plain ``nn`` modules keep PyTorch's init."""
    conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=bias)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    if bias:
        nn.init.zeros_(conv.bias)
    return conv


class ProjectReadout(nn.Module):
    """Readout ``project``: ``[patch token, cls token]`` -> ``Linear(2C, C)`` -> GELU.

    ``tokens`` ``(B, P + N, C)`` with the cls token at index 0 -> ``(B, N, C)`` patch tokens.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.project = nn.Sequential(nn.Linear(2 * channels, channels), nn.GELU())

    def forward(self, tokens: torch.Tensor, num_prefix_tokens: int) -> torch.Tensor:
        patches = tokens[:, num_prefix_tokens:]
        readout = tokens[:, :1].expand_as(patches)
        return self.project(torch.cat([patches, readout], dim=-1))


def resampler(channels: int, factor: float) -> nn.Module:
    """Spatial resampling of a ``(B, channels, h, w)`` map by ``factor`` in {4, 2, 1, 0.5}."""
    if factor > 1:
        k = int(factor)
        return nn.ConvTranspose2d(channels, channels, kernel_size=k, stride=k)
    if factor == 1:
        return nn.Identity()
    if factor == 0.5:
        return nn.Conv2d(channels, channels, kernel_size=3, stride=2, padding=1)
    raise ValueError(f"unsupported resampling factor {factor}")


class Reassemble(nn.Module):
    """One stage of DPT's reassemble: tokens ``(B, P + h*w, C)`` -> map ``(B, out_channels, h*f, w*f)``."""

    def __init__(self, in_channels: int, out_channels: int, factor: float):
        super().__init__()
        self.readout = ProjectReadout(in_channels)
        self.project = conv_module(in_channels, out_channels, 1)
        self.resample = resampler(out_channels, factor)

    def forward(self, tokens: torch.Tensor, grid: Tuple[int, int], num_prefix_tokens: int) -> torch.Tensor:
        x = self.readout(tokens, num_prefix_tokens)  # (B, h*w, C)
        b, n, c = x.shape
        x = x.transpose(1, 2).reshape(b, c, *grid)
        return self.resample(self.project(x))


class ResidualConvUnit(nn.Module):
    """Pre-activation ``x + conv(relu(conv(relu(x))))`` with bias-free 3x3 convs; ``(B, C, h, w)`` kept."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = conv_module(channels, channels, 3, bias=False)
        self.conv2 = conv_module(channels, channels, 3, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(F.relu(x))
        out = self.conv2(F.relu(out))
        return out + x


class FeatureFusionBlock(nn.Module):
    """DPT fusion: ``rcu2(x + rcu1(skip))`` (``rcu2(x)`` for the coarsest stage, which has no skip),
    bilinear upsampling to ``size``, 1x1 conv. ``x`` and ``skip`` ``(B, C, h, w)`` -> ``(B, C, *size)``.
    """

    def __init__(self, channels: int, with_skip: bool):
        super().__init__()
        self.residual1 = ResidualConvUnit(channels) if with_skip else None
        self.residual2 = ResidualConvUnit(channels)
        self.out_conv = conv_module(channels, channels, 1)

    def forward(self, x: torch.Tensor, skip: Optional[torch.Tensor], size: Tuple[int, int]) -> torch.Tensor:
        if (skip is None) != (self.residual1 is None):
            raise ValueError("the coarsest fusion block takes no skip input, every other one needs one")
        if skip is not None:
            x = x + self.residual1(skip)
        x = self.residual2(x)
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=True)
        return self.out_conv(x)


class DepthOutput(nn.Module):
    """Fused map ``(B, C, h, w)`` -> metric depth ``(B, 1, H, W)`` = ``ReLU(out) + min_depth``.

    Deliberate deviation from the toolbox (which keeps PyTorch's default init here): the last conv starts
    with small weights (std 0.01) and a positive bias (``init_depth``), so every pixel starts where the
    ReLU passes gradients. A default start can put every pixel below zero, where the head gets no gradient
    at all and predicts ``min_depth`` for ever.
    """

    def __init__(self, channels: int, hidden: int = 32, min_depth: float = 1e-3, init_depth: float = 1.0):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels // 2, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(channels // 2, hidden, kernel_size=3, padding=1)
        self.conv3 = nn.Conv2d(hidden, 1, kernel_size=1)
        # deliberate deviation from the toolbox (PyTorch's default init there): a fresh head is never dead
        nn.init.normal_(self.conv3.weight, std=0.01)
        nn.init.constant_(self.conv3.bias, init_depth)
        self.min_depth = min_depth

    def forward(self, x: torch.Tensor, image_size: Tuple[int, int]) -> torch.Tensor:
        x = self.conv1(x)
        x = F.interpolate(x, size=image_size, mode="bilinear", align_corners=True)
        x = self.conv3(F.relu(self.conv2(x)))
        return F.relu(x) + self.min_depth


class DPTHead(nn.Module):
    """DPT depth decoder over four dense ViT features.

    Args:
        in_channels: width ``C`` of every input feature (the SN-Net's slow anchor width).
        post_process_channels: channels of the four reassembled maps (strides 4, 8, 16, 32 of the input).
        features: channels of the fusion path (256 in DPT).
        min_depth / max_depth: metric depth range; predictions are ``>= min_depth`` and clipped to
            ``max_depth`` by the evaluation, not by the head (training sees the raw value).
    """

    def __init__(
        self,
        in_channels: int,
        post_process_channels: Sequence[int] = DEFAULT_POST_PROCESS_CHANNELS,
        features: int = 256,
        min_depth: float = 1e-3,
        max_depth: float = 10.0,
    ):
        super().__init__()
        if len(post_process_channels) != len(STAGE_RESAMPLING):
            raise ValueError(f"DPT needs {len(STAGE_RESAMPLING)} post-process channels, got {post_process_channels}")
        self.in_channels = in_channels
        self.post_process_channels = tuple(int(c) for c in post_process_channels)
        self.features = features
        self.min_depth, self.max_depth = min_depth, max_depth
        self.reassemble = nn.ModuleList(
            Reassemble(in_channels, c, f) for c, f in zip(self.post_process_channels, STAGE_RESAMPLING)
        )
        self.layer_rn = nn.ModuleList(
            conv_module(c, features, 3, bias=False) for c in self.post_process_channels
        )
        num_stages = len(STAGE_RESAMPLING)
        self.fusion = nn.ModuleList(
            FeatureFusionBlock(features, with_skip=i < num_stages - 1) for i in range(num_stages)
        )
        self.project = nn.Sequential(conv_module(features, features, 3), nn.ReLU())
        self.output = DepthOutput(features, min_depth=min_depth)

    def config(self) -> Dict[str, Any]:
        """Constructor arguments (primitives), stored in checkpoints and exports."""
        return {"in_channels": self.in_channels, "post_process_channels": list(self.post_process_channels),
                "features": self.features, "min_depth": self.min_depth, "max_depth": self.max_depth}

    def forward(
        self,
        features: Sequence[torch.Tensor],
        grid: Tuple[int, int],
        num_prefix_tokens: int,
        image_size: Tuple[int, int],
    ) -> torch.Tensor:
        """Depth ``(B, 1, H, W)`` from 4 token features ``(B, P + h*w, C)`` (cls token at index 0).

        Args:
            grid: patch grid ``(h, w)``; ``image_size``: ``(H, W)`` of the input images.
        """
        if len(features) != len(self.reassemble):
            raise ValueError(f"DPT head expects {len(self.reassemble)} features, got {len(features)}")
        maps = [self.reassemble_stage(stage, f, grid, num_prefix_tokens) for stage, f in enumerate(features)]
        return self.fuse(maps, image_size)

    def reassemble_stage(self, stage: int, tokens: torch.Tensor, grid: Tuple[int, int],
                         num_prefix_tokens: int) -> torch.Tensor:
        """Steps 1-2 for one stage: token feature ``(B, P + h*w, C)`` -> ``(B, features, h*f, w*f)``, ``f`` the
        stage's resampling factor. It depends on that feature alone, so stitches sharing it can share the map."""
        if num_prefix_tokens < 1:
            raise ValueError("readout 'project' needs a cls token: build the anchors with class_token=True")
        return self.layer_rn[stage](self.reassemble[stage](tokens, grid, num_prefix_tokens))

    def fuse(self, maps: Sequence[torch.Tensor], image_size: Tuple[int, int]) -> torch.Tensor:
        """Steps 3-5: the 4 reassembled maps (``reassemble_stage``) -> depth ``(B, 1, H, W)``."""
        x = None
        for stage in reversed(range(len(maps))):  # coarsest first, each output at the next finer stage's size
            target = maps[stage - 1].shape[-2:] if stage > 0 else tuple(2 * s for s in maps[0].shape[-2:])
            x = self.fusion[stage](maps[stage] if x is None else x, None if x is None else maps[stage], target)
        return self.output(self.project(x), image_size)
