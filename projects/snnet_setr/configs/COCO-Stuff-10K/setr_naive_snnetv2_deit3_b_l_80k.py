# SN-Netv2 SETR-Naive on COCO-Stuff-10K (paper Sec. 5.2, Fig. 6; upstream
# segmentation/configs/snnet/setr_naive_512x512_80k_b16_coco_stuff10k_deit_3_b_l_224_snnetv2.py): the ADE20K
# recipe of ../ADE20K/setr_naive_snnetv2_deit3_b_l_160k.py on COCO-Stuff-10K's 171 classes for 80k iterations.
from ..ADE20K.setr_naive_snnetv2_deit3_b_l_160k import lr_multiplier, model, optimizer, snnet, train
from ..common.coco_stuff10k_loader import dataloader

model.decode_head.num_classes = 171  # upstream COCO-Stuff-10K: num_classes=171
train.max_iter = 80000  # paper Sec. 5.2 / upstream schedule_80k.py: 80k iterations
train.checkpointer.period = 8000  # upstream schedule_80k.py: CheckpointHook interval=8000
train.eval_period = 8000  # upstream schedule_80k.py: val_interval=8000
