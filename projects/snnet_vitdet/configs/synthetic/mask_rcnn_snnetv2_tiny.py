# Tiny SN-Netv2 ViTDet on the synthetic shapes dataset (datasets/make_synthetic_coco.py): the model family
# and code path of COCO/mask_rcnn_snnetv2_deit3_s_l_100ep.py (stitched DeiT3-style anchors, window
# attention, SimpleFeaturePyramid, Mask R-CNN, ROS, LS init, two-anchor layer decay) scaled down to train
# from scratch on a 2-core CPU in a few minutes: 128 px images, 4-block/64-wide and 8-block/128-wide
# anchors (14 stitches), thin heads, anchors sized for 10-110 px objects.
from functools import partial

import torch

import detectron2.data.transforms as T
from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec

from projects.snnet_vitdet.lr_decay import get_snnet_lr_decay_rate

from ..COCO.mask_rcnn_snnetv2_deit3_s_l_100ep import (
    dataloader,
    datasets,
    lr_multiplier,
    model,
    optimizer,
    snnet,
    train,
)

image_size = 128

# --- backbone: two small random-init DeiT3-style anchors (no pretrained weights)
for anchor, (dim, depth, heads) in (("fast", (64, 4, 2)), ("slow", (128, 8, 4))):
    net = model.backbone.net[anchor]
    net.update(img_size=image_size, pretrained=None, drop_path_rate=0.0, embed_dim=dim, depth=depth, num_heads=heads,
               init_values=0.1)  # LayerScale: DeiT3's 1e-6 suits fine-tuning, not a few minutes from scratch
model.backbone.net.lora_rank = 8
model.backbone.net.window_size = 4  # 8x8 token grid -> 2x2 windows
model.backbone.net.img_size = image_size  # global rel-pos tables for the 8x8 grid
model.backbone.net.num_global = 2  # blocks 1, 3 of the small anchor; 3, 7 of the large one

# --- detector: thin pyramid and heads, anchors for 128 px images
pyramid_dim, box_fc_dim = 64, 256
model.backbone.out_channels = pyramid_dim
model.backbone.square_pad = image_size
model.proposal_generator.head.in_channels = pyramid_dim
model.proposal_generator.anchor_generator.sizes = [[8], [16], [32], [64], [128]]
model.proposal_generator.pre_nms_topk = (1000, 500)
model.proposal_generator.post_nms_topk = (500, 100)
model.roi_heads.num_classes = 5
model.roi_heads.box_predictor.test_topk_per_image = 20  # images hold at most 5 shapes
model.roi_heads.batch_size_per_image = 64
model.roi_heads.box_head.input_shape = ShapeSpec(channels=pyramid_dim, height=7, width=7)
model.roi_heads.box_head.conv_dims = [pyramid_dim] * 2
model.roi_heads.box_head.fc_dims = [box_fc_dim]
model.roi_heads.box_predictor.input_shape = ShapeSpec(channels=box_fc_dim)
model.roi_heads.mask_head.input_shape = ShapeSpec(channels=pyramid_dim, height=14, width=14)
model.roi_heads.mask_head.conv_dims = [pyramid_dim] * 5  # 4 convs + the upsampling deconv

# --- data: the synthetic dataset, registered by name from here
datasets.root = "output/synthetic_coco"
datasets.coco_json = dict(
    synthetic_shapes_train=dict(json_file="${...root}/annotations/instances_train.json",
                                image_root="${...root}/train"),
    synthetic_shapes_val=dict(json_file="${...root}/annotations/instances_val.json",
                              image_root="${...root}/val"),
)
dataloader.train.dataset.names = "synthetic_shapes_train"
dataloader.test.dataset.names = "synthetic_shapes_val"
dataloader.train.mapper.augmentations = [
    L(T.RandomFlip)(horizontal=True),
    L(T.ResizeScale)(min_scale=0.5, max_scale=1.5, target_height=image_size, target_width=image_size),
    L(T.FixedSizeCrop)(crop_size=(image_size, image_size), pad=False),
]
dataloader.test.mapper.augmentations = [
    L(T.ResizeShortestEdge)(short_edge_length=image_size, max_size=image_size),
]
dataloader.train.total_batch_size = 4
dataloader.train.num_workers = 1
dataloader.test.num_workers = 1

# --- schedule: from scratch, so a larger lr and a short warmup
train.device = "cuda" if torch.cuda.is_available() else "cpu"
train.output_dir = "output/snnet_vitdet_tiny"
train.seed = 0  # weights, data order and augmentation: the demo gives the same model on a given machine
train.max_iter = 500
train.eval_period = 0  # the per-stitch report is written by --eval-only
train.log_period = 20
train.checkpointer.period = 100
optimizer.lr = 1e-3
optimizer.weight_decay = 0.05
# no pretrained features to preserve: the two-anchor layer decay runs with rates 0.9 (4 and 8 blocks)
optimizer.params.lr_factor_func = partial(get_snnet_lr_decay_rate, num_layers=(4, 8), lr_decay_rates=(0.9, 0.9))
lr_multiplier.scheduler.milestones = [int(0.8 * train.max_iter), int(0.93 * train.max_iter)]
lr_multiplier.scheduler.num_updates = train.max_iter
lr_multiplier.warmup_length = 10 / train.max_iter

snnet.update(ros_step_gflops=0.02, ls_init_images=32, flops_input_size=(image_size, image_size))
