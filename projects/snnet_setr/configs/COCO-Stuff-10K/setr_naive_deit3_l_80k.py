# SETR-Naive on COCO-Stuff-10K with one DeiT3 (paper Fig. 6: an anchor's yellow star): the backbone of
# ../ADE20K/setr_naive_deit3_l_160k.py with the COCO-Stuff-10K schedule of setr_naive_snnetv2_deit3_s_l_80k.py.
from ..ADE20K.setr_naive_deit3_l_160k import lr_multiplier, model, optimizer, train
from ..common.coco_stuff10k_loader import dataloader

model.decode_head.num_classes = 171  # upstream COCO-Stuff-10K: num_classes=171
train.max_iter = 80000  # paper Sec. 5.2 / upstream schedule_80k.py: 80k iterations
train.checkpointer.period = 8000  # upstream schedule_80k.py: CheckpointHook interval=8000
train.eval_period = 8000  # upstream schedule_80k.py: val_interval=8000
