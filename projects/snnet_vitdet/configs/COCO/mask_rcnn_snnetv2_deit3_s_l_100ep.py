# SN-Netv2 (paper Sec. 5.4): Mask R-CNN ViTDet whose backbone is every stitch of DeiT3-S and DeiT3-L, trained
# once with resource-constrained sampling (ROS). The recipe of the two anchor baselines
# (mask_rcnn_vitdet_deit3_{s,l}_100ep.py: batch 8, 100 epochs); each anchor keeps its drop path, attention
# pattern, relative position tables and layer decay. Every value names its source in a comment.
from functools import partial

from detectron2.config import LazyCall as L

from projects.snnet_vitdet.backbone import StitchedViTDetBackbone
from projects.snnet_vitdet.lr_decay import get_snnet_lr_decay_rate

from .mask_rcnn_vitdet_deit3_l_100ep import model as _large
from .mask_rcnn_vitdet_deit3_s_100ep import dataloader, datasets, lr_multiplier, model, optimizer, train

model.backbone.net = L(StitchedViTDetBackbone)(
    fast=model.backbone.net.vit,  # paper Sec. 5.4: DeiT3-S, as its baseline (drop path 0.1)
    slow=_large.backbone.net.vit,  # paper Sec. 5.4: DeiT3-L, as its baseline (drop path 0.4)
    lora_rank=16,  # paper Sec. 5.4: LoRA SL rank 16
    lora_alpha=1.0,  # upstream lora.py Linear default lora_alpha=1 (update scaled by alpha / rank)
    # r > 0: backbone PET, LoRA of rank r on the anchors' qkv/proj/fc1/fc2 with the anchors frozen (Fig. 12a: r = 4)
    backbone_lora_rank=0,  # paper Sec. 5.4: the anchors are fully fine-tuned (0: off)
    route_types=("anchor", "FS", "SF", "FSF", "SFS"),  # paper Sec. 4.1: Two-way stitching (134 stitches for S/L)
    window_size=14,  # detectron2 ViTDet common/models/mask_rcnn_vitdet.py
    num_global=4,  # detectron2 ViTDet: global blocks 2, 5, 8, 11 of S and 5, 11, 17, 23 of L
    use_rel_pos=True,  # detectron2 ViTDet common/models/mask_rcnn_vitdet.py; each block its own zero-init tables
    img_size=1024,  # detectron2 ViTDet common/models/mask_rcnn_vitdet.py: global rel-pos tables for a 64x64 grid
    out_feature="last_feat",  # detectron2 ViTDet common/models/mask_rcnn_vitdet.py
    stitch_id=None,  # project: the stitch forward runs (None: the large anchor); e.g. for --eval-only of one stitch
)

train.ddp.find_unused_parameters = True  # project: only the modules of the sampled stitch get gradients

optimizer.params.lr_factor_func = partial(
    get_snnet_lr_decay_rate,
    num_layers=(12, 24),  # paper Sec. 5.4: DeiT3-S and DeiT3-L depths
    lr_decay_rates=(0.7, 0.8),  # paper Sec. 5.4: "the same layer decay rate as the baselines" (detectron2 ViTDet)
)

snnet = dict(
    sampling="ros",  # paper Sec. 4.2: resource-constrained sampling ("uniform": SN-Netv1's)
    ros_step_gflops=10.0,  # upstream depth_estimation/depth/apis/train.py flops_step=10 (ROS bin width)
    sampler_seed=0,  # project: ROS draws are a pure function of (seed, iteration)
    # 0: no LS solve, the stitching layers keep PyTorch's default init (SN-Netv1 suppl. F compares 0/50/100/200)
    ls_init_images=100,  # paper Sec. 5.1 / A.2: 100 images for LS init of the stitching layers
    flops_input_size=(1024, 1024),  # detectron2 ViTDet: 1024x1024 input (GFLOPs column and ROS bins)
    eval_stitches="0,1",  # project: the anchors are evaluated every train.eval_period during training
    eval_share_prefixes=True,  # project: --stitch runs groups sharing route prefixes (False: per-stitch loop)
    eval_group_size=16,  # project: stitches per pass; ~0.4 GB of predictions per stitch on COCO val (docs/detection.md)
)
