"""Transfer to detection and segmentation (DESIGN.md section 6): data, models and metrics."""
