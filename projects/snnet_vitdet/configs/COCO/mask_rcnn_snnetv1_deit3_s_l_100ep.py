# An SN-Netv1 arm of the detection recipe (the paper runs none on COCO; its Fig. 16 does it for segmentation): the
# DeiT3-S/L backbone stitched Fast-to-Slow only, stitching layers fully fine-tuned, stitches drawn uniformly, every
# other value that of mask_rcnn_snnetv2_deit3_s_l_100ep.py ("with the same training schedule", paper Sec. 5.1, A.3).
from .mask_rcnn_snnetv2_deit3_s_l_100ep import (  # noqa: F401
    dataloader, datasets, lr_multiplier, model, optimizer, snnet, train,
)

model.backbone.net.route_types = ("anchor", "FS")  # paper Sec. 3 / SN-Netv1: Fast-to-Slow stitches only (13 for S/L)
model.backbone.net.lora_rank = 0  # paper Sec. 4.3: SN-Netv1 fully fine-tunes the LS-initialised stitching layers
snnet.sampling = "uniform"  # paper Sec. 3 "Sampling strategy": SN-Netv1 samples a stitch uniformly at random
train.output_dir = "output/snnet_vitdet_v1_s_l"  # project: a run directory of its own
