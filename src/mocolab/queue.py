"""KeyQueue: the dictionary of negative keys, a FIFO ring buffer saved with the model.

Unlike implementations that assert K % batch == 0 (official MoCo) or drop keys at the wrap
(lightly), every key of every batch is enqueued: indices wrap modulo K.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class KeyQueue(nn.Module):
    def __init__(self, size: int, dim: int):
        super().__init__()
        # K x C, random unit vectors at start, as in the official code
        self.register_buffer("keys", F.normalize(torch.randn(size, dim), dim=1))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))  # next slot to write

    @property
    def size(self) -> int:
        return self.keys.shape[0]

    @torch.no_grad()
    def enqueue(self, k: torch.Tensor) -> None:
        """k: B x C. Overwrites the oldest B keys; for B > K only the newest K are kept."""
        K, B = self.size, k.shape[0]
        if B >= K:
            self.keys.copy_(k[B - K:])
            self.ptr.zero_()
            return
        idx = (self.ptr + torch.arange(B, device=k.device)) % K  # B slots, wrapping
        self.keys.index_copy_(0, idx, k.to(self.keys.dtype))
        self.ptr.copy_((self.ptr + B) % K)
