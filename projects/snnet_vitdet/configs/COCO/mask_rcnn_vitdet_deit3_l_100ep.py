# ViTDet Mask R-CNN with a DeiT3-L backbone (SN-Netv2's large anchor): the recipe of
# mask_rcnn_vitdet_deit3_s_100ep.py with the backbone values of detectron2's
# projects/ViTDet/configs/COCO/mask_rcnn_vitdet_l_100ep.py (24 blocks, global blocks 5, 11, 17, 23).
from functools import partial

from detectron2.modeling.backbone.vit import get_vit_lr_decay_rate

from .mask_rcnn_vitdet_deit3_s_100ep import dataloader, datasets, lr_multiplier, model, optimizer, train

# https://dl.fbaipublicfiles.com/deit/deit_3_large_224_21k.pth
model.backbone.net.vit.model_name = "deit3_large_patch16_224"  # paper Sec. 5.4: DeiT3-L anchor
model.backbone.net.vit.pretrained = "checkpoints/deit_3_large_224_21k.pth"  # upstream depth_estimation configs
model.backbone.net.vit.drop_path_rate = 0.4  # detectron2 ViTDet mask_rcnn_vitdet_l_100ep.py (ViT-L, 24 blocks)

# layer decay: detectron2 ViTDet-L's 0.8 over 24 blocks (paper Sec. 5.4: each anchor as its baseline)
optimizer.params.lr_factor_func = partial(get_vit_lr_decay_rate, num_layers=24, lr_decay_rate=0.8)  # detectron2 ViTDet
