# Tiny SN-Netv2 classifier on the synthetic ImageFolder (datasets/make_synthetic_imagefolder.py): the paper recipe of
# ../snnetv2_deit3_s_l_in1k.py with only what a 2-core CPU needs changed: 4-block/32-wide and 8-block/48-wide
# random-init anchors (14 stitches), 32x32 images, 4 classes, a higher lr without warm-up for training from scratch,
# a few epochs. Everything else (3-Augment, CutMix, label smoothing, LAMB, cosine, ROS, LS init) is the paper's.
from ..snnetv2_deit3_s_l_in1k import dataloader, lr_schedule, model, optimizer, test, train  # noqa: F401

model.pretrained = (None, None)  # project: random init, no checkpoints for the tiny anchors
model.num_classes = 4  # project: make_synthetic_imagefolder.py --classes 4
model.img_size = (32, 32)  # project: make_synthetic_imagefolder.py --size 32
model.anchor_overrides = (  # project: tiny DeiT3-style anchors (timm VisionTransformer arguments)
    dict(embed_dim=32, depth=4, num_heads=2),  # project: fast anchor, 4 blocks
    dict(embed_dim=48, depth=8, num_heads=3),  # project: slow anchor, 8 blocks
)
model.drop_path = (0.0, 0.0)  # project: no stochastic depth for a model this small
model.lora_rank = 4  # project: rank below the 32-wide anchor's width

dataloader.root = "data/imagefolder_synthetic"  # project: make_synthetic_imagefolder.py --output
dataloader.input_size = 32  # project
dataloader.test_name = "synthetic_val"  # project: report in <train.output_dir>/stitch_report_synthetic_val
dataloader.workers = 0  # project: no loader processes on a 2-core CPU

optimizer.lr = 1e-2  # project: random-init tiny anchors learn from scratch (LAMB moves a layer by ~lr x its norm)

lr_schedule.warmup_epochs = 0  # project: a few epochs only
lr_schedule.min_lr = 1e-3  # project: a tenth of the lr

train.output_dir = "output/cls_demo"  # project
train.epochs = 8  # project: 128 iterations, about 20 s on one CPU thread
train.batch_size = 16  # project
train.ls_init_images = 32  # project
train.flops_step = 0.0005  # project: the tiny stitches span about 0.005 GFLOPs at 32x32
train.log_period = 5  # project

test.batch_size = 32  # project
