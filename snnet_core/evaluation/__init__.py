"""Scoring stitches: shared-prefix evaluation, the per-stitch report and Pareto selection, latency."""
