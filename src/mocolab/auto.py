"""`moco.m=auto` and `moco.queue_size=auto`: m and K from the run's schedule and data size.

The rule was fitted to measurements, not guessed (docs/ablations.md, section 5; docs/auto_rule.sh
reruns the sweep and `benchmarks/auto_fit.py` the fit): MoCo on 10,000 CIFAR-10 images (78 steps
an epoch) for 1, 3 and 10 epochs, m in {0.9, 0.97, 0.99, 0.997} x K in {256, 1024, 4096}, two
seeds each.
- The key encoder's averaging window W = 1 / (1 - m) that learned best was about an epoch's steps
  in the shortest runs and a smaller share of an epoch in longer ones:
  W = W_PER_EPOCH x (steps per epoch) x epochs ** W_POWER. Fitted to these three lengths alone,
  it gives W = 652 for the paper's 200 ImageNet epochs of 5,005 steps, whose best m was 0.999
  (W = 1,000).
- The queue: no cell whose oldest key was at most AGE_SHARE of the window old lost more than the
  seeds' spread to the smallest queue at its m; older keys did. So K / B = AGE_SHARE x W (B: keys
  enqueued a step), rounded to a power of 2, at least one step's keys, at most half the training
  set (no image's own key of an earlier epoch among its negatives) and at most 65,536.
"""

from __future__ import annotations

import math

# fitted: docs/ablations.md, section 5 (benchmarks/auto_fit.py)
W_PER_EPOCH, W_POWER = 1.269, -0.430
AGE_SHARE = 0.08
M_RANGE = (0.9, 0.9999)
K_MAX = 65536


def auto_window(steps: int, steps_per_epoch: int) -> float:
    """The window 1 / (1 - m) in steps for a schedule of `steps` steps, `steps_per_epoch` a epoch."""
    spe = max(steps_per_epoch, 1)
    epochs = max(steps, 1) / spe
    return W_PER_EPOCH * spe * epochs**W_POWER


def auto_momentum(steps: int, steps_per_epoch: int) -> float:
    """m = 1 - 1 / W, within M_RANGE."""
    return min(max(1 - 1 / auto_window(steps, steps_per_epoch), M_RANGE[0]), M_RANGE[1])


def auto_queue_size(steps: int, steps_per_epoch: int, keys_per_step: int, n_train: int = 0) -> int:
    """K: keys_per_step x AGE_SHARE x the window of auto_momentum (its clamped m), as a power of 2;
    at least keys_per_step, at most K_MAX and half of n_train (0: unknown, no bound)."""
    window = 1 / (1 - auto_momentum(steps, steps_per_epoch))
    k = 2 ** round(math.log2(max(AGE_SHARE * window, 1.0) * keys_per_step))
    bound = min(K_MAX, n_train // 2) if n_train else K_MAX
    if bound >= 1:
        k = min(k, 2 ** int(math.log2(bound)))
    return max(k, keys_per_step)


def is_auto(value) -> bool:
    return isinstance(value, str) and value.strip().lower() == "auto"


def auto_values(cfg, steps: int, steps_per_epoch: int, n_train: int = 0) -> dict[str, float | int]:
    """{key: value} for moco.m and moco.queue_size where cfg sets them to "auto"."""
    out: dict[str, float | int] = {}
    if is_auto(cfg.moco.m):
        out["moco.m"] = auto_momentum(steps, steps_per_epoch)
    if is_auto(cfg.moco.queue_size):
        keys = cfg.optim.batch_size * (2 if cfg.moco.symmetric else 1)
        out["moco.queue_size"] = auto_queue_size(steps, steps_per_epoch, keys, n_train)
    return out
