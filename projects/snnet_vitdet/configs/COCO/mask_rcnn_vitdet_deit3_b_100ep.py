# ViTDet Mask R-CNN with a DeiT3-B backbone (the small anchor of SN-Netv2's second pair, DeiT3-B/L): the recipe of
# mask_rcnn_vitdet_deit3_s_100ep.py, which already holds detectron2's projects/ViTDet/configs/COCO/
# mask_rcnn_vitdet_b_100ep.py values for a 12-block ViT (global blocks 2, 5, 8, 11, drop path 0.1, layer decay 0.7),
# with the DeiT3-B weights.
from .mask_rcnn_vitdet_deit3_s_100ep import dataloader, datasets, lr_multiplier, model, optimizer, train  # noqa: F401

# https://dl.fbaipublicfiles.com/deit/deit_3_base_224_21k.pth
model.backbone.net.vit.model_name = "deit3_base_patch16_224"  # paper Sec. 5: DeiT3-B anchor of the B/L pair
model.backbone.net.vit.pretrained = "checkpoints/deit_3_base_224_21k.pth"  # upstream depth_estimation B/L config
