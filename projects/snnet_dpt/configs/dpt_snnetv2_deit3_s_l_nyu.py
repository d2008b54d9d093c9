# SN-Netv2 DeiT3-S/L + DPT on NYUv2, the paper's recipe (Sec. 5.3). Where the paper is silent the values are
# those upstream's released code trains with: ziplab/SN-Netv2 depth_estimation/configs/snnet/
# snnetv2_dpt_deit3_s_l_nyu.py ("upstream"), its bases _base_/schedules/schedule_24x.py and
# _base_/datasets/nyu.py, and the Monocular-Depth-Estimation-Toolbox it builds on ("toolbox"), run by mmcv 1.3-1.5.
# Every value names its source; "project:" marks a choice of this project, with the reason.
# Override any key on the command line: train.py train.output_dir=output/x optimizer.lr=1e-5

model = dict(
    anchors=("deit3_small_patch16_224", "deit3_large_patch16_224"),  # paper Sec. 5.3: DeiT3-S/L (timm names)
    pretrained=(  # upstream: deit_3_{small,large}_224_21k (ImageNet-21k pre-trained DeiT3)
        "checkpoints/deit_3_small_224_21k.pth",  # project: local path, the official DeiT3 release's file name
        "checkpoints/deit_3_large_224_21k.pth",  # project: local path, the official DeiT3 release's file name
    ),
    anchor_overrides=({}, {}),  # project: extra timm VisionTransformer arguments per anchor (none)
    pos_embed_size=(224, 224),  # upstream deit3.py img_size=224: 14x14 table, resized at every forward
    upstream_layers=False,  # paper Sec. 5.3: DeiT3 blocks (True: upstream deit3.py's mmcv FFN adds its input, LN eps 1e-5)
    drop_path=(0.0, 0.0),  # upstream deit3.py: drop_path_rate 0 (the config sets none)
    lora_rank=4,  # paper Sec. 5.3: rank 4 (upstream config: lora_r=16)
    lora_alpha=1.0,  # upstream lora.py: Linear(lora_alpha=1), update scaled by alpha / rank
    # r > 0: backbone PET, LoRA of rank r on the anchors' qkv/proj/fc1/fc2 with the anchors frozen (Fig. 12a: r = 4)
    backbone_lora_rank=0,  # paper Sec. 5.3: the anchors are fully fine-tuned (0: off)
    route_types=("anchor", "FS", "SF", "FSF", "SFS"),  # paper Sec. 4.1: Two-way stitching (134 stitches for S/L)
    out_indices=(4, 11, 17, 23),  # upstream: out_indices of the DeiT3-L anchor
    features=256,  # upstream: DPTHead channels
    post_process_channels=(96, 192, 384, 768),  # upstream: DPTHead post_process_channels
    min_depth=1e-3,  # upstream: DPTHead min_depth
    max_depth=10.0,  # upstream: DPTHead max_depth
)

dataloader = dict(
    root="data/nyu",  # project: where datasets/prepare_nyu.md puts NYUv2
    layout="sync",  # toolbox nyu.py: BTS "sync" training frames, official test frames; "mat": labeled .mat
    train_list=None,  # project: None = <root>/nyudepthv2_train_files_with_gt.txt (the BTS name)
    test_list=None,  # project: None = <root>/nyudepthv2_test_files_with_gt.txt (the BTS name)
    depth_source="raw",  # toolbox nyu.py: raw (not in-painted) depth; "filled" reads the .mat's depths
    eval_size=(480, 640),  # upstream snnetv2_dpt_deit3_s_l_nyu.py: test img_scale; FLOPs are counted here
    test_name="nyuv2_test",  # project: names the report directory, <train.output_dir>/stitch_report_nyuv2_test
    augmentation=dict(  # upstream snnetv2_dpt_deit3_s_l_nyu.py train_pipeline, in its order
        border_crop=(45, 472, 43, 608),  # toolbox transforms.py NYUCrop: rows 45:472, cols 43:608 of 480x640
        rotate_prob=0.5,  # upstream: RandomRotate prob
        rotate_degrees=2.5,  # upstream: RandomRotate degree (bilinear image, nearest depth, 0 padding)
        flip_prob=0.5,  # upstream: RandomFlip prob (horizontal)
        crop_size=(416, 544),  # upstream: RandomCrop crop_size
        color_prob=0.5,  # upstream: ColorAug prob
        gamma=(0.9, 1.1),  # upstream: ColorAug gamma_range
        brightness=(0.75, 1.25),  # upstream: ColorAug brightness_range
        colour=(0.9, 1.1),  # upstream: ColorAug color_range
        gamma_on_raw_values=True,  # toolbox ColorAug quirk: img**gamma on 0-255 values (BTS: on [0, 1])
    ),
    workers=4,  # project: loader processes per rank (upstream workers_per_gpu=2); no effect on results
)

