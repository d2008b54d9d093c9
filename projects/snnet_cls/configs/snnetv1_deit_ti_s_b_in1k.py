# SN-Netv1 (Stitchable Neural Networks, CVPR 2023) on ImageNet-1K: DeiT-Ti/S/B stitched in its sliding-window space
# with nearest stitching (71 stitches), as the authors trained it: ziplab/SN-Net stitching_deit/config/
# deit_stitching.json ("v1 config"), the defaults of its params.py ("v1 params.py") and its main.py, datasets.py,
# engine.py and snnet.py. Every value names its source; "project:" marks a choice of this project, with the reason.
# What this project does not do as v1's code: no repeated augmentation (v1 params.py repeated_aug=True: DeiT's
# RASampler, each image 3 times per epoch over the processes); here each image once per epoch (DistributedSampler).
from .snnetv2_deit3_s_l_in1k import dataloader, lr_schedule, model, optimizer, test, train  # noqa: F401

model.anchors = (  # v1 config: anchors
    "deit_tiny_patch16_224", "deit_small_patch16_224", "deit_base_patch16_224")
model.pretrained = (  # v1 main.py: create_model(pretrained=True), the DeiT ImageNet-1K files its README downloads
    "checkpoints/deit_tiny_patch16_224-a1311bcf.pth",  # project: local path, the DeiT release's file name
    "checkpoints/deit_small_patch16_224-cd65a155.pth",  # project: local path, the DeiT release's file name
    "checkpoints/deit_base_patch16_224-b5f2ef4d.pth",  # project: local path, the DeiT release's file name
)
model.anchor_overrides = ({}, {}, {})  # project: no extra timm VisionTransformer arguments
model.drop_path = (0.1, 0.1, 0.1)  # v1 params.py: drop_path 0.1, every anchor (main.py create_model)
model.lora_rank = 0  # v1 snnet.py: plain nn.Linear stitching layers, trained in full (v1 config: fulltune)
model.backbone_lora_rank = 0  # v1 config: fulltune true (every anchor parameter trains)
model.route_types = ("anchor", "FS")  # v1 config: nearest_stitching (small to large, neighbouring anchors only)
model.window = (2, 1)  # v1 config: stitch_kernel_size 2, stitch_stride 1

dataloader.eval_crop_ratio = 0.875  # v1 datasets.py: resize int(256 / 224 * 224) = 256 bicubic, centre crop 224
dataloader.augmentation = dict(
    three_augment=False,  # v1 datasets.py: timm create_transform (RandAugment, random erasing), no 3-Augment
    src=False,  # v1 datasets.py: timm's random-resized crop (used only with three_augment)
    color_jitter=0.4,  # v1 params.py: color_jitter
    auto_augment="rand-m9-mstd0.5-inc1",  # v1 params.py: aa
    re_prob=0.25,  # v1 params.py: reprob (remode pixel, recount 1, as transforms.py builds it)
)
dataloader.workers = 10  # v1 config: num_workers

optimizer.opt = "adamw"  # v1 params.py: opt
optimizer.lr = 1e-4  # v1 config: lr 5e-5, scaled by main.py to lr x 128 x 8 / 512 (total batch 1024; here unscaled)
optimizer.weight_decay = 0.05  # v1 params.py: weight_decay (timm: none on biases and norms)
optimizer.eps = 1e-8  # v1 params.py: opt_eps
optimizer.betas = None  # v1 params.py: opt_betas None (AdamW's (0.9, 0.999))
optimizer.clip_grad = 0.0  # v1 params.py: clip_grad None (0: off)

lr_schedule.warmup_epochs = 5  # v1 params.py: warmup_epochs (cosine over the 50 epochs; cooldown_epochs unused)
lr_schedule.warmup_lr = 1e-7  # v1 config: warmup_lr
lr_schedule.min_lr = 1e-6  # v1 config: min_lr

train.output_dir = "output/snnet_cls_v1_ti_s_b"  # project
train.epochs = 50  # v1 config: epochs
train.batch_size = 1024  # v1 config: batch_size 128 per GPU x 8 GPUs (README: --nproc_per_node=8), the total
train.smoothing = 0.1  # v1 params.py: smoothing (in the mixed targets)
train.mixup = 0.8  # v1 params.py: mixup
train.cutmix = 1.0  # v1 params.py: cutmix
train.mixup_prob = 1.0  # v1 params.py: mixup_prob
train.mixup_switch_prob = 0.5  # v1 params.py: mixup_switch_prob
train.mixup_mode = "batch"  # v1 params.py: mixup_mode
train.distillation = dict(
    type="hard",  # v1 config: distillation_type (losses.py StitchDistillationLoss on the stitch's logits)
    alpha=0.5,  # v1 params.py: distillation_alpha
    tau=1.0,  # v1 params.py: distillation_tau
    teacher_model="regnety_160",  # v1 config: teacher_model
    # v1 main.py: create_model(teacher_model, pretrained=True), timm's regnety_160 weights: DeiT's teacher file
    teacher_checkpoint="checkpoints/regnety_160-a5fe301d.pth",  # project: local path, the DeiT release's file name
)
train.sampling = "uniform"  # v1 snnet.py: np.random.randint over every stitch at each training forward
train.ls_init_images = 100  # v1 config: ls_init with stitch_init_bs 100 (one training batch after mixup)
train.amp = True  # v1 engine.py: torch.cuda.amp.autocast with NativeScaler
train.seed = 0  # v1 params.py: seed
train.log_period = 10  # v1 engine.py: print_freq

test.batch_size = 192  # v1 main.py: 1.5 x batch_size per process
test.amp = True  # v1 engine.py: evaluate_snnet under autocast
