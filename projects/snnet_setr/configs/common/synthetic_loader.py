# The tiny synthetic ADE20K of datasets/make_synthetic_segmentation.py (ADE20K's layout and class ids, 96-pixel-high
# images), with mmsegmentation's pipeline of ade20k_loader.py scaled by 1/8 (crop 64, scale (256, 64)) for a CPU.
# Write the data first: python datasets/make_synthetic_segmentation.py --layout ade20k
from .ade20k_loader import dataloader

crop_size = (64, 64)  # project: 1/8 of upstream's 512, the short side of the rescaled synthetic images
scale = (256, 64)  # project: 1/8 of upstream's (2048, 512)

datasets = dict(sem_seg=dict(synthetic_ade20k_sem_seg=dict(  # project: registers synthetic_ade20k_sem_seg_{train,val}
    root="output/synthetic_ade20k/ADEChallengeData2016",  # project: make_synthetic_segmentation.py's default output
    layout="ade20k",
)))
dataloader.train.dataset.names = "synthetic_ade20k_sem_seg_train"  # project
dataloader.train.mapper.augmentations[0].scale = scale  # project: RandomRescale
dataloader.train.mapper.augmentations[1].crop_size = crop_size  # project: CategoryCappedCrop
dataloader.train.mapper.augmentations[4].size = crop_size  # project: PadToSize
dataloader.train.total_batch_size = 4  # project: a 2-core CPU
dataloader.train.num_workers = 0  # project: no loader processes on a 2-core CPU
dataloader.test.dataset.names = "synthetic_ade20k_sem_seg_val"  # project
dataloader.test.mapper.augmentations[0].scale = scale  # project: RandomRescale (test Resize)
dataloader.test.num_workers = 0  # project: no loader processes on a 2-core CPU
