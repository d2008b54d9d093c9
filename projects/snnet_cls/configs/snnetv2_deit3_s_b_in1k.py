# SN-Netv2 DeiT3-S/B on ImageNet-1K: the recipe of snnetv2_deit3_s_l_in1k.py with the anchors and drop path of
# upstream's classification/config/deit_stitching_snnetv2_s_b.json (everything else there is the same).
from .snnetv2_deit3_s_l_in1k import dataloader, lr_schedule, model, optimizer, test, train  # noqa: F401

model.anchors = ("deit3_small_patch16_224", "deit3_base_patch16_224")  # upstream config: deit_{small,base}_patch16_LS
model.pretrained = ("checkpoints/deit_3_small_224_21k.pth",  # upstream models_v2.py: deit_3_small_224_21k.pth
                    "checkpoints/deit_3_base_224_21k.pth")  # upstream models_v2.py: deit_3_base_224_21k.pth
model.drop_path = (0.05, 0.15)  # upstream config: anchor_drop_path
train.output_dir = "output/snnet_cls_s_b"  # project
