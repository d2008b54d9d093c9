# ViTDet Mask R-CNN with a DeiT3-L backbone (SN-Netv2's large anchor), as ViTDet's ViT-L recipe:
# drop path 0.4, global attention in blocks 5, 11, 17, 23, layer decay 0.8 over 24 blocks.
from functools import partial

from detectron2.modeling.backbone.vit import get_vit_lr_decay_rate

from .mask_rcnn_vitdet_deit3_s_100ep import dataloader, datasets, lr_multiplier, model, optimizer, train

# https://dl.fbaipublicfiles.com/deit/deit_3_large_224_21k.pth
model.backbone.net.vit.model_name = "deit3_large_patch16_224"
model.backbone.net.vit.pretrained = "checkpoints/deit_3_large_224_21k.pth"
model.backbone.net.vit.drop_path_rate = 0.4

optimizer.params.lr_factor_func = partial(get_vit_lr_decay_rate, num_layers=24, lr_decay_rate=0.8)
