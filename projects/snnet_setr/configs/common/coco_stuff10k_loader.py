# COCO-Stuff-10K with mmsegmentation's default 512x512 pipeline: SN-Netv2
# segmentation/configs/_base_/datasets/coco-stuff10k.py, the same pipeline and loaders as ade20k.py (its
# snnet/setr_naive_512x512_80k_b16_coco_stuff10k_*.py set the same total batch 16).
from .ade20k_loader import dataloader

dataloader.train.dataset.names = "coco_stuff_10k_sem_seg_train"  # project: data/cocostuff-10k-v1.1, train list
dataloader.test.dataset.names = "coco_stuff_10k_sem_seg_test"  # project: data/cocostuff-10k-v1.1, test list
