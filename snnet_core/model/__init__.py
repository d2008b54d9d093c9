"""The stitched network: anchors, the stitch space, stitching layers, the routed forward with dense features,
FLOPs per stitch, checkpoints, upstream conversion and export of one stitch."""
