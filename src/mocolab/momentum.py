"""The momentum (EMA) update of the key encoder, fused over all parameters."""

from __future__ import annotations

import math

import torch
from torch import nn


@torch.no_grad()
def momentum_update(online: nn.Module, target: nn.Module, m: float) -> None:
    """target = m * target + (1 - m) * online, for every parameter, in one fused call.

    Buffers (BN running statistics) are not averaged: the key encoder keeps its own, as in
    the official code.
    """
    t_params = [p for p in target.parameters()]
    o_params = [p.detach() for p in online.parameters()]
    torch._foreach_lerp_(t_params, o_params, 1.0 - m)


def cosine_momentum(base_m: float, progress: float) -> float:
    """MoCo v3 / BYOL schedule: m rises from base_m to 1 along a half cosine."""
    return 1.0 - (1.0 - base_m) * (math.cos(math.pi * progress) + 1.0) / 2.0
