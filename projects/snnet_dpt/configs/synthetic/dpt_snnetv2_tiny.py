# Tiny SN-Netv2 DPT on the synthetic NYUv2 (datasets/make_synthetic_nyu.py): the paper recipe of
# ../dpt_snnetv2_deit3_s_l_nyu.py with only what a 2-core CPU needs changed: 4-block/32-wide and 8-block/48-wide
# random-init anchors (14 stitches), a 32-channel DPT head, 128x160 frames, a higher lr for training from
# scratch, a few epochs. Everything else (augmentation, optimizer groups, OneCycle, clipping, ROS) is the paper's.
from ..dpt_snnetv2_deit3_s_l_nyu import dataloader, lr_schedule, model, optimizer, test, train  # noqa: F401

model.pretrained = (None, None)  # project: random init, no checkpoints for the tiny anchors
model.anchor_overrides = (  # project: tiny DeiT3-style anchors (timm VisionTransformer arguments)
    dict(embed_dim=32, depth=4, num_heads=2),  # project: fast anchor, 4 blocks
    dict(embed_dim=48, depth=8, num_heads=3),  # project: slow anchor, 8 blocks
)
model.out_indices = (1, 3, 5, 7)  # project: last block of each quarter of the 8-block anchor
model.features = 32  # project: small DPT fusion width
model.post_process_channels = (16, 32, 64, 128)  # project: small DPT reassemble widths

dataloader.root = "data/nyu_synthetic"  # project: python datasets/make_synthetic_nyu.py --output data/nyu_synthetic
dataloader.layout = "mat"  # project: the synthetic data holds both layouts
dataloader.eval_size = (128, 160)  # project: make_synthetic_nyu.py --size 128 160
dataloader.test_name = "nyuv2_synthetic_test"  # project: report in output/dpt_demo/stitch_report_nyuv2_synthetic_test
dataloader.augmentation.crop_size = (112, 128)  # project: fits the 114x141 border crop of 128x160
dataloader.workers = 0  # project: no loader processes on a 2-core CPU

optimizer.lr = 5e-4  # project: random-init tiny anchors learn from scratch (all groups, shared OneCycle)

train.output_dir = "output/dpt_demo"  # project
train.epochs = 6  # project: about 30 s on a 2-core CPU
train.batch_size = 4  # project
train.loss_warmup_iters = 10  # project: 10 of the 60 iterations
train.ls_init_images = 16  # project
train.flops_step = 0.005  # project: the tiny stitches span about 0.02 GFLOPs
