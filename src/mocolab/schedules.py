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


class StepBudget:
    """Fits a schedule to a wall-clock budget: the run's length is the number of steps that fit
    in the time left, re-estimated every `every` steps from the time per step measured after
    `warmup` steps (allocator and kernel warm-up), so a short run anneals fully within it."""

    def __init__(self, budget_s: float, start_step: int, warmup: int = 5, every: int = 10):
        self.budget_s, self.start, self.every = budget_s, start_step + warmup, every
        self.calib: tuple[float, int] | None = None  # (step clock, step) at the end of warm-up

    def spent(self, elapsed: float) -> bool:
        """True once `elapsed` seconds use up the budget (never without one)."""
        return self.budget_s > 0 and elapsed >= self.budget_s

    def total_steps(self, step: int, step_clock: float, elapsed: float) -> int | None:
        """The schedule's new length after `step` steps, or None when not re-estimated now.
        `step_clock`: seconds spent in steps only; `elapsed`: seconds counted against the budget."""
        if self.budget_s <= 0:
            return None
        if step == self.start:
            self.calib = (step_clock, step)
        c = self.calib
        if c is None or step <= c[1] or (step - c[1]) % self.every:
            return None
        per_step = (step_clock - c[0]) / (step - c[1])
        return max(step + 1, step + int((self.budget_s - elapsed) / max(per_step, 1e-6)))
