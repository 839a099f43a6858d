"""End-to-end (the paper's Figure 2a, as in SimCLR): the keys come from the query encoder
itself, with gradients, and the negatives are the other keys of the (gathered) batch, so the
dictionary is the batch: K = N - 1 for a global batch of N."""

from __future__ import annotations

import torch
from torch import nn

from .. import distributed as du
from ..losses import batch_logits, cross_entropy_at, pretext_top1
from ..registry import METHODS
from .base import Method


@METHODS.register
class EndToEnd(Method):
    name = "e2e"
    title = "end-to-end"
    config_keys = frozenset({"moco.shuffle_bn"})  # K = batch - 1: the dictionary is the (gathered) batch

    @classmethod
    def from_config(cls, cfg, encoder: nn.Module, n_train: int = 0) -> EndToEnd:
        return cls(encoder, cfg.moco.T, shuffle_bn=cfg.moco.shuffle_bn)

    def __init__(self, encoder: nn.Module, T: float = 0.07, *, shuffle_bn: bool = True):
        super().__init__()
        self.encoder_q = encoder
        self.T, self.shuffle_bn = T, shuffle_bn

    def encode_keys(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """The global batch's keys (W N) x C in rank order, with gradient (one differentiable
        gather); with Shuffle BN computed on a batch shuffled across ranks, then put back."""
        if not self.shuffle_bn:
            return du.all_gather_grad(self.encoder_q(x))
        x_shuffled, idx_unshuffle = du.batch_shuffle(x, generator)  # idx_unshuffle: over the W N images
        return du.all_gather_grad(self.encoder_q(x_shuffled))[idx_unshuffle]

    def forward(self, x_q: torch.Tensor, x_k: torch.Tensor, *, index: torch.Tensor | None = None,
                generator: torch.Generator | None = None):
        q = self.encoder_q(x_q)  # N x C
        k = self.encode_keys(x_k, generator)  # (W N) x C, the global batch's keys
        logits, labels = batch_logits(q, k, self.T, du.rank())  # N x (W N), q_i's positive at rank N + i
        return cross_entropy_at(logits, labels), {"pair": (q.detach(), k[labels].detach()),
                                                  "logs": {"pretext_acc": pretext_top1(logits, labels)}}
