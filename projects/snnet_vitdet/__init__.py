"""SN-Netv2 backbone for detectron2's Mask R-CNN ViTDet (LazyConfig, COCO)."""
import snnet_core.d2  # noqa: F401  (silences detectron2's notices that ask nothing of the user)
