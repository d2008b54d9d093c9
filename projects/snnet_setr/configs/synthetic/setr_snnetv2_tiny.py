# Tiny SN-Netv2 SETR-Naive on the synthetic ADE20K of datasets/make_synthetic_segmentation.py
# (common/synthetic_loader.py): the model family and code path of ../ADE20K/setr_naive_snnetv2_deit3_s_l_160k.py
# (stitched DeiT3-style anchors, SETR-Naive decode head + 3 auxiliary heads, slide inference, ROS, LS init, SGD
# with head lr x10 and poly decay) scaled down to train from scratch on a 2-core CPU in seconds: 64 px crops,
# 4-block/64-wide and 8-block/128-wide random-init anchors (14 stitches), 32-channel heads.
#   python datasets/make_synthetic_segmentation.py --layout ade20k
import torch

from ..ADE20K.setr_naive_snnetv2_deit3_s_l_160k import lr_multiplier, model, optimizer, snnet, train
from ..common.synthetic_loader import crop_size, dataloader, datasets  # noqa: F401

# --- backbone: two small random-init DeiT3-style anchors (no pretrained weights)
for anchor, (dim, depth, heads) in (("fast", (64, 4, 2)), ("slow", (128, 8, 4))):
    model.backbone[anchor].update(
        img_size=crop_size[0], pretrained=None, drop_path_rate=0.0, embed_dim=dim, depth=depth, num_heads=heads,
        init_values=0.1)  # LayerScale: DeiT3's 1e-6 suits fine-tuning, not a few minutes from scratch
model.backbone.lora_rank = 8
model.backbone.out_indices = (2, 4, 6, 7)  # upstream's (9, 14, 19, 23) of 24 blocks at the same relative depth

# --- heads: thin, at the large anchor's width; NaiveSyncBN also synchronises over gloo on CPU
model.decode_head.in_channels = 128
model.decode_head.channels = 32
model.decode_head.norm = "naiveSyncBN"
for _head in model.auxiliary_heads:
    _head.update(channels=32, norm="naiveSyncBN")
model.crop_size = crop_size  # the synthetic loader's crop
model.test_stride = (43, 43)  # upstream's stride / crop (341 / 512) of a 64 px window

# --- schedule: from scratch, a short run
train.device = "cuda" if torch.cuda.is_available() else "cpu"
train.output_dir = "output/snnet_setr_tiny"
train.max_iter = 200
train.eval_period = 0  # the per-stitch report is written by --eval-only
train.log_period = 20
train.checkpointer.period = 50

snnet.update(ros_step_gflops=0.01, ls_init_images=16, flops_input_size=crop_size)
