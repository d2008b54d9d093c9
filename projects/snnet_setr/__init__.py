"""SN-Netv2 semantic segmentation: SETR-Naive on a stitched DeiT3 pair (ADE20K, COCO-Stuff-10K), detectron2
LazyConfig."""
