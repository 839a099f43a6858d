"""KeyQueue: the dictionary of negative keys, a FIFO ring buffer saved with the model.

Unlike implementations that assert K % batch == 0 (official MoCo) or drop keys at the wrap
(lightly), every key of every batch is enqueued: indices wrap modulo K. Each slot also keeps the
step its key was encoded at, so the oldest key's age is measured, not assumed (mocolab.health).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .stamps import StepStamps


class KeyQueue(StepStamps):
    def __init__(self, size: int, dim: int):
        super().__init__()
        # K x C, random unit vectors at start, as in the official code
        self.register_buffer("keys", F.normalize(torch.randn(size, dim), dim=1))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))  # next slot to write
        self.init_stamps(size)  # the step each slot's key was encoded at; steps (enqueues) so far

    @property
    def size(self) -> int:
        return self.keys.shape[0]

    @torch.no_grad()
    def enqueue(self, k: torch.Tensor, tick: bool = True) -> None:
        """k: B x C, encoded at this step. Overwrites the oldest B keys; for B > K only the newest
        K are kept. tick: the step ends here (False: keys primed before step 0)."""
        K, B = self.size, k.shape[0]
        if B >= K:
            self.keys.copy_(k[B - K:])
            self.stamp()
            self.ptr.zero_()
        else:
            idx = (self.ptr + torch.arange(B, device=k.device)) % K  # B slots, wrapping
            self.keys.index_copy_(0, idx, k.to(self.keys.dtype))
            self.stamp(idx)
            self.ptr.copy_((self.ptr + B) % K)
        if tick:
            self.clock += 1

    @torch.no_grad()
    def resize(self, size: int) -> None:
        """Keeps the newest min(size, K) keys (and their steps) in a queue of `size` slots; the
        rest are random unit vectors of step 0, as at the start (moco.queue_size=auto under a time
        budget is resolved after the first steps)."""
        K = self.size
        if size == K:
            return
        n = min(size, K)
        newest = (self.ptr - n + torch.arange(n, device=self.keys.device)) % K  # n slots, oldest first
        keys = F.normalize(torch.randn(size, self.keys.shape[1], device=self.keys.device), dim=1)
        born = torch.zeros(size, dtype=torch.long, device=self.keys.device)
        keys[:n], born[:n] = self.keys[newest], self.born[newest]
        self.keys, self.born = keys, born
        self.ptr.fill_(n % size)

    def age(self) -> torch.Tensor:
        """Steps since the oldest key was encoded (0-dim, on the device): K / B once a queue of K
        fed B keys a step is full; steps since the start before that."""
        return self.clock - self.born.min()
