# mmsegmentation's schedule as upstream SN-Netv2's segmentation configs set it ("upstream": its
# setr_naive_512x512_160k_b16_ade20k_*.py over _base_/schedules/schedule_160k.py; paper Sec. 5.2: "all other
# hyperparameters are set with default choices in mmsegmentation"), in detectron2's terms. The top-level configs
# set the iterations (ADE20K 160k, COCO-Stuff-10K 80k).
from functools import partial

import torch
from detectron2 import model_zoo
from detectron2.config import LazyCall as L
from detectron2.solver.build import get_default_optimizer_params

from projects.snnet_setr.optim import PolyLR, custom_keys_lr_factor

optimizer = L(torch.optim.SGD)(
    params=L(get_default_optimizer_params)(
        base_lr="${..lr}",  # detectron2 ViTDet common/optim.py: the lr that lr_factor_func scales (required with it)
        # upstream: paramwise_cfg=dict(custom_keys={'head': dict(lr_mult=10.)}): decode and auxiliary heads x10
        lr_factor_func=partial(custom_keys_lr_factor, custom_keys={"head": 10.0}),
    ),
    lr=0.01,  # upstream: optimizer lr=0.01
    momentum=0.9,  # upstream schedule_160k.py: SGD momentum=0.9
    weight_decay=0.0,  # upstream: optimizer weight_decay=0.0
)

# upstream schedule_160k.py: param_scheduler=[PolyLR(eta_min=1e-4, power=0.9, begin=0, end=160000,
# by_epoch=False)], no warmup: a torch LRScheduler (not detectron2's one-factor multiplier) as every param group
# decays to the same absolute floor, the x10 heads from 0.1 and the rest from 0.01, both reaching 1e-4 at the last
# iteration
lr_multiplier = L(PolyLR)(
    optimizer=None,  # project: set by train_net.py (snnet_core.d2.app.build_lr_scheduler) to the run's optimizer
    max_iter="${train.max_iter}",  # upstream: end = max_iters (160000; COCO-Stuff-10K 80000)
    eta_min=1e-4,  # upstream: eta_min=1e-4, the last iteration's rate in every group
    power=0.9,  # upstream: power=0.9
)

train = model_zoo.get_config("common/train.py").train  # detectron2 common/train.py
train.init_checkpoint = ""  # project: the anchors are initialised from model.backbone.{fast,slow}.pretrained
train.amp.enabled = False  # upstream: OptimWrapper (fp32)
train.ddp.find_unused_parameters = True  # upstream: find_unused_parameters=True (one stitch's modules per step)
train.ddp.fp16_compression = False  # upstream: no gradient compression
train.max_iter = 160000  # upstream schedule_160k.py: max_iters=160000 (COCO-Stuff-10K: 80000)
train.checkpointer.period = 16000  # upstream schedule_160k.py: CheckpointHook interval=16000
train.eval_period = 16000  # upstream schedule_160k.py: val_interval=16000
train.log_period = 50  # upstream schedule_160k.py: LoggerHook interval=50
train.seed = 0  # project: weights, data order, augmentation and ROS draws follow it

snnet = dict(
    sampling="ros",  # paper Sec. 4.2: resource-constrained sampling ("uniform": SN-Netv1's)
    ros_step_gflops=10.0,  # upstream engine/hooks/snnet_hook.py: flops_step=10 (ROS bins of 10 GFLOPs)
    sampler_seed=0,  # project: ROS draws are a pure function of (seed, iteration)
    # 0: no LS solve, the stitching layers keep PyTorch's default init (SN-Netv1 suppl. F compares 0/50/100/200)
    ls_init_images=100,  # paper Sec. 5.2: 100 images for LS init (upstream snnet_hook.py draws 50)
    flops_input_size=(512, 512),  # upstream tools/analysis_tools/get_flops_snnet.py: --shape 512 512
    eval_stitches="0,1",  # project: the anchors are evaluated every train.eval_period during training
    eval_share_prefixes=True,  # project: --stitch runs groups sharing route prefixes (False: per-stitch loop)
    eval_group_size=16,  # project: stitches per pass over the test set
)
