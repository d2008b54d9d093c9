"""SN-Netv2 semantic segmentation: SETR-Naive on a stitched DeiT3 pair (ADE20K, COCO-Stuff-10K), detectron2
LazyConfig."""
import snnet_core.d2  # noqa: F401  (silences detectron2's notices that ask nothing of the user)
