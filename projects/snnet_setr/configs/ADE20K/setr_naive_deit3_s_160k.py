# SETR-Naive on ADE20K with DeiT3-S alone (paper Fig. 5: the small anchor's yellow star): the recipe of
# setr_naive_deit3_l_160k.py on DeiT3-S, its features at its own width (384).
from .setr_naive_deit3_l_160k import dataloader, lr_multiplier, model, optimizer, train
from .setr_naive_snnetv2_deit3_s_l_160k import model as _snnet

model.backbone.vit = _snnet.backbone.fast  # paper Fig. 5: the DeiT3-S anchor, as in the SN-Net
model.backbone.out_indices = (4, 7, 9, 11)  # upstream: DeiT3-S out_indices in the SN-Net (same relative depth)
model.decode_head.in_channels = 384  # project: DeiT3-S's width (a single ViT has no stitching layer to 1024)
