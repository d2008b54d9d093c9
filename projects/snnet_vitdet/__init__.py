"""SN-Netv2 backbone for detectron2's Mask R-CNN ViTDet (LazyConfig, COCO)."""
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
