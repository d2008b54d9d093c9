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
import logging
import warnings

# Notices about detectron2's own code that ask nothing of the user, printed on every run:
# - its model_zoo, which the COCO configs read, imports pkg_resources (requirements.txt pins setuptools<81, which
#   keeps it);
# - its anchor generator calls torch.meshgrid without `indexing` (torch's default, "ij", is what it means).
warnings.filterwarnings("ignore", message="pkg_resources is deprecated as an API", category=UserWarning)
warnings.filterwarnings("ignore", message="torch.meshgrid: in an upcoming release", category=UserWarning)
# Notices torch logs (as WARNING, so on the console) about detectron2 calling it, the same on every run:
# - its environment report imports torch.utils.cpp_extension, which says the CUDA toolkit it found has no CUDA
#   runtime to go with it (a CPU-only run on a machine with /usr/local/cuda);
# - its ROI pooler asks torch.fx whether it is being traced, which points the caller at newer torch functions.
TORCH_NOTICES = (("torch.utils.cpp_extension", "No CUDA runtime is found, using CUDA_HOME="),
                 ("torch.fx._symbolic_trace", "is_fx_tracing will return true for both fx.symbolic_trace"))
for _name, _start in TORCH_NOTICES:
    logging.getLogger(_name).addFilter(lambda record, start=_start: not str(record.msg).startswith(start))
