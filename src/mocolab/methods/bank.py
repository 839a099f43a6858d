"""Memory bank (InstDisc, Wu et al. 2018, as the MoCo paper re-implemented it, its Figure 2b):
one stored feature per training image; the positive is the image's own (stale) entry, K
negatives are drawn from the bank (one draw for the batch), InfoNCE over 1+K, and the batch's
entries are updated after the step, v <- normalize(m v + (1 - m) f). No key encoder."""

from __future__ import annotations

import math

import torch
from torch import nn

from .. import distributed as du
from ..bank import FeatureBank
from ..losses import contrastive_logits, cross_entropy_at, pretext_top1
from ..registry import METHODS
from .base import Method


@METHODS.register
class MemoryBank(Method):
    name = "bank"
    title = "memory bank"
    config_keys = frozenset({"moco.queue_size", "moco.bank_m"})  # no key encoder: no m, no Shuffle BN
    needs_index = True
    STATE = ("bank",)
    num_views = 1  # one augmented view per image: there is no key to compute

    @classmethod
    def from_config(cls, cfg, encoder: nn.Module, n_train: int = 0) -> MemoryBank:
        if n_train < 1:
            raise ValueError("moco.method=bank needs the training set's size")
        return cls(encoder, n_train, cfg.model.dim, cfg.moco.queue_size, cfg.moco.T, m=cfg.moco.bank_m,
                   seed=cfg.run.seed)

    @classmethod
    def check_config(cls, cfg) -> list[tuple[bool, str]]:
        return [(cfg.moco.queue_size >= 0, "moco.queue_size must be >= 0 for moco.method=bank (0: every entry)")]

    @classmethod
    def num_negatives(cls, cfg) -> int:
        return cfg.moco.queue_size

    def __init__(self, encoder: nn.Module, n: int, dim: int, K: int, T: float = 0.07, *, m: float = 0.5,
                 seed: int = 0):
        super().__init__()
        self.encoder_q = encoder
        self.bank = FeatureBank(n, dim, seed)
        self.K, self.T, self.m = K, T, m  # K = 0: every entry is a negative (the full softmax)

    def generators(self) -> dict[str, torch.Generator]:
        return {"bank": self.bank.gen}

    def forward(self, x: torch.Tensor, *, index: torch.Tensor | None = None,
                generator: torch.Generator | None = None):
        if index is None:
            raise ValueError("the memory bank needs each image's dataset index")
        q = self.encoder_q(x)  # N x C
        v = self.bank.features[index]  # N x C, the images' own stale entries
        if self.K:
            drawn = self.bank.sample(self.K)  # K entries, shared by the batch
            negatives = self.bank.features[drawn]  # K x C
            logits = contrastive_logits(q, v, negatives, self.T)  # N x (1+K), positive at 0
            labels: torch.Tensor | int = 0
        else:  # K = all: a softmax over every entry, the positive being the image's own
            with torch.autocast(q.device.type, enabled=False):
                logits = q.float() @ self.bank.features.t() / self.T  # N x n
            labels = index
            drawn = None
        out = {"f": q.detach(), "index": index, "pair": (q.detach(), v), "drawn": drawn,
               "logs": {"pretext_acc": pretext_top1(logits, labels)}}
        return cross_entropy_at(logits, labels), out

    def health(self, out: dict) -> dict[str, torch.Tensor]:
        """The figures of mocolab.health, and the mean age in steps of the entries drawn."""
        return {**super().health(out), "key_age": self.bank.age(out.get("drawn"))}

    def chance_loss(self, batch: int) -> float:
        return math.log((self.K or self.bank.size) + 1)

    def after_step(self, out: dict) -> None:
        # every rank applies the global batch's updates: one bank, the same on every rank
        self.bank.update(du.all_gather(out["index"]), du.all_gather(out["f"]), self.m)
