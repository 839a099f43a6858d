"""Contrastive losses as pure functions: logits with the positive's column, cross-entropy,
and the pretext task's top-1 (how often the positive wins, the "cheat" Shuffle BN prevents)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def contrastive_logits(q: torch.Tensor, k: torch.Tensor, negatives: torch.Tensor, T: float) -> torch.Tensor:
    """q, k: N x C (L2-normalised), negatives: K x C -> logits N x (1+K) / T, positive at 0.
    float32 even under autocast: bf16 would blur the logits by ~1/T %."""
    with torch.autocast(q.device.type, enabled=False):
        q, k, negatives = q.float(), k.float(), negatives.float()
        l_pos = (q * k).sum(dim=1, keepdim=True)  # N x 1
        l_neg = q @ negatives.t()  # N x K
        return torch.cat([l_pos, l_neg], dim=1) / T  # N x (1+K)


def info_nce(q: torch.Tensor, k: torch.Tensor, negatives: torch.Tensor, T: float) -> torch.Tensor:
    """InfoNCE with the positive at index 0: the mean cross-entropy of logits N x (1+K) / T
    against label 0."""
    return cross_entropy_at(contrastive_logits(q, k, negatives, T), 0)


def cross_entropy_at(logits: torch.Tensor, labels: torch.Tensor | int) -> torch.Tensor:
    """Mean cross-entropy of logits N x M against labels (N, or one index for every row)."""
    if isinstance(labels, int):
        labels = torch.full((logits.shape[0],), labels, dtype=torch.long, device=logits.device)
    return F.cross_entropy(logits.float(), labels)


@torch.no_grad()
def pretext_top1(logits: torch.Tensor, labels: torch.Tensor | int) -> torch.Tensor:
    """% of rows whose positive (labels, or one index for all) has the largest logit; a 0-dim
    tensor on the device (no host sync)."""
    return (logits.argmax(dim=1) == labels).float().mean() * 100


def batch_logits(q: torch.Tensor, k: torch.Tensor, T: float, rank: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """q: N x C queries; k: (W N) x C, the global batch's keys in rank order (this rank's at
    rank N .. rank N + N - 1) -> (logits N x (W N) in float32, labels N: q_i's positive at rank N + i).
    The dictionary of end-to-end and MoCo v3: the batch's other keys are the negatives."""
    with torch.autocast(q.device.type, enabled=False):
        logits = q.float() @ k.float().t() / T  # N x (W N)
    labels = rank * q.shape[0] + torch.arange(q.shape[0], device=q.device)  # N
    return logits, labels
