# SETR-Naive on ADE20K with DeiT3-L alone (paper Fig. 5: the large anchor's yellow star): the recipe of
# setr_naive_snnetv2_deit3_s_l_160k.py with one ViT as the backbone (SETR + ViTBackbone), no stitching.
from detectron2.config import LazyCall as L

from projects.snnet_setr.model import SETR, ViTBackbone

from .setr_naive_snnetv2_deit3_s_l_160k import dataloader, lr_multiplier, model, optimizer, train

model._target_ = SETR  # project: one ViT, no stitches
del model.stitch_id  # project: SETR has no stitch to select
model.backbone = L(ViTBackbone)(
    vit=model.backbone.slow,  # paper Fig. 5: the DeiT3-L anchor, as in the SN-Net
    out_indices=(9, 14, 19, 23),  # upstream: DeiT3-L out_indices
)
model.decode_head.in_channels = 1024  # upstream: in_channels=1024 (DeiT3-L's width)
