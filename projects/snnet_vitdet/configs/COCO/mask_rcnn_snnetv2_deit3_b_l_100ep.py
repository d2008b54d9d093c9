# SN-Netv2 Mask R-CNN ViTDet stitching DeiT3-B and DeiT3-L: the recipe of mask_rcnn_snnetv2_deit3_s_l_100ep.py
# with DeiT3-B (as its baseline mask_rcnn_vitdet_deit3_b_100ep.py) as the small anchor. The paper trains this pair
# for segmentation and depth (Figs. 5, 6, 8) and reports detection for DeiT3-S/L only (Sec. 5.4), so every other
# value is the S/L detection recipe's, LoRA SL rank 16 included (the paper's B/L rank 4 is for segmentation and
# depth).
from .mask_rcnn_snnetv2_deit3_s_l_100ep import (  # noqa: F401
    dataloader, datasets, lr_multiplier, model, optimizer, snnet, train,
)
from .mask_rcnn_vitdet_deit3_b_100ep import model as _base

model.backbone.net.fast = _base.backbone.net.vit  # paper Sec. 5: DeiT3-B, as its baseline (drop path 0.1)
