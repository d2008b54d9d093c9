# SN-Netv2 (paper Sec. 5.4): Mask R-CNN ViTDet whose backbone is every stitch of DeiT3-S and DeiT3-L,
# trained once with resource-constrained sampling (ROS). Same recipe as the two anchor baselines
# (mask_rcnn_vitdet_deit3_{s,l}_100ep.py); each anchor keeps its drop path, attention pattern and layer
# decay; stitching layers are LoRA SL of rank 16, least-squares initialised on 100 training images.
# The paper trains at a total batch of 8 for 100 epochs; this recipe keeps ViTDet's 64 x 184375.
from functools import partial

from detectron2.config import LazyCall as L

from projects.snnet_vitdet.backbone import StitchedViTDetBackbone
from projects.snnet_vitdet.lr_decay import get_snnet_lr_decay_rate

from .mask_rcnn_vitdet_deit3_l_100ep import model as _large
from .mask_rcnn_vitdet_deit3_s_100ep import dataloader, datasets, lr_multiplier, model, optimizer, train

model.backbone.net = L(StitchedViTDetBackbone)(
    fast=model.backbone.net.vit,  # DeiT3-S, drop path 0.1, global blocks 2, 5, 8, 11
    slow=_large.backbone.net.vit,  # DeiT3-L, drop path 0.4, global blocks 5, 11, 17, 23
    lora_rank=16,
    window_size=14,
    num_global=4,
    out_feature="last_feat",
)

# only the modules of the sampled stitch get gradients in an iteration
train.ddp.find_unused_parameters = True

optimizer.params.lr_factor_func = partial(get_snnet_lr_decay_rate, num_layers=(12, 24), lr_decay_rates=(0.7, 0.8))

snnet = dict(
    ros_step_gflops=10.0,  # ROS FLOPs bin width (paper: 10 GFLOPs for dense prediction)
    sampler_seed=0,
    ls_init_images=100,  # LS init of the stitching layers before the first iteration (0: skip)
    flops_input_size=(1024, 1024),  # input size of the GFLOPs column and of ROS
    eval_stitches="0,1",  # stitches evaluated by train.eval_period during training (the anchors)
)
