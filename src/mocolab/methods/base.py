"""What the engine drives: a method declares what SGD updates, which (online, target) pairs
follow by momentum, its per-step loss (`forward`, so DistributedDataParallel can wrap it) and
its state update after the step (`after_step`: queue, bank)."""

from __future__ import annotations

import torch
from torch import nn


class Method(nn.Module):
    STATE = ()  # names of child modules that hold the method's state (queue, bank), not weights
    num_views = 2  # augmented views per image the feed makes (1: the bank's single view)
    compiled = False  # set by pretrain.build_model when the encoders are compiled
    cudagraphs = False  # likewise, when they run as CUDA graphs (the step marks its beginning)
    encoder_q: nn.Module  # the online encoder: its backbone is exported and evaluated

    def learnable_params(self) -> list[nn.Parameter]:
        """What SGD updates."""
        return list(self.encoder_q.parameters())

    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        """(online, target) pairs: target <- m target + (1 - m) online after each step."""
        return []

    def momentum(self, progress: float) -> float:
        """m at `progress` (steps done / schedule length, in [0, 1])."""
        return 0.0

    def encoders(self) -> list[nn.Module]:
        """The encoders that run every step (compiled by run.compile)."""
        return [self.encoder_q]

    def generators(self) -> dict[str, torch.Generator]:
        """Random generators that are part of the state (saved in checkpoints)."""
        return {}

    def forward(self, *views: torch.Tensor, index: torch.Tensor | None = None,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict]:
        """views: augmented batches, each N x 3 x H x W; index: the images' dataset indices (N).
        -> (loss, out): out["logs"] holds 0-dim tensors to log, the rest is for after_step."""
        raise NotImplementedError

    def after_step(self, out: dict) -> None:
        """The method's state update once SGD and the momentum update are done."""

    def norm_buffers(self) -> list[torch.Tensor]:
        """Buffers a skipped step must restore (BN running statistics): all but the state."""
        return [b for name, mod in self.named_children() if name not in self.STATE for b in mod.buffers()]