optimizer = dict(
    lr=2e-5,  # paper Sec. 5.3: AdamW, initial lr 2e-5 (upstream max_lr = 1e-4 / 5)
    betas=(0.9, 0.999),  # upstream snnetv2_dpt_deit3_s_l_nyu.py; beta1 is then driven by lr_schedule momentum
    eps=1e-8,  # upstream: torch AdamW default
    weight_decay=0.01,  # upstream snnetv2_dpt_deit3_s_l_nyu.py
    # upstream paramwise_cfg custom_keys on our parameter names, with mmcv's semantics: the longest key that is
    # a substring of the name decides alone (so pos_embed/cls_token keep lr x1, and backbone LayerNorms and
    # biases are decayed). Upstream's 'norm': dict(decay_mult=0.) is left out on purpose: it matched no upstream
    # parameter (mmseg names the LayerNorms ln1/ln2; the head has none) but would match timm's norm1/norm2 here.
    param_rules={
        "pos_embed": dict(decay_mult=0.0),  # upstream custom_keys: no decay
        "cls_token": dict(decay_mult=0.0),  # upstream custom_keys: no decay
        "backbone": dict(lr_mult=0.1),  # upstream custom_keys: anchors and stitching layers (see shared_max_lr)
    },
    clip_grad=35.0,  # upstream schedule_24x.py: grad_clip max_norm=35, norm_type=2 (0: off)
)

lr_schedule = dict(  # upstream: lr_config and momentum_config policy='OneCycle', by iteration
    # upstream quirk, kept: mmcv's OneCycleLrUpdaterHook turns its scalar max_lr into one curve for every param
    # group, overwriting the lr_mult above, so upstream trains anchors, stitching layers and head all at lr.
    # False: each group peaks at lr x lr_mult (backbone and stitching layers at 2e-6).
    shared_max_lr=True,  # upstream (mmcv OneCycleLrUpdaterHook, scalar max_lr)
    pct_start=0.3,  # upstream: mmcv OneCycleLrUpdaterHook default
    div_factor=25.0,  # upstream snnetv2_dpt_deit3_s_l_nyu.py: lr_config div_factor (start at lr / 25)
    final_div_factor=100.0,  # upstream snnetv2_dpt_deit3_s_l_nyu.py: lr_config final_div_factor
    base_momentum=0.85,  # upstream momentum_config: mmcv OneCycleMomentumUpdaterHook default (beta1 at the peak)
    max_momentum=0.95,  # upstream momentum_config: mmcv default (beta1 at start and end, replacing betas[0])
)

train = dict(
    output_dir="output/snnet_dpt",  # project: the layout of snnet_core/io/run_dir.py (checkpoints, logs, reports)
    init_checkpoint="",  # project: detectron2's key; what --eval-only evaluates ("": <output_dir>/last_checkpoint)
    epochs=24,  # paper Sec. 5.3; upstream schedule_24x.py max_epochs=24
    batch_size=16,  # paper Sec. 5.3: total over 4 GPUs (upstream: 8 GPUs x 2)
    loss_warmup_iters=100,  # upstream: SigLoss warm_up=True, toolbox warm_iter default 100
    # 0: no LS solve, the stitching layers keep PyTorch's default init (SN-Netv1 suppl. F compares 0/50/100/200)
    ls_init_images=100,  # paper Sec. 5.1/A.1: 100 random training images (upstream depth code: 10)
    sampling="ros",  # paper Sec. 4.2: resource-constrained sampling ("uniform": SN-Netv1's)
    flops_step=10.0,  # upstream depth/apis/train.py: flops_step 10 (GFLOPs bins of ROS)
    amp=False,  # upstream: fp32 (no fp16 config); True: fp16 autocast + GradScaler on GPUs
    seed=0,  # project: data order, augmentation, ROS draws and LS-init frames derive from it
    device="auto",  # project: cuda if available, else cpu
    log_period=20,  # project: detectron2's default (configs/common/train.py): metrics.json/TensorBoard every 20 its
    max_to_keep=2,  # project: disk: a DeiT3-S/L + DPT checkpoint with AdamW state is ~4 GB (model_final.pth kept)
)

test = dict(
    flip=True,  # upstream: MultiScaleFlipAug flip=True, prediction averaged with the mirrored one
    batch_size=2,  # project: per process (upstream 1); per-image metrics do not depend on it
    max_images=None,  # project: None = every test frame; N = the first N (quick sweeps)
    primary_metric="a1",  # project: metric of the Pareto frontier of the per-stitch report
    share_prefixes=True,  # project: stitch groups, one data pass each, shared route prefixes; False: stitch by stitch
    stitch_group_size=17,  # project: 134 stitches -> 8 groups; an interruption loses at most one (one per rank)
)
