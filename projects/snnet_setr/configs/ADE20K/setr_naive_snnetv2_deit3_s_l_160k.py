# SN-Netv2 SETR-Naive on ADE20K (paper Sec. 5.2, Fig. 5 left): every stitch of DeiT3-S and DeiT3-L, trained once
# with ROS for 160k iterations at total batch 16 (upstream
# segmentation/configs/snnet/setr_naive_512x512_160k_b16_ade20k_deit_3_s_l_224_snnetv2.py). Every value names its
# source in a comment (common/setr_naive.py, common/schedule.py, common/ade20k_loader.py).
from ..common.ade20k_loader import dataloader
from ..common.schedule import lr_multiplier, optimizer, snnet, train
from ..common.setr_naive import model

model.decode_head.num_classes = 150  # upstream ADE20K: num_classes=150
train.max_iter = 160000  # paper Sec. 5.2 / upstream schedule_160k.py: 160k iterations
