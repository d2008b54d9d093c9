# SN-Netv2 SETR-Naive on COCO-Stuff-10K with backbone PET (paper Sec. 5.5, "Compared to parameter-efficient tuning
# on backbone", Fig. 12a): the DeiT3-B/L recipe of setr_naive_snnetv2_deit3_b_l_80k.py, "the same schedule as
# fully-finetuning", with LoRA on both anchors' attention and MLP linear layers and their pretrained weights frozen
# (the stitching layers and the heads train as before). Upstream released no config of it.
from .setr_naive_snnetv2_deit3_b_l_80k import dataloader, lr_multiplier, model, optimizer, snnet, train  # noqa: F401

model.backbone.backbone_lora_rank = 4  # paper Sec. 5.5: "we apply LoRA with a rank of 4 to the backbone"
