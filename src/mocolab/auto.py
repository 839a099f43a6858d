"""`moco.m=auto` and `moco.queue_size=auto`: m and K from the run's schedule and data size.

The rule was fitted to measurements, not guessed (docs/ablations.md, section 5; docs/auto_rule.sh
reruns the sweep, `benchmarks/auto_fit.py` the fit): MoCo on 10,000 CIFAR-10 images for 78, 234
and 780 steps (1, 3, 10 epochs), m in {0.9, 0.97, 0.99, 0.997} x K in {256, 1024, 4096}, two seeds
each, with the paper's 200 ImageNet epochs (about 1,000,000 steps, best m 0.999) as the long-run
point.
- The key encoder's averaging window W = 1 / (1 - m) = W_AT_1K (S / 1000) ** W_POWER steps for a
  schedule of S steps: a power law through the best window of each length (the centre of the m
  that are as good as the best within the seeds' spread), weighted by how clearly each length
  tells (1 / spread^2: a flat, noisy short run says little).
- The queue: no cell whose oldest key was at most AGE_SHARE of the window old lost more than the
  seeds' spread to the smallest queue at its m; older keys did. So K / B = AGE_SHARE x W (B: keys
  enqueued a step), rounded to a power of 2, at least one step's keys, at most half the training
  set (no image's own key of an earlier epoch among its negatives) and at most 65,536.
"""

from __future__ import annotations

import math

# fitted: docs/ablations.md, section 5 (benchmarks/auto_fit.py)
W_AT_1K, W_POWER = 53.9, 0.413
AGE_SHARE = 0.08
M_RANGE = (0.9, 0.9999)
K_MAX = 65536


def auto_momentum(steps: int) -> float:
    """m = 1 - 1 / W for a schedule of `steps` steps, within M_RANGE."""
    window = W_AT_1K * (max(steps, 1) / 1000) ** W_POWER
    return min(max(1 - 1 / window, M_RANGE[0]), M_RANGE[1])


def auto_queue_size(steps: int, keys_per_step: int, n_train: int = 0) -> int:
    """K: keys_per_step x AGE_SHARE x the window of auto_momentum (its clamped m), as a power of 2;
    at least keys_per_step, at most K_MAX and half of n_train (0: unknown, no bound)."""
    window = 1 / (1 - auto_momentum(steps))
    k = 2 ** round(math.log2(max(AGE_SHARE * window, 1.0) * keys_per_step))
    bound = min(K_MAX, n_train // 2) if n_train else K_MAX
    if bound >= 1:
        k = min(k, 2 ** int(math.log2(bound)))
    return max(k, keys_per_step)


def is_auto(value) -> bool:
    return isinstance(value, str) and value.strip().lower() == "auto"


def keys_per_step(cfg) -> int:
    """Keys MoCo enqueues a step: the global batch's, twice with moco.symmetric (both views queries)."""
    return cfg.optim.batch_size * (2 if cfg.moco.symmetric else 1)


def auto_values(cfg, steps: int, n_train: int = 0) -> dict[str, float | int]:
    """{key: value} for moco.m and moco.queue_size where cfg sets them to "auto"."""
    out: dict[str, float | int] = {}
    if is_auto(cfg.moco.m):
        out["moco.m"] = auto_momentum(steps)
    if is_auto(cfg.moco.queue_size):
        out["moco.queue_size"] = auto_queue_size(steps, keys_per_step(cfg), n_train)
    return out
