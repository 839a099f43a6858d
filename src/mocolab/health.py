"""A run's health while it trains: the figures that show collapse, a stuck loss and stale keys,
and the one-line warnings (with advice) that the Trainer raises from them.

Figures, for L2-normalized features (DESIGN.md section 10):
- alignment: E ||q - k||^2 over positive pairs (Wang & Isola, ICML 2020, alpha = 2); falls as
  a run learns;
- uniformity: log E exp(-2 ||f_i - f_j||^2) over pairs (t = 2); about -4 for points spread
  evenly over a high-dimensional sphere, 0 when every feature is the same;
- feature_std: the mean over dimensions of the per-dimension std; about 1/sqrt(d) when healthy,
  0 at collapse;
- effective_rank: exp of the entropy of the centred features' normalized singular values (Roy &
  Vetterli 2007); 1 at collapse;
- key_age (MoCo): steps since the oldest queued key was encoded, against the key encoder's
  averaging window 1 / (1 - m); for the memory bank the mean age of the entries drawn.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

# collapse: the per-dimension std below this fraction of a healthy 1/sqrt(d) (a constant key input
# drives it from 0.8 to 0.12 of it within 32 steps, while the scale-free rank stays ~26), or a rank below 2
COLLAPSE_STD = 0.2
COLLAPSE_RANK = 2.0
# the loss counts as stuck at chance within 1 % of ln(K + 1), on this many log lines in a row
STUCK_FRACTION = 0.01
STUCK_LINES = 3
# keys older than this share of the momentum window: in our sweep (docs/ablations.md, section 5), at 3
# epochs and longer, every cell at 0.5 windows or more lost 2.3 kNN points or more to the smallest queue
STALE_WINDOWS = 0.5
# the Shuffle BN "cheat": pretext accuracy up by this many points while kNN falls from its best
CHEAT_PRETEXT_GAIN = 5.0
CHEAT_KNN_DROP = 1.0


def alignment(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """q, k: N x C, L2-normalized, row i of each a positive pair -> E ||q_i - k_i||^2 (0-dim)."""
    return (q - k).pow(2).sum(dim=1).mean()


def uniformity(f: torch.Tensor, t: float = 2.0) -> torch.Tensor:
    """f: N x C, L2-normalized -> log of the mean of exp(-t ||f_i - f_j||^2) over pairs i < j.
    As a logsumexp: stable when every pair is far apart."""
    sq = torch.pdist(f).pow(2)  # N (N - 1) / 2
    return torch.logsumexp(-t * sq, dim=0) - math.log(sq.numel())


def feature_std(f: torch.Tensor) -> torch.Tensor:
    """f: N x C, L2-normalized -> the mean over the C dimensions of their std over the batch."""
    return f.std(dim=0).mean()


def effective_rank(f: torch.Tensor) -> torch.Tensor:
    """f: N x C -> exp(H(p)), p the singular values of the centred features normalized to sum 1;
    between 1 (collapse: one direction, or none) and min(N, C)."""
    s = torch.linalg.svdvals(f - f.mean(dim=0))  # min(N, C)
    if s.sum() <= 0:  # every row the same: no direction at all
        return torch.ones((), dtype=f.dtype, device=f.device)
    p = s / s.sum()
    return torch.exp(-torch.special.xlogy(p, p).sum())


@torch.no_grad()
def figures(q: torch.Tensor, k: torch.Tensor) -> dict[str, torch.Tensor]:
    """The batch's figures from queries q and their positive keys k (N x C each, normalized):
    0-dim float32 tensors on their device (no host sync)."""
    with torch.autocast(q.device.type, enabled=False):
        q, k = q.detach().float(), k.detach().float()
        return {"alignment": alignment(q, k), "uniformity": uniformity(q),
                "feature_std": feature_std(q), "effective_rank": effective_rank(q)}


def momentum_window(m: float) -> float:
    """The key encoder's averaging window 1 / (1 - m), in steps (inf for m = 1)."""
    return math.inf if m >= 1 else 1.0 / (1.0 - m)


