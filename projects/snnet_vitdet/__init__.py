"""SN-Netv2 backbone for detectron2's Mask R-CNN ViTDet (LazyConfig, COCO)."""
import warnings

# detectron2's model_zoo, which the COCO configs read, imports pkg_resources; requirements.txt pins setuptools<81,
# which keeps it, so its deprecation notice on every run says nothing to act on
warnings.filterwarnings("ignore", message="pkg_resources is deprecated as an API", category=UserWarning)
