# SETR-Naive on every stitch of DeiT3-S and DeiT3-L (SN-Netv2 paper Sec. 5.2), as upstream's
# segmentation/configs/snnet/setr_naive_512x512_160k_b16_ade20k_deit_3_s_l_224_snnetv2.py builds it ("upstream"
# below). The B/L pair and the single-anchor baselines change the anchors from here; the datasets set num_classes.
from detectron2.config import LazyCall as L

from projects.snnet_setr.head import SETRUPHead
from projects.snnet_setr.model import IMAGENET_RGB_MEAN, IMAGENET_RGB_STD, StitchedSETR, stitched_vit
from snnet_core import build_anchor

# Weights are never downloaded: put the official DeiT3 ImageNet-21k checkpoints
# (https://dl.fbaipublicfiles.com/deit/deit_3_{small,base,large}_224_21k.pth) at `pretrained`.
_fast_anchor = L(build_anchor)(
    model_name="deit3_small_patch16_224",  # upstream: DeiT3-S anchor (embed 384, 12 layers, 6 heads)
    img_size=224,  # project: 14x14 position table, resampled (bicubic) per forward; upstream resizes it to 32x32 at load
    pretrained="checkpoints/deit_3_small_224_21k.pth",  # upstream: pretrained/deit_3_small_224_21k_mmseg.pth
    num_classes=0,  # project: no classifier (upstream's MAE backbone has none)
    drop_path_rate=0.1,  # upstream: drop_path_rate=0.1
)
_slow_anchor = L(build_anchor)(
    model_name="deit3_large_patch16_224",  # upstream: DeiT3-L anchor (embed 1024, 24 layers, 16 heads)
    img_size=224,  # project: as the fast anchor's
    pretrained="checkpoints/deit_3_large_224_21k.pth",  # upstream: pretrained/deit_3_large_224_21k_mmseg.pth
    num_classes=0,  # project: as the fast anchor's
    drop_path_rate=0.1,  # upstream: drop_path_rate=0.1
)


def _setr_up_head(in_index, num_convs, in_channels=1024, num_classes=150):
    return L(SETRUPHead)(
        in_channels=in_channels,  # upstream: in_channels=1024 (every stitch's features at DeiT3-L's width)
        num_classes=num_classes,  # upstream ADE20K: num_classes=150
        in_index=in_index,  # upstream: in_index
        channels=256,  # upstream: channels=256
        num_convs=num_convs,  # upstream: num_convs
        up_scale=4,  # upstream: up_scale=4
        kernel_size=1,  # upstream: kernel_size=1
        norm="SyncBN",  # upstream: norm_cfg=dict(type='SyncBN'); BatchNorm on one process (detectron2 get_norm)
        dropout=0.0,  # upstream: dropout_ratio=0
        align_corners=False,  # upstream: align_corners=False
    )


model = L(StitchedSETR)(
    backbone=L(stitched_vit)(
        fast=_fast_anchor,
        slow=_slow_anchor,
        lora_rank=16,  # paper Sec. 5.2 / upstream lora_r=16: LoRA SL rank 16 for DeiT3-S/L
        lora_alpha=1.0,  # upstream lora.py Linear default lora_alpha=1 (update scaled by alpha / rank)
        # r > 0: backbone PET, LoRA of rank r on the anchors' qkv/proj/fc1/fc2 with the anchors frozen (Fig. 12a)
        backbone_lora_rank=0,  # paper Sec. 5.2: the anchors are fully fine-tuned (0: off)
        route_types=("anchor", "FS", "SF", "FSF", "SFS"),  # paper Sec. 4.1: Two-way stitching (134 stitches for S/L)
        out_indices=(9, 14, 19, 23),  # upstream: DeiT3-L out_indices; DeiT3-S gets (4, 7, 9, 11) as upstream
    ),
    stitch_id=None,  # project: the stitch forward runs (None: the large anchor); e.g. for --eval-only of one stitch
    decode_head=_setr_up_head(3, 1),  # upstream decode_head: SETRUPHead, in_index=3, num_convs=1 (SETR-Naive)
    auxiliary_heads=[  # upstream auxiliary_head: SETRUPHead on features 0, 1, 2, num_convs=2, training only
        # upstream: the decode head's in_channels and num_classes (followed when a config changes them)
        _setr_up_head(i, 2, "${...decode_head.in_channels}", "${...decode_head.num_classes}")
        for i in range(3)
    ],
    aux_loss_weight=0.4,  # upstream auxiliary_head: CrossEntropyLoss(loss_weight=0.4)
    pixel_mean=IMAGENET_RGB_MEAN,  # upstream data_preprocessor: mean (RGB)
    pixel_std=IMAGENET_RGB_STD,  # upstream data_preprocessor: std (RGB)
    input_format="BGR",  # upstream data_preprocessor: bgr_to_rgb=True (the loaders read images BGR)
    ignore_value=255,  # upstream: CrossEntropyLoss ignore_index 255 (mmseg BaseDecodeHead default), seg_pad_val=255
    crop_size=(512, 512),  # upstream: data_preprocessor size / test_cfg crop_size (512, 512)
    test_stride=(341, 341),  # upstream: test_cfg stride=(341, 341)
    test_mode="slide",  # upstream: test_cfg mode='slide'
    align_corners=False,  # upstream: align_corners=False
)
