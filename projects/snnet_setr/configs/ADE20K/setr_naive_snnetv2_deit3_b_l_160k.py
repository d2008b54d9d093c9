# SN-Netv2 SETR-Naive on ADE20K with DeiT3-B/L (paper Sec. 5.2, Fig. 5 right; upstream
# segmentation/configs/snnet/setr_naive_512x512_160k_b16_ade20k_deit_3_b_l_224_snnetv2.py): the recipe of
# setr_naive_snnetv2_deit3_s_l_160k.py with DeiT3-B as the small anchor and LoRA SL rank 4.
from .setr_naive_snnetv2_deit3_s_l_160k import dataloader, lr_multiplier, model, optimizer, snnet, train

model.backbone.fast.model_name = "deit3_base_patch16_224"  # upstream: DeiT3-B anchor (embed 768, 12 layers, 12 heads)
model.backbone.fast.pretrained = "checkpoints/deit_3_base_224_21k.pth"  # upstream: deit_3_base_224_21k_mmseg.pth
model.backbone.lora_rank = 4  # paper Sec. 5.2 / upstream lora_r=4: LoRA SL rank 4 for DeiT3-B/L
