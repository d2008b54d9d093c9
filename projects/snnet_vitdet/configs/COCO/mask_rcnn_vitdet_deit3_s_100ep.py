# ViTDet Mask R-CNN with a DeiT3-S backbone (SN-Netv2's small anchor), the baseline of
# mask_rcnn_snnetv2_deit3_s_l_100ep.py. Source precedence: the paper (Sec. 5.4: Mask R-CNN ViTDet, total batch
# 8, 100 epochs, "all other hyperparameters adopt the default setting in detectron2"), then detectron2's
# projects/ViTDet/configs/COCO/mask_rcnn_vitdet_b_100ep.py (ViT-B: 12 blocks like DeiT3-S). Every value names
# its source in a comment (tests/test_vitdet_model.py checks that each assignment has one).
#
# Batch 8 instead of ViTDet's 64 rescales ViTDet's schedule by detectron2's linear scaling rule
# (DefaultTrainer.auto_scale_workers): iterations, milestones, warmup, checkpoint and eval periods x 8, lr / 8.
from functools import partial

from detectron2 import model_zoo
from detectron2.config import LazyCall as L
from detectron2.modeling.backbone.vit import get_vit_lr_decay_rate
from detectron2.solver import WarmupParamScheduler
from fvcore.common.param_scheduler import MultiStepParamScheduler

from projects.snnet_vitdet.backbone import ViTDetBackbone
from snnet_core import build_anchor

from ..common.coco_loader_lsj import dataloader

model = model_zoo.get_config("common/models/mask_rcnn_vitdet.py").model  # detectron2 ViTDet mask_rcnn_vitdet_b_100ep.py
# Weights are never downloaded: put the official DeiT3 checkpoint
# (https://dl.fbaipublicfiles.com/deit/deit_3_small_224_21k.pth) at `pretrained`.
model.backbone.net = L(ViTDetBackbone)(
    vit=L(build_anchor)(
        model_name="deit3_small_patch16_224",  # paper Sec. 5.4: DeiT3-S anchor
        img_size=224,  # detectron2 ViTDet pretrain_img_size 224: 14x14 abs pos table, resized per forward
        pretrained="checkpoints/deit_3_small_224_21k.pth",  # upstream depth_estimation configs: DeiT3 IN-21k weights
        class_token=False,  # detectron2 ViTDet: no cls token in the detector (pretrain_use_cls_token drops it)
        drop_path_rate=0.1,  # detectron2 ViTDet mask_rcnn_vitdet_b_100ep.py (ViT-B, 12 blocks): 0.1
    ),
    window_size=14,  # detectron2 ViTDet common/models/mask_rcnn_vitdet.py
    num_global=4,  # detectron2 ViTDet common/models/mask_rcnn_vitdet.py: global blocks 2, 5, 8, 11
    use_rel_pos=True,  # detectron2 ViTDet common/models/mask_rcnn_vitdet.py; zero-initialised (DeiT3 has none)
    img_size=1024,  # detectron2 ViTDet common/models/mask_rcnn_vitdet.py: global rel-pos tables for a 64x64 grid
    out_feature="last_feat",  # detectron2 ViTDet common/models/mask_rcnn_vitdet.py
)

# Initialization and trainer settings
train = model_zoo.get_config("common/train.py").train  # detectron2 common/train.py
train.amp.enabled = True  # detectron2 ViTDet mask_rcnn_vitdet_b_100ep.py (project: GPU only, fp32 on CPU)
train.ddp.fp16_compression = True  # detectron2 ViTDet mask_rcnn_vitdet_b_100ep.py
train.init_checkpoint = ""  # project: the backbone is initialised from model.backbone.net.vit.pretrained
train.checkpointer.period = 5000 * 8  # detectron2 common/train.py 5000 at batch 64, x 8 (auto_scale_workers)
train.eval_period = 5000 * 8  # detectron2 common/train.py 5000 at batch 64, x 8 (auto_scale_workers)

# Schedule: 100 epochs of 118000 images at batch 8
dataloader.train.total_batch_size = 8  # paper Sec. 5.4: total batch 8 on 8 GPUs (detectron2 ViTDet: 64)
train.max_iter = 1475000  # paper Sec. 5.4: 100 epochs = 100 * 118000 / 8 (detectron2 ViTDet: 184375 at 64)

lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(MultiStepParamScheduler)(
        values=[1.0, 0.1, 0.01],  # detectron2 ViTDet mask_rcnn_vitdet_b_100ep.py
        milestones=[163889 * 8, 177546 * 8],  # detectron2 ViTDet 163889, 177546 at batch 64, x 8 (auto_scale_workers)
        num_updates=train.max_iter,  # detectron2 ViTDet mask_rcnn_vitdet_b_100ep.py: the whole schedule
    ),
    warmup_length=250 * 8 / train.max_iter,  # detectron2 ViTDet 250 iterations at batch 64, x 8 (auto_scale_workers)
    warmup_factor=0.001,  # detectron2 ViTDet mask_rcnn_vitdet_b_100ep.py
)

# Optimizer
optimizer = model_zoo.get_config("common/optim.py").AdamW  # detectron2 ViTDet mask_rcnn_vitdet_b_100ep.py
optimizer.lr = 1e-4 * 8 / 64  # detectron2 common/optim.py 1e-4 at batch 64, x 8/64 (auto_scale_workers linear rule)
optimizer.betas = (0.9, 0.999)  # detectron2 common/optim.py
optimizer.weight_decay = 0.1  # detectron2 common/optim.py; rel_pos tables decay too, as in detectron2 ViTDet
optimizer.params.weight_decay_norm = 0.0  # detectron2 common/optim.py
# layer decay: detectron2 ViTDet-B's 0.7 over 12 blocks (paper Sec. 5.4: each anchor as its baseline)
optimizer.params.lr_factor_func = partial(get_vit_lr_decay_rate, num_layers=12, lr_decay_rate=0.7)  # detectron2 ViTDet
optimizer.params.overrides = {"pos_embed": {"weight_decay": 0.0}}  # detectron2 ViTDet mask_rcnn_vitdet_b_100ep.py

# Datasets: detectron2's builtin coco_2017_{train,val} (under $DETECTRON2_DATASETS/coco). Any other
# COCO-format dataset is registered by name from here and selected with dataloader.{train,test}.dataset.names:
#   datasets.coco_json.my_train = dict(json_file="/data/my/train.json", image_root="/data/my/train")
datasets = dict(coco_json={})  # project: extra COCO-format datasets by name (none: COCO is builtin)
