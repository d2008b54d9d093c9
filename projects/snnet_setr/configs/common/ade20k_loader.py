# ADE20K with mmsegmentation's default 512x512 pipeline: SN-Netv2 segmentation/configs/_base_/datasets/ade20k.py
# (its snnet/setr_naive_512x512_160k_b16_ade20k_*.py set 2 images on each of 8 GPUs, total batch 16).
import detectron2.data.transforms as T
from detectron2.config import LazyCall as L
from detectron2.data import build_detection_test_loader, get_detection_dataset_dicts
from omegaconf import OmegaConf

from projects.snnet_setr.data import SemSegMapper
from projects.snnet_setr.metrics import SemSegMetrics
from projects.snnet_setr.transforms import CategoryCappedCrop, PadToSize, PhotoMetricDistortion, RandomRescale
from snnet_core.training.data_order import build_resumable_train_loader

crop_size = (512, 512)  # upstream ade20k.py: crop_size
scale = (2048, 512)  # upstream ade20k.py: RandomResize / Resize scale (long side, short side)

dataloader = OmegaConf.create()
dataloader.train = L(build_resumable_train_loader)(  # project: batch i = f(seed, i), for an exact --resume
    dataset=L(get_detection_dataset_dicts)(names="ade20k_sem_seg_train", filter_empty=False),  # detectron2 builtin
    mapper=L(SemSegMapper)(
        is_train=True,
        augmentations=[  # upstream ade20k.py train_pipeline, in its order
            L(RandomRescale)(scale=scale, ratio_range=(0.5, 2.0)),  # upstream: RandomResize, keep_ratio=True
            L(CategoryCappedCrop)(crop_size=crop_size, cat_max_ratio=0.75, ignore_label=255),  # upstream: RandomCrop
            L(T.RandomFlip)(prob=0.5, horizontal=True),  # upstream: RandomFlip(prob=0.5)
            L(PhotoMetricDistortion)(),  # upstream: PhotoMetricDistortion (mmseg's default ranges)
            # upstream SegDataPreProcessor: pad to 512x512 with 0 after normalising, labels with 255; the uint8 image
            # is padded with the pixel mean (RGB 123.675, 116.28, 103.53) rounded, BGR, which normalises to ~0
            L(PadToSize)(size=crop_size, pad_value=(104, 116, 124), seg_pad_value=255),
        ],
        image_format="BGR",  # upstream: images loaded BGR (cv2); the preprocessor turns them to RGB (bgr_to_rgb)
    ),
    total_batch_size=16,  # upstream snnet config: 2 per GPU x 8 GPUs ("num_gpus: 8 -> batch_size: 16")
    aspect_ratio_grouping=False,  # upstream: InfiniteSampler, no grouping (every crop is 512x512)
    num_workers=2,  # upstream snnet config: train_dataloader num_workers=2 per GPU
)
dataloader.test = L(build_detection_test_loader)(
    dataset=L(get_detection_dataset_dicts)(names="ade20k_sem_seg_val", filter_empty=False),  # detectron2 builtin
    mapper=L(SemSegMapper)(
        is_train=False,
        augmentations=[L(RandomRescale)(scale=scale)],  # upstream ade20k.py test_pipeline: Resize, keep_ratio=True
        image_format="BGR",  # upstream: as in training
    ),
    batch_size=1,  # upstream ade20k.py: val_dataloader batch_size=1
    num_workers=4,  # upstream ade20k.py: val_dataloader num_workers=4
)
# upstream: IoUMetric(iou_metrics=['mIoU']) (mIoU, mAcc, aAcc); detectron2's SemSegEvaluator (see metrics.py)
dataloader.evaluator = L(SemSegMetrics)(dataset_name="${..test.dataset.names}")
