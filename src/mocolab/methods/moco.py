"""MoCo v1/v2 (He et al. 2019; Chen et al. 2020): query encoder f_q, key encoder f_k (its EMA
copy) and a queue of K keys from earlier batches. `forward` and `after_step` together are the
paper's Algorithm 1 (the SGD and momentum lines are the engine's: mocolab.step.train_step)."""

from __future__ import annotations

import math

import torch
from torch import nn

from .. import distributed as du
from ..auto import is_auto, keys_per_step
from ..losses import contrastive_logits, cross_entropy_at, info_nce, pretext_top1
from ..models.encoder import build_query_predictor
from ..momentum import cosine_momentum
from ..queue import KeyQueue
from ..registry import METHODS
from .base import MomentumEncoders


@METHODS.register
class MoCo(MomentumEncoders):
    name = "moco"
    title = "MoCo"
    config_keys = frozenset({"moco.queue_size", "moco.m", "moco.m_schedule", "moco.shuffle_bn", "moco.symmetric",
                             "model.predictor_dim", "data.small_crops"})
    STATE = ("queue",)
    auto_keys = frozenset({"moco.m", "moco.queue_size"})  # mocolab.auto's rule was fitted on MoCo

    def __init__(self, encoder: nn.Module, dim: int, K: int, m: float = 0.999, T: float = 0.07, *,
                 m_schedule: str = "constant", shuffle_bn: bool = True, symmetric: bool = False,
                 predictor: nn.Module | None = None):
        super().__init__(encoder, predictor)  # f_q, f_k (its momentum copy), the predictor
        self.queue = KeyQueue(K, dim)
        self.m, self.T, self.m_schedule = m, T, m_schedule
        self.shuffle_bn, self.symmetric = shuffle_bn, symmetric

    @classmethod
    def from_config(cls, cfg, encoder: nn.Module, n_train: int = 0) -> MoCo:
        mc = cfg.moco
        return cls(encoder, cfg.model.dim, mc.queue_size, mc.m, mc.T, m_schedule=mc.m_schedule,
                   shuffle_bn=mc.shuffle_bn, symmetric=mc.symmetric, predictor=build_query_predictor(cfg))

    @classmethod
    def check_config(cls, cfg) -> list[tuple[bool, str]]:
        per_step = keys_per_step(cfg)
        if is_auto(cfg.moco.queue_size):  # resolved at the start of the run (mocolab.auto), >= per_step
            return []
        return [
            (cfg.moco.queue_size >= 1, "moco.queue_size must be >= 1 (>= 0 for moco.method=bank, where 0 uses "
                                       "every entry)"),
            (cfg.moco.queue_size >= per_step,
             f"moco.queue_size (K={cfg.moco.queue_size}) is smaller than the keys enqueued per step "
             f"({per_step}): the queue would not hold one batch"),
        ]

    @classmethod
    def num_negatives(cls, cfg) -> int | str:
        return cfg.moco.queue_size  # or "auto"

    def momentum(self, progress: float) -> float:
        return self.m if self.m_schedule == "constant" else cosine_momentum(self.m, progress)

    @torch.no_grad()
    def encode_key(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Keys N x C, computed on a shuffled batch (Shuffle BN, across ranks under torchrun)
        and put back in order."""
        if not self.shuffle_bn:
            return self.encoder_k(x)
        x_shuffled, idx_unshuffle = du.batch_shuffle(x, generator)
        return du.batch_unshuffle(self.encoder_k(x_shuffled), idx_unshuffle)

    def forward(self, x_q: torch.Tensor, x_k: torch.Tensor, x_small: torch.Tensor | None = None, *,
                index: torch.Tensor | None = None, generator: torch.Generator | None = None):
        """x_q, x_k: two augmented views, N x 3 x H x W. x_small: multi-crop's extra query views,
        (n N) x 3 x h x w, crop j of image i at row j N + i; each is one more query for its
        image's key (the loss is the mean over all). out["k"]: the keys to enqueue."""
        negatives = self.queue.keys.detach()  # K x C, the keys of earlier batches
        T = self.T
        if not self.symmetric:
            q = self.encode_query(x_q)  # N x C
            k = self.encode_key(x_k, generator)  # N x C, no gradient
            logits = contrastive_logits(q, k, negatives, T)  # N x (1+K), positive at 0
            loss = cross_entropy_at(logits, 0)
            if x_small is not None:
                n = x_small.shape[0] // x_q.shape[0]
                q_small = self.encode_query(x_small)  # nN x C
                loss = (loss + n * info_nce(q_small, k.repeat(n, 1), negatives, T)) / (1 + n)
            return loss, {"k": k, "pair": (q.detach(), k), "logs": {"pretext_acc": pretext_top1(logits, 0)}}
        # symmetric (official CIFAR demo): each view is a query for the other's key
        q1, q2 = self.encode_query(x_q), self.encode_query(x_k)
        k1, k2 = self.encode_key(x_q, generator), self.encode_key(x_k, generator)
        logits = contrastive_logits(q1, k2, negatives, T)  # N x (1+K)
        loss = cross_entropy_at(logits, 0) + info_nce(q2, k1, negatives, T)
        return loss, {"k": torch.cat([k2, k1]), "pair": (q1.detach(), k2),
                      "logs": {"pretext_acc": pretext_top1(logits, 0)}}

    @torch.no_grad()
    def prime(self, views: tuple[torch.Tensor, ...]) -> bool:
        """Enqueues the keys of one batch's key views (x_k, N x 3 x H x W); True once K keys from
        the data have replaced the queue's random ones."""
        k = du.all_gather(self.encode_key(views[1]))  # (W N) x C
        self.queue.enqueue(k, tick=False)  # encoded before step 0
        self.primed = getattr(self, "primed", 0) + k.shape[0]
        return self.primed >= self.queue.keys.shape[0]

    def health(self, out: dict) -> dict[str, torch.Tensor]:
        """The figures of mocolab.health, and the oldest queued key's age in steps."""
        return {**super().health(out), "key_age": self.queue.age().float()}

    def chance_loss(self, batch: int) -> float:
        return math.log(self.queue.size + 1)

    def after_step(self, out: dict) -> None:
        self.queue.enqueue(du.all_gather(out["k"]))  # the newest keys of all ranks replace the oldest
