"""`moco.m=auto` and `moco.queue_size=auto`: m and K from the run's schedule length and data size.

The rule was fitted to measurements, not guessed (docs/ablations.md, section 5; docs/auto_rule.sh
reruns the sweep): MoCo on 10,000 CIFAR-10 images for 78, 234 and 780 steps, m in {0.9, 0.97,
0.99, 0.997} x K in {256, 1024, 4096}, two seeds each, with the paper's 200-epoch ImageNet setting
(about 500,000 steps: m 0.999, K 65,536 at batch 256) as the long-run anchor. Two power laws in the
schedule's length S (steps):
- the key encoder's averaging window W = 1 / (1 - m) = W_AT_1K * (S / 1000) ** W_POWER steps;
- the oldest key's age K / B = AGE_AT_1K * (S / 1000) ** AGE_POWER steps (B: keys enqueued a step),
  K rounded to a power of 2, at most half the training set (no image's own key of an earlier epoch
  among its negatives) and at most 65,536.
"""

from __future__ import annotations

import math

# fitted: docs/ablations.md, section 5
W_AT_1K, W_POWER = 100.0, 0.5
AGE_AT_1K, AGE_POWER = 2.0, 0.5
M_RANGE = (0.9, 0.9999)
K_MAX = 65536
AUTO_KEYS = ("moco.m", "moco.queue_size")


def auto_momentum(steps: int) -> float:
    """m for a schedule of `steps` steps: 1 - 1 / W, W the window the rule gives."""
    window = W_AT_1K * (max(steps, 1) / 1000) ** W_POWER
    return min(max(1 - 1 / window, M_RANGE[0]), M_RANGE[1])


def auto_queue_size(steps: int, keys_per_step: int, n_train: int = 0) -> int:
    """K for a schedule of `steps` steps enqueuing `keys_per_step` keys a step (the global batch,
    twice it with moco.symmetric), over n_train images (0: unknown, no bound)."""
    age = max(AGE_AT_1K * (max(steps, 1) / 1000) ** AGE_POWER, 1.0)
    k = 2 ** round(math.log2(age * keys_per_step))
    bound = min(K_MAX, n_train // 2) if n_train else K_MAX
    k = min(k, 2 ** int(math.log2(bound))) if bound >= 1 else k
    return max(k, keys_per_step)  # the queue holds at least one step's keys


def is_auto(value) -> bool:
    return isinstance(value, str) and value.strip().lower() == "auto"


def auto_values(cfg, steps: int, n_train: int = 0) -> dict[str, float | int]:
    """{key: value} for the keys of AUTO_KEYS that cfg sets to "auto"."""
    out: dict[str, float | int] = {}
    if is_auto(cfg.moco.m):
        out["moco.m"] = auto_momentum(steps)
    if is_auto(cfg.moco.queue_size):
        keys = cfg.optim.batch_size * (2 if cfg.moco.symmetric else 1)
        out["moco.queue_size"] = auto_queue_size(steps, keys, n_train)
    return out
