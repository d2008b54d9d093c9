# The SN-Netv1 arm of the paper's Figure 16 (left, ADE20K): SETR-Naive on DeiT3-S/L stitched Fast-to-Slow only,
# stitches drawn uniformly, stitching layers fully fine-tuned, on the schedule of setr_naive_snnetv2_deit3_s_l_160k.py
# (paper Sec. A.3: 160k iterations, total batch 16), whose every other value it keeps. No LoRA SL: Sec. A.3's "rank
# of 16 for LoRA SL" is SN-Netv2's component (Sec. 4.3), while "in SN-Netv1, the transformation matrix M is fully
# finetuned with gradient descent" (Sec. 4.3; Algorithm 1 marks the LoRA freeze as v2's change).
from .setr_naive_snnetv2_deit3_s_l_160k import dataloader, lr_multiplier, model, optimizer, snnet, train  # noqa: F401

model.backbone.route_types = ("anchor", "FS")  # paper Sec. 3 / SN-Netv1: Fast-to-Slow stitches only (13 for S/L)
model.backbone.lora_rank = 0  # paper Sec. 4.3: SN-Netv1 fully fine-tunes the LS-initialised stitching layers
snnet.sampling = "uniform"  # paper Sec. 3 "Sampling strategy": SN-Netv1 samples a stitch uniformly at random
train.output_dir = "output/snnet_setr_v1_s_l_ade20k"  # project: a run directory of its own
