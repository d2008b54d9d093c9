# SN-Netv2 DeiT3-B/L + DPT on NYUv2, the paper's second anchor pair (Sec. 5.3, Fig. 8): the recipe of
# dpt_snnetv2_deit3_s_l_nyu.py with DeiT3-B as the small anchor. Upstream's
# depth_estimation/configs/snnet/snnetv2_dpt_deit3_b_l_nyu.py ("upstream") differs from its S/L config only in the
# small anchor (deit_3_base_224_21k, 768 wide, 12 heads, out_indices (2, 5, 8, 11)) and lora_r=4.
# Override any key on the command line: train.py --config-file THIS train.output_dir=output/x
from .dpt_snnetv2_deit3_s_l_nyu import dataloader, lr_schedule, model, optimizer, test, train  # noqa: F401

model.anchors = ("deit3_base_patch16_224", "deit3_large_patch16_224")  # paper Sec. 5.3: DeiT3-B/L (timm names)
model.pretrained = (  # upstream: deit_3_{base,large}_224_21k (ImageNet-21k pre-trained DeiT3)
    "checkpoints/deit_3_base_224_21k.pth",  # project: local path, the official DeiT3 release's file name
    "checkpoints/deit_3_large_224_21k.pth",  # project: local path, the official DeiT3 release's file name
)
model.lora_rank = 4  # paper Sec. 5.3: rank 4 for all depth experiments (upstream B/L config: lora_r=4)

train.output_dir = "output/snnet_dpt_deit3_b_l"  # project: beside the S/L run's output/snnet_dpt
