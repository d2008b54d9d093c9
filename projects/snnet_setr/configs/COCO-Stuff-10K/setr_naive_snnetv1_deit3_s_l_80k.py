# The SN-Netv1 arm of the paper's Figure 16 (right, COCO-Stuff-10K): the SN-Netv1 recipe of
# ../ADE20K/setr_naive_snnetv1_deit3_s_l_160k.py (Fast-to-Slow only, uniform sampling, fully fine-tuned stitching
# layers, no LoRA SL: see its header) on the schedule of setr_naive_snnetv2_deit3_s_l_80k.py (paper Sec. A.3: 80k
# iterations, total batch 16), whose every other value it keeps.
from .setr_naive_snnetv2_deit3_s_l_80k import dataloader, lr_multiplier, model, optimizer, snnet, train  # noqa: F401

model.backbone.route_types = ("anchor", "FS")  # paper Sec. 3 / SN-Netv1: Fast-to-Slow stitches only (13 for S/L)
model.backbone.lora_rank = 0  # paper Sec. 4.3: SN-Netv1 fully fine-tunes the LS-initialised stitching layers
snnet.sampling = "uniform"  # paper Sec. 3 "Sampling strategy": SN-Netv1 samples a stitch uniformly at random
train.output_dir = "output/snnet_setr_v1_s_l_coco_stuff10k"  # project: a run directory of its own
