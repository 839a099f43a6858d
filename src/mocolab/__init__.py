"""mocolab: Momentum Contrast (MoCo v1/v2) for self-supervised visual representation learning."""

__version__ = "0.1.0"
