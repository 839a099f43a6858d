"""FeatureBank: the memory bank of InstDisc (Wu et al. 2018) as the MoCo paper re-implemented
it: one L2-normalised feature per training image, saved with the model."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import distributed as du
from .stamps import StepStamps


class FeatureBank(StepStamps):
    def __init__(self, n: int, dim: int, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        # N x C, random unit vectors at start (InstDisc initialises uniformly at random)
        self.register_buffer("features", F.normalize(torch.randn(n, dim, generator=g), dim=1))
        self.init_stamps(n)  # the step each entry was last updated at; steps so far
        # the negatives' draws: the same on every rank (one global bank), saved in checkpoints
        self.gen = torch.Generator().manual_seed(seed + 1)

    @property
    def size(self) -> int:
        return self.features.shape[0]

    def sample(self, K: int) -> torch.Tensor:
        """Indices of K entries drawn uniformly with replacement (one draw for the whole batch),
        as a tensor on the bank's device."""
        idx = torch.randint(self.size, (K,), generator=self.gen)
        return du.to_device(idx, self.features.device)  # pinned, non-blocking on CUDA

    @torch.no_grad()
    def update(self, idx: torch.Tensor, f: torch.Tensor, m: float) -> None:
        """v <- normalize(m v + (1 - m) f) for the entries idx (B, distinct: a batch of one
        epoch's permutation) with features f (B x C)."""
        v = self.features[idx]  # B x C, stale
        self.features.index_copy_(0, idx, F.normalize(m * v + (1 - m) * f.float(), dim=1))
        self.stamp(idx)
        self.clock += 1

    def age(self, idx: torch.Tensor | None = None) -> torch.Tensor:
        """The mean age in steps of the entries idx (all when None), 0-dim on the device."""
        born = self.born if idx is None else self.born[idx]
        return (self.clock - born).float().mean()
