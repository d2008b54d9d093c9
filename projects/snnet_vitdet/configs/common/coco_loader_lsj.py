# COCO data with large-scale jitter (LSJ): detectron2's projects/ViTDet/configs/common/coco_loader_lsj.py
# (the recipes set the paper's total batch 8 over its 64).
import detectron2.data.transforms as T
from detectron2 import model_zoo
from detectron2.config import LazyCall as L

from snnet_core.training.data_order import build_resumable_train_loader

image_size = 1024  # detectron2 ViTDet coco_loader_lsj.py
dataloader = model_zoo.get_config("common/data/coco.py").dataloader  # detectron2 ViTDet coco_loader_lsj.py
dataloader.train._target_ = build_resumable_train_loader  # project: batch i = f(seed, i), for an exact --resume
dataloader.train.mapper.augmentations = [  # detectron2 ViTDet coco_loader_lsj.py: LSJ
    L(T.RandomFlip)(horizontal=True),  # detectron2 ViTDet coco_loader_lsj.py (flip first)
    L(T.ResizeScale)(min_scale=0.1, max_scale=2.0, target_height=image_size, target_width=image_size),  # detectron2
    L(T.FixedSizeCrop)(crop_size=(image_size, image_size), pad=False),  # detectron2 ViTDet coco_loader_lsj.py
]
dataloader.train.mapper.image_format = "RGB"  # detectron2 ViTDet coco_loader_lsj.py
dataloader.train.total_batch_size = 64  # detectron2 ViTDet coco_loader_lsj.py (recipes: paper Sec. 5.4's 8)
dataloader.train.mapper.recompute_boxes = True  # detectron2 ViTDet coco_loader_lsj.py: boxes after cropping

dataloader.test.mapper.augmentations = [  # detectron2 ViTDet coco_loader_lsj.py
    L(T.ResizeShortestEdge)(short_edge_length=image_size, max_size=image_size),  # detectron2 ViTDet
]
dataloader.evaluator.use_fast_impl = False  # project: COCO metrics from pycocotools, no compiled detectron2 ops
dataloader.evaluator.tasks = ("bbox", "segm")  # project: Mask R-CNN's two COCO tasks, named explicitly
