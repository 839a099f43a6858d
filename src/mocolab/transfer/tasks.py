"""The built-in transfer tasks: importing this module registers them (mocolab.registry.TASKS)."""

from . import detect, segment  # noqa: F401  (their import registers them)
