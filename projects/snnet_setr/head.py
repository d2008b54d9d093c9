"""SETR's naive up-sampling head (Zheng et al., "Rethinking Semantic Segmentation from a Sequence-to-Sequence
Perspective with Transformers", 2021), layer for layer mmsegmentation's ``SETRUPHead`` as SN-Netv2's
segmentation configs build it.

On one dense ViT feature ``(B, C, h, w)`` (stride 16):

1. LayerNorm (eps 1e-6) over the channels of every position (mmseg normalises the ``(B, h*w, C)`` tokens);
2. ``num_convs`` times: ``kernel_size`` conv without bias -> norm -> ReLU -> bilinear up-sampling by ``up_scale``
   (``align_corners=False``; mmcv's ``ConvModule`` + mmseg's ``Upsample``, which resizes to the scaled size);
3. dropout (none at mmseg's ``dropout_ratio=0``) and a 1x1 classifier conv with bias (mmseg ``cls_seg``).

SETR-Naive (the decode head) is ``num_convs=1`` (stride 16 -> 4); its auxiliary heads are ``num_convs=2``
(stride 16 -> 1). The logits are at ``up_scale ** num_convs`` times the feature's resolution; the segmentor
resizes them to the label or image size.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from detectron2.layers import get_norm

__all__ = ["SETRUPHead"]


class SETRUPHead(nn.Module):
    """mmseg ``SETRUPHead``.

    Args:
        in_channels: channels ``C`` of the dense feature (1024 for every SN-Netv2 stitch of DeiT3-L).
        num_classes: output classes ``K``.
        in_index: which of the backbone's dense features the head reads (mmseg ``in_index``).
        channels: width of the up-sampling convs (mmseg ``channels``).
        num_convs: conv + up-sampling steps.
        up_scale: up-sampling factor of each step.
        kernel_size: conv kernel size, 1 or 3 (mmseg allows only these).
        norm: the convs' normalisation, a detectron2 ``get_norm`` name: ``"SyncBN"`` (mmseg ``SyncBN``;
            plain BatchNorm on one process), ``"naiveSyncBN"`` (synchronises over gloo on CPU too), ``"BN"``.
        dropout: ``nn.Dropout2d`` before the classifier (mmseg ``dropout_ratio``; 0: none).
        align_corners: bilinear up-sampling mode (mmseg ``align_corners``).

    ``forward(feature (B, C, h, w))`` -> logits ``(B, K, h * up_scale**num_convs, w * up_scale**num_convs)``.
    """

    def __init__(self, in_channels: int, num_classes: int, in_index: int = -1, channels: int = 256,
                 num_convs: int = 1, up_scale: int = 4, kernel_size: int = 1, norm: str = "SyncBN",
                 dropout: float = 0.0, align_corners: bool = False):
        super().__init__()
        if kernel_size not in (1, 3):
            raise ValueError(f"kernel_size must be 1 or 3 (mmseg SETRUPHead), got {kernel_size}")
        if num_convs < 1:
            raise ValueError(f"num_convs must be >= 1, got {num_convs}")
        self.in_channels, self.num_classes, self.in_index = int(in_channels), int(num_classes), int(in_index)
        self.up_scale, self.align_corners = int(up_scale), bool(align_corners)
        self.norm = nn.LayerNorm(in_channels, eps=1e-6)
        self.up_convs = nn.ModuleList()
        width = in_channels
        for _ in range(num_convs):
            conv = nn.Conv2d(width, channels, kernel_size, padding=kernel_size // 2, bias=False)
            # mmcv ConvModule.init_weights: He normal over fan-out for a ReLU conv; its norm starts at (1, 0)
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            self.up_convs.append(nn.Sequential(conv, get_norm(norm, channels), nn.ReLU(inplace=True)))
            width = channels
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else None
        self.conv_seg = nn.Conv2d(channels, num_classes, kernel_size=1)
        nn.init.normal_(self.conv_seg.weight, std=0.01)  # mmseg SETRUPHead init_cfg: Normal(std=0.01) on conv_seg
        nn.init.zeros_(self.conv_seg.bias)

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        x = self.norm(feature.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        for up_conv in self.up_convs:
            x = up_conv(x)
            size = (x.shape[-2] * self.up_scale, x.shape[-1] * self.up_scale)
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=self.align_corners)
        if self.dropout is not None:
            x = self.dropout(x)
        return self.conv_seg(x)
