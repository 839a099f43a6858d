"""Backbones, heads and the MoCo module."""
