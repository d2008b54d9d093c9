"""SN-Netv2 backbone for detectron2's Mask R-CNN ViTDet (LazyConfig, COCO)."""
import warnings

# Notices about detectron2's own code that ask nothing of the user, printed on every run:
# - its model_zoo, which the COCO configs read, imports pkg_resources (requirements.txt pins setuptools<81, which
#   keeps it);
# - its anchor generator calls torch.meshgrid without `indexing` (torch's default, "ij", is what it means).
warnings.filterwarnings("ignore", message="pkg_resources is deprecated as an API", category=UserWarning)
warnings.filterwarnings("ignore", message="torch.meshgrid: in an upcoming release", category=UserWarning)
