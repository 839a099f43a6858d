"""The engine: one training loop for every method and task (loop.Trainer), its feeds, its
checkpoint folder and its metrics log."""

from .checkpoints import CheckpointManager
from .feeds import ViewsFeed
from .logger import MetricsLogger
from .loop import Progress, Trainer

__all__ = ["CheckpointManager", "MetricsLogger", "Progress", "Trainer", "ViewsFeed"]
