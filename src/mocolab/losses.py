"""Contrastive losses as pure functions."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def info_nce(q: torch.Tensor, k: torch.Tensor, negatives: torch.Tensor, T: float) -> torch.Tensor:
    """InfoNCE with the positive at index 0.

    q, k: N x C (L2-normalised), negatives: K x C. Returns the mean cross-entropy of
    logits N x (1+K) / T against label 0.
    """
    with torch.autocast(q.device.type, enabled=False):  # float32 logits: bf16 would blur them by ~1/T %
        q, k, negatives = q.float(), k.float(), negatives.float()
        l_pos = (q * k).sum(dim=1, keepdim=True)  # N x 1
        l_neg = q @ negatives.t()  # N x K
        logits = torch.cat([l_pos, l_neg], dim=1) / T  # N x (1+K)
        labels = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
        return F.cross_entropy(logits, labels)
