# An SN-Netv1 arm of the depth recipe (the paper runs none on NYUv2; its Fig. 16 does it for segmentation): DeiT3-S/L
# stitched Fast-to-Slow only, stitching layers fully fine-tuned, stitches drawn uniformly, every other value that of
# dpt_snnetv2_deit3_s_l_nyu.py ("with the same training schedule", paper Sec. 5.1 and A.3).
from .dpt_snnetv2_deit3_s_l_nyu import dataloader, lr_schedule, model, optimizer, test, train  # noqa: F401

model.route_types = ("anchor", "FS")  # paper Sec. 3 / SN-Netv1: Fast-to-Slow stitches only (13 for DeiT3-S/L)
model.lora_rank = 0  # paper Sec. 4.3 / Algorithm 1: SN-Netv1 fully fine-tunes the LS-initialised stitching layers
train.sampling = "uniform"  # paper Sec. 3 "Sampling strategy": SN-Netv1 samples a stitch uniformly at random
train.output_dir = "output/snnet_dpt_v1"  # project: a run directory of its own
