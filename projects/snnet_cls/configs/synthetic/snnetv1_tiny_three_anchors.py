# Tiny SN-Netv1 classifier of three anchors on the synthetic ImageFolder (datasets/make_synthetic_imagefolder.py):
# ../snnetv1_deit_ti_s_b_in1k.py's sliding-window space (k = 2, s = 1, nearest stitching) on three 4-block anchors
# of widths 32/48/64 (23 stitches), with the CPU settings of snnetv2_tiny.py (32x32 images, 4 classes, a few
# epochs); distillation off (no teacher for these classes). Everything else is the SN-Netv1 recipe.
from ..snnetv1_deit_ti_s_b_in1k import dataloader, lr_schedule, model, optimizer, test, train  # noqa: F401

model.pretrained = (None, None, None)  # project: random init, no checkpoints for the tiny anchors
model.num_classes = 4  # project: make_synthetic_imagefolder.py --classes 4
model.img_size = (32, 32)  # project: make_synthetic_imagefolder.py --size 32
model.anchor_overrides = (  # project: DeiT-Ti/S/B made tiny, 4 blocks each (nearest stitching needs one depth)
    dict(embed_dim=32, depth=4, num_heads=2),
    dict(embed_dim=48, depth=4, num_heads=3),
    dict(embed_dim=64, depth=4, num_heads=4),
)
model.drop_path = (0.0, 0.0, 0.0)  # project: no stochastic depth for a model this small

dataloader.root = "data/imagefolder_synthetic"  # project: make_synthetic_imagefolder.py --output
dataloader.input_size = 32  # project
dataloader.eval_crop_ratio = 1.0  # project: 32x32 images, no resize before the crop
dataloader.test_name = "synthetic_val"  # project: report in <train.output_dir>/stitch_report_synthetic_val
dataloader.workers = 0  # project: no loader processes on a 2-core CPU

optimizer.lr = 1e-3  # project: random-init tiny anchors learn from scratch
lr_schedule.warmup_epochs = 0  # project: a few epochs only
lr_schedule.min_lr = 1e-4  # project: a tenth of the lr

train.output_dir = "output/cls_v1_demo"  # project
train.epochs = 2  # project
train.batch_size = 16  # project
train.distillation.type = "none"  # project: no teacher for the synthetic classes
train.ls_init_images = 32  # project
train.log_period = 5  # project

test.batch_size = 32  # project
