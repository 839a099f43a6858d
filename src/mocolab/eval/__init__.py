"""Evaluation protocols: feature extraction and weighted kNN."""