@dataclass
class HealthWatch:
    """Raises each warning once per run, from the Trainer's log lines and kNN monitors.
    chance: the loss at chance, ln(K + 1) for K negatives; dim: the features' dimension;
    warmup_steps: the lr warm-up (the stuck-loss check starts after it)."""

    chance: float
    dim: int
    warmup_steps: int = 0
    raised: dict[str, str] = field(default_factory=dict)  # kind -> the warning's text
    stuck: int = 0  # log lines in a row with the loss at chance
    best_knn: tuple[float, float] | None = None  # (kNN, the pretext accuracy then)

    def check(self, rec: dict) -> list[str]:
        """rec: a log line (loss, the figures, key_age, m) or a kNN monitor (knn_top1) ->
        the warnings it raises for the first time."""
        new: dict[str, str] = {}
        std, rank = rec.get("feature_std", math.nan), rec.get("effective_rank", math.nan)
        healthy_std = 1 / math.sqrt(self.dim)
        # NaN (a figure not in rec) compares False
        if std < COLLAPSE_STD * healthy_std or rank < COLLAPSE_RANK:
            new["collapse"] = (
                f"the features are collapsing at step {rec['step']} (per-dimension std {std:.3g} against a healthy "
                f"{healthy_std:.3g}, effective rank {rank:.2f}): every image maps to nearly the same vector; check "
                "the augmentation and the key encoder's input, lower optim.lr, or keep moco.shuffle_bn on")
        loss = rec.get("loss")
        if loss is not None and rec["step"] > self.warmup_steps:
            self.stuck = self.stuck + 1 if loss >= (1 - STUCK_FRACTION) * self.chance else 0
            if self.stuck >= STUCK_LINES:
                new["stuck"] = (
                    f"the loss ({loss:.3f}) has stayed within {STUCK_FRACTION:.0%} of chance, ln(K + 1) = "
                    f"{self.chance:.3f}, since the warm-up ended: nothing is being learned; try a lower moco.T or "
                    "a higher optim.lr, and check that the two views of an image differ but share content")
        age, m = rec.get("key_age"), rec.get("m")
        if age is not None and m is not None and age > STALE_WINDOWS * momentum_window(m):
            new["stale"] = (
                f"keys are up to {age:.0f} steps old, {age / momentum_window(m):.2g} of the window the key "
                f"encoder averages over (1 / (1 - m) = {momentum_window(m):.0f} steps at m {m:g}): such keys "
                "come from encoders unlike the current one; a smaller moco.queue_size or a larger moco.m (or "
                "moco.queue_size=auto, moco.m=auto)")
        if rec.get("knn_top1") is not None and rec.get("pretext_acc") is not None:
            knn, pretext = rec["knn_top1"], rec["pretext_acc"]
            if self.best_knn is None or knn >= self.best_knn[0]:
                self.best_knn = (knn, pretext)
            elif knn <= self.best_knn[0] - CHEAT_KNN_DROP and pretext >= self.best_knn[1] + CHEAT_PRETEXT_GAIN:
                new["cheat"] = (
                    f"the pretext accuracy rose from {self.best_knn[1]:.1f} to {pretext:.1f} % while kNN fell from "
                    f"{self.best_knn[0]:.2f} to {knn:.2f} %: the model may be using the batch-norm statistics a "
                    "query shares with its key; keep moco.shuffle_bn on (or model.bn_splits > 1)")
        fresh = {kind: text for kind, text in new.items() if kind not in self.raised}
        self.raised.update(fresh)
        return list(fresh.values())

    def state_dict(self) -> dict:
        return {"raised": dict(self.raised), "stuck": self.stuck, "best_knn": self.best_knn}

    def load_state_dict(self, state: dict) -> None:
        self.raised = dict(state.get("raised", {}))
        self.stuck = int(state.get("stuck", 0))
        best = state.get("best_knn")
        self.best_knn = tuple(best) if best is not None else None
