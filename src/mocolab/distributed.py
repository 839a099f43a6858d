"""Process-group helpers that fall back to rank 0 / world size 1 without torch.distributed."""

from __future__ import annotations

import torch
import torch.distributed as dist


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_dist() else 0


def world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def is_main() -> bool:
    return rank() == 0


def batch_shuffle(x: torch.Tensor, generator: torch.Generator | None = None):
    """Shuffles the batch (one process). Returns (x[perm], idx_unshuffle): y[idx_unshuffle]
    puts the outputs of the shuffled batch back in the original order."""
    perm = torch.randperm(x.shape[0], generator=generator, device="cpu").to(x.device)
    return x[perm], torch.argsort(perm)
