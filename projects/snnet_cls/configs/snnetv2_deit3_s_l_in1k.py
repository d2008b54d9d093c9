# SN-Netv2 DeiT3-S/L on ImageNet-1K, the paper's recipe (Sec. 5.1, Figure 4). Where the paper is silent the values
# are those upstream's released code trains with: ziplab/SN-Netv2 classification/config/
# deit_stitching_snnetv2_s_l.json ("upstream config") and the defaults of its classification/main.py ("upstream
# main.py"), whose transforms, loss and schedule come from timm.
# Every value names its source; "project:" marks a choice of this project, with the reason.
# Override any key on the command line: train.py train.output_dir=output/x optimizer.lr=1e-5

model = dict(
    anchors=("deit3_small_patch16_224", "deit3_large_patch16_224"),  # upstream config: deit_{small,large}_patch16_LS
    pretrained=(  # upstream models_v2.py: <pretrained_deit>/deit_3_{small,large}_224_21k.pth (21k, 1k fine-tuned)
        "checkpoints/deit_3_small_224_21k.pth",  # project: local path, the official DeiT3 release's file name
        "checkpoints/deit_3_large_224_21k.pth",  # project: local path, the official DeiT3 release's file name
    ),
    num_classes=1000,  # upstream datasets.py: IMNET nb_classes
    img_size=(224, 224),  # upstream config: input_size 224
    anchor_overrides=({}, {}),  # project: extra timm VisionTransformer arguments per anchor (none)
    drop_path=(0.05, 0.4),  # upstream config: anchor_drop_path
    lora_rank=64,  # upstream config: lora_r 64 (with low_rank: the LS weights frozen, LoRA SL trained)
    lora_alpha=1.0,  # upstream snnet.py: lora.Linear lora_alpha=1, update scaled by alpha / rank
    # r > 0: backbone PET, LoRA of rank r on the anchors' qkv/proj/fc1/fc2 with the anchors frozen but for their
    # classifiers (paper Fig. 12a, on segmentation: r = 4)
    backbone_lora_rank=0,  # upstream main.py: every anchor parameter trains (0: off)
    route_types=("anchor", "FS", "SF", "FSF", "SFS"),  # upstream config: snnet_v2 (Two-way stitching, 134 stitches)
    window=None,  # project: None = the two-way space of two anchors; [kernel, stride]: SN-Netv1's sliding window
)

dataloader = dict(
    root="data/imagenet",  # project: <root>/train/<class>/*.JPEG and <root>/val/<class>/*.JPEG (upstream data_path)
    input_size=224,  # upstream config: input_size
    eval_crop_ratio=1.0,  # upstream config: eval_crop_ratio (resize to 224 / 1.0, centre crop 224)
    test_name="imagenet_val",  # project: names the report directory, <train.output_dir>/stitch_report_imagenet_val
    augmentation=dict(
        three_augment=True,  # upstream config: ThreeAugment
        src=True,  # upstream config: src (simple random crop: resize, random crop with 4 px reflect padding, flip)
        color_jitter=0.3,  # upstream config: color_jitter
        auto_augment="rand-m9-mstd0.5-inc1",  # upstream main.py: aa (used only without three_augment)
        re_prob=0.0,  # upstream config: reprob (used only without three_augment)
    ),
    check_images=True,  # project: read every image's header before work (a bad file is named before training)
    workers=10,  # upstream config: num_workers (per process); no effect on results
)

optimizer = dict(
    opt="lamb",  # upstream config: fusedlamb (apex's LAMB); timm's Lamb is the same update without apex
    lr=3e-5,  # upstream config: lr, with unscale_lr (no scaling by batch size)
    weight_decay=0.02,  # upstream config: weight_decay (timm: none on biases and norms)
    eps=1e-8,  # upstream main.py: opt_eps
    betas=None,  # upstream main.py: opt_betas None (the optimizer's own, (0.9, 0.999))
    clip_grad=0.0,  # upstream main.py: clip_grad None (0: off; LAMB clips the global gradient norm at 1 itself)
)

lr_schedule = dict(  # upstream: timm create_scheduler, stepped once per epoch
    warmup_epochs=5,  # upstream config: warmup_epochs
    warmup_lr=1e-7,  # upstream config: warmup_lr
    min_lr=1e-5,  # upstream main.py: min_lr default
)

train = dict(
    output_dir="output/snnet_cls_s_l",  # project: the layout of snnet_core/io/run_dir.py (checkpoints, logs, reports)
    init_checkpoint="",  # project: detectron2's key; what --eval-only evaluates ("": <output_dir>/last_checkpoint)
    epochs=50,  # upstream config: epochs
    batch_size=512,  # upstream config: batch_size 64 per GPU x 8 GPUs (total over all processes)
    smoothing=0.1,  # upstream config: smoothing (in the mixed targets)
    mixup=0.0,  # upstream config: mixup 0 (off)
    cutmix=1.0,  # upstream config: cutmix alpha
    mixup_prob=1.0,  # upstream main.py: mixup_prob
    mixup_switch_prob=0.5,  # upstream main.py: mixup_switch_prob (no effect with mixup 0)
    mixup_mode="batch",  # upstream main.py: mixup_mode
    distillation=dict(  # upstream main.py: DeiT's distillation, off in SN-Netv2 (SN-Netv1 used it)
        type="none",  # upstream main.py: distillation_type none | soft | hard
        alpha=0.5,  # upstream main.py: distillation_alpha
        tau=1.0,  # upstream main.py: distillation_tau
        teacher_model="regnety_160",  # upstream main.py: teacher_model (a timm name)
        teacher_checkpoint="",  # upstream main.py: teacher_path (a local file; needed with type soft/hard)
    ),
    sampling="ros",  # paper Sec. 4.2: resource-constrained sampling
    flops_step=1.0,  # upstream main.py: flops_gap 1.0 (GFLOPs bins of ROS)
    # 0: no LS solve, the stitching layers keep PyTorch's default init (SN-Netv1 suppl. F compares 0/50/100/200)
    ls_init_images=100,  # upstream main.py: one training batch of 100 (after CutMix) for the LS solution
    amp=True,  # upstream engine.py: torch.cuda.amp.autocast (fp16) with NativeScaler; CPU runs in fp32
    seed=0,  # upstream config: seed
    device="auto",  # project: cuda if available, else cpu
    log_period=10,  # upstream engine.py: print_freq 10
    max_to_keep=2,  # project: disk (upstream keeps one checkpoint.pth)
)

test = dict(
    batch_size=96,  # upstream main.py: 1.5 x batch_size per process
    max_images=None,  # project: None = every val image; N = the first N (quick sweeps)
    amp=True,  # upstream engine.py: evaluate_snnet under autocast (fp16) on GPUs
    share_prefixes=True,  # project: stitch groups, one data pass each, shared route prefixes; False: stitch by stitch
    stitch_group_size=17,  # project: 134 stitches -> 8 groups; an interruption loses at most one (one per rank)
)
