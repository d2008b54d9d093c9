"""Training pieces: least-squares init of the stitching layers, stitch samplers (ROS) and per-route loss logs."""
