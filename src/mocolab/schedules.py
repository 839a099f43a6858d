"""Learning-rate schedules as pure functions of the step."""

from __future__ import annotations

import math


def lr_at(step: int, total_steps: int, base_lr: float, schedule: str = "cosine",
          milestones=(0.6, 0.8), warmup_steps: int = 0, gamma: float = 0.1) -> float:
    """The lr for `step` (0-based) of `total_steps`.

    Linear warmup over `warmup_steps`, then cosine to 0, or steps of x`gamma` at the
    `milestones` (fractions of the run: 120/200 and 160/200 epochs are 0.6 and 0.8).
    """
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    p = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    if schedule == "cosine":
        return base_lr * 0.5 * (1.0 + math.cos(math.pi * p))
    return base_lr * gamma ** sum(p >= m for m in milestones)


def scaled_lr(lr: float, batch_size: int, base_batch_size: int) -> float:
    """Linear scaling rule (Goyal et al. 2017)."""
    return lr * batch_size / base_batch_size
