# ViTDet Mask R-CNN with a DeiT3-S backbone: the recipe of detectron2's
# projects/ViTDet/configs/COCO/mask_rcnn_vitdet_b_100ep.py (LSJ 1024, AdamW, layer decay, AMP, 100 epochs)
# with the backbone of SN-Netv2's small anchor. Baseline for mask_rcnn_snnetv2_deit3_s_l_100ep.py.
from functools import partial

from detectron2 import model_zoo
from detectron2.config import LazyCall as L
from detectron2.modeling.backbone.vit import get_vit_lr_decay_rate
from detectron2.solver import WarmupParamScheduler
from fvcore.common.param_scheduler import MultiStepParamScheduler

from projects.snnet_vitdet.backbone import ViTDetBackbone
from snnet_core import build_anchor

from ..common.coco_loader_lsj import dataloader

model = model_zoo.get_config("common/models/mask_rcnn_vitdet.py").model
# DeiT3 ViT: absolute position embeddings resampled from the 224 checkpoint to 1024, no cls token,
# window attention (14) but in blocks 2, 5, 8, 11. Weights are never downloaded: put the official DeiT3
# checkpoint (https://dl.fbaipublicfiles.com/deit/deit_3_small_224_21k.pth) at `pretrained`.
model.backbone.net = L(ViTDetBackbone)(
    vit=L(build_anchor)(
        model_name="deit3_small_patch16_224",
        img_size=1024,
        pretrained="checkpoints/deit_3_small_224_21k.pth",
        class_token=False,
        drop_path_rate=0.1,
    ),
    window_size=14,
    num_global=4,
    out_feature="last_feat",
)

# Initialization and trainer settings
train = model_zoo.get_config("common/train.py").train
train.amp.enabled = True  # on GPU only: train_net.py trains in fp32 on CPU
train.ddp.fp16_compression = True
train.init_checkpoint = ""  # the backbone is initialised from model.backbone.net.vit.pretrained

# Schedule
# 100 ep = 184375 iters * 64 images/iter / 118000 images/ep
train.max_iter = 184375

lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(MultiStepParamScheduler)(
        values=[1.0, 0.1, 0.01],
        milestones=[163889, 177546],
        num_updates=train.max_iter,
    ),
    warmup_length=250 / train.max_iter,
    warmup_factor=0.001,
)

# Optimizer
optimizer = model_zoo.get_config("common/optim.py").AdamW
optimizer.params.lr_factor_func = partial(get_vit_lr_decay_rate, num_layers=12, lr_decay_rate=0.7)
optimizer.params.overrides = {"pos_embed": {"weight_decay": 0.0}}

# Datasets: detectron2's builtin coco_2017_{train,val} (under $DETECTRON2_DATASETS/coco). Any other
# COCO-format dataset is registered by name from here and selected with dataloader.{train,test}.dataset.names:
#   datasets.coco_json.my_train = dict(json_file="/data/my/train.json", image_root="/data/my/train")
datasets = dict(coco_json={})
