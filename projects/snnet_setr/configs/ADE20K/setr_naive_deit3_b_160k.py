# SETR-Naive on ADE20K with DeiT3-B alone (paper Fig. 5 right: the small anchor's yellow star): the recipe of
# setr_naive_deit3_s_160k.py on DeiT3-B, its features at its own width (768).
from .setr_naive_deit3_s_160k import dataloader, lr_multiplier, model, optimizer, train

model.backbone.vit.model_name = "deit3_base_patch16_224"  # paper Fig. 5: the DeiT3-B anchor
model.backbone.vit.pretrained = "checkpoints/deit_3_base_224_21k.pth"  # upstream: deit_3_base_224_21k_mmseg.pth
model.decode_head.in_channels = 768  # project: DeiT3-B's width
