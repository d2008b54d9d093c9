# The SN-Netv1 arm of the paper's Figure 4: DeiT3-S/L stitched Fast-to-Slow only, stitching layers fully trained
# (no LoRA), stitches drawn uniformly; "with the same training schedule" (paper Sec. 5.1) as
# snnetv2_deit3_s_l_in1k.py, whose every other value it keeps.
from .snnetv2_deit3_s_l_in1k import dataloader, lr_schedule, model, optimizer, test, train  # noqa: F401

model.route_types = ("anchor", "FS")  # paper Sec. 3 / SN-Netv1: Fast-to-Slow stitches only (13 for DeiT3-S/L)
model.lora_rank = 0  # paper Sec. 4.3: SN-Netv1 fully fine-tunes the LS-initialised stitching layers
train.sampling = "uniform"  # paper Sec. 4.2: SN-Netv1 samples a stitch uniformly at random
train.output_dir = "output/snnet_cls_v1_s_l"  # project
