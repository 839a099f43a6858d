"""MoCo v3 (Chen, Xie and He 2021): no queue. Each of two views is a query for the other's key;
the negatives are the keys of the global batch (gathered across ranks); the loss is
2T (ctr(q1, k2) + ctr(q2, k1)), as in the official code. The query side is f_q (backbone,
projector) then a predictor; the key encoder f_k is f_q's EMA without the predictor, its
momentum rising from m to 1 along a half cosine."""

from __future__ import annotations

import math

import torch
from torch import nn

from .. import distributed as du
from ..losses import batch_logits, cross_entropy_at, pretext_top1
from ..models.encoder import build_query_predictor
from ..momentum import cosine_momentum
from ..registry import METHODS
from .base import MomentumEncoders


@METHODS.register
class MoCoV3(MomentumEncoders):
    name = "mocov3"
    title = "MoCo v3"
    # K = batch - 1, no queue; m always by cosine; no Shuffle BN
    config_keys = frozenset({"moco.m", "model.predictor_dim"})

    @classmethod
    def from_config(cls, cfg, encoder: nn.Module, n_train: int = 0) -> MoCoV3:
        return cls(encoder, build_query_predictor(cfg, official_v3=True), cfg.moco.T, cfg.moco.m)

    def __init__(self, encoder: nn.Module, predictor: nn.Module | None = None, T: float = 0.2, m: float = 0.99):
        super().__init__(encoder, predictor)  # f_q, f_k, the predictor (None: the ablation without one)
        self.T, self.m = T, m

    def momentum(self, progress: float) -> float:
        return cosine_momentum(self.m, progress)

    def ctr(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q: N x C queries, k: N x C keys (L2-normalised, no gradient) -> (2T x the mean
        cross-entropy over the W N gathered keys, logits N x (W N), q_i's positive at rank N + i)."""
        k_all = du.all_gather(k)  # (W N) x C, rank order
        logits, labels = batch_logits(q, k_all, self.T, du.rank())  # N x (W N), q_i's positive at rank N + i
        return cross_entropy_at(logits, labels) * (2 * self.T), pretext_top1(logits, labels)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor, *, index: torch.Tensor | None = None,
                generator: torch.Generator | None = None):
        """x1, x2: two augmented views, N x 3 x H x W."""
        q1, q2 = self.encode_query(x1), self.encode_query(x2)  # N x C each
        with torch.no_grad():
            k1, k2 = self.encoder_k(x1), self.encoder_k(x2)  # N x C each
        loss1, acc = self.ctr(q1, k2)
        loss2, _ = self.ctr(q2, k1)
        return loss1 + loss2, {"pair": (q1.detach(), k2), "logs": {"pretext_acc": acc}}

    def chance_loss(self, batch: int) -> float:
        return 2 * 2 * self.T * math.log(batch)  # two terms, each 2T x the cross-entropy
