# SN-Netv2 DeiT3-B/L on ImageNet-1K: the recipe of snnetv2_deit3_s_l_in1k.py with the anchors and drop path of
# upstream's classification/config/deit_stitching_snnetv2_b_l.json (everything else there is the same).
from .snnetv2_deit3_s_l_in1k import dataloader, lr_schedule, model, optimizer, test, train  # noqa: F401

model.anchors = ("deit3_base_patch16_224", "deit3_large_patch16_224")  # upstream config: deit_{base,large}_patch16_LS
model.pretrained = ("checkpoints/deit_3_base_224_21k.pth",  # upstream models_v2.py: deit_3_base_224_21k.pth
                    "checkpoints/deit_3_large_224_21k.pth")  # upstream models_v2.py: deit_3_large_224_21k.pth
model.drop_path = (0.15, 0.4)  # upstream config: anchor_drop_path
train.output_dir = "output/snnet_cls_b_l"  # project
