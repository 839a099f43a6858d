"""StepStamps: the step at which each slot of a stored dictionary was last written, for the key
queue and the memory bank alike, so that the age of what a step reads is measured (mocolab.health)."""

from __future__ import annotations

import torch
from torch import nn


class StepStamps(nn.Module):
    """Buffers `born` (n: the step each slot was written at; step 0 for the random start) and
    `clock` (steps so far), saved with the module. Checkpoints from before the stamps load: their
    slots count from the step they are loaded at."""

    def init_stamps(self, n: int) -> None:
        self.register_buffer("born", torch.zeros(n, dtype=torch.long))
        self.register_buffer("clock", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def stamp(self, idx: torch.Tensor | None = None) -> None:
        """Marks the slots idx (all when None) as written at the current step."""
        if idx is None:
            self.born.fill_(self.clock)
        else:
            self.born.index_fill_(0, idx, self.clock)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name in ("born", "clock"):
            state_dict.setdefault(prefix + name, getattr(self, name).clone())
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
