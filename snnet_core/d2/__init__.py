"""The detectron2 application skeleton of the SN-Net projects (detection, segmentation): the only part of the
engine written for detectron2's trainer, checkpointer, evaluators and LazyConfig.

- ``app``: ``D2App``, one ``train_net.py`` flow (flags, run directory, training with LS init and ROS, exact
  ``--resume``, ``--eval-only`` per-stitch report, ``--export-stitch``, ``--measure-latency``, ``--num-gpus``);
- ``checkpoint``: strict, code-free, atomic checkpoints and the shared checkpoint names and pruning;
- ``hooks``: the per-iteration ROS stitch, per-iteration seeding, LS init across ranks;
- ``evaluation``: the per-stitch driver over a detectron2 ``DatasetEvaluator`` with shared route prefixes;
- ``export``: the files of an exported stitch (weights and LazyConfig);
- ``console``: what reaches the console and what only ``log.txt``.
"""
