"""One MoCo training step, in the order of the paper's Algorithm 1."""

from __future__ import annotations

import torch

from .losses import info_nce
from .models.moco import MoCo
from .momentum import momentum_update


def moco_loss(model: MoCo, x_q, x_k, T: float, symmetric: bool, generator=None):
    """Returns (loss, keys to enqueue). x_q, x_k: two augmented views, N x 3 x H x W."""
    negatives = model.queue.keys.detach()  # K x C, the keys of earlier batches
    if not symmetric:
        q = model.encode_query(x_q)  # N x C
        k = model.encode_key(x_k, generator)  # N x C, no gradient
        return info_nce(q, k, negatives, T), k
    # symmetric (official CIFAR demo): each view is a query for the other's key
    q1, q2 = model.encode_query(x_q), model.encode_query(x_k)
    k1, k2 = model.encode_key(x_q, generator), model.encode_key(x_k, generator)
    loss = info_nce(q1, k2, negatives, T) + info_nce(q2, k1, negatives, T)
    return loss, torch.cat([k2, k1])


def moco_step(model: MoCo, optimizer, x_q, x_k, *, m: float, T: float, symmetric: bool = False,
              autocast=None, generator=None, skip_nonfinite: bool = False) -> torch.Tensor:
    """Algorithm 1: loss on (q, k, queue); SGD on f_q; f_k <- m f_k + (1-m) f_q; enqueue k.
    Returns the loss (a 0-dim tensor, left on the device: no host sync here).
    skip_nonfinite: a NaN/Inf loss changes nothing (costs one host sync a step)."""
    if skip_nonfinite:  # BN running statistics, restored if the step is skipped
        bn = [b for enc in (model.encoder_q, model.encoder_k) for b in enc.buffers()]
        saved = [b.clone() for b in bn]
    with autocast if autocast is not None else torch.autocast("cpu", enabled=False):
        loss, k = moco_loss(model, x_q, x_k, T, symmetric, generator)
    if skip_nonfinite and not torch.isfinite(loss):
        torch._foreach_copy_(bn, saved)
        return loss.detach()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()  # update(f_q)
    momentum_update(model.encoder_q, model.encoder_k, m)  # f_k = m * f_k + (1 - m) * f_q
    model.queue.enqueue(k)  # enqueue the newest keys, dequeue the oldest
    return loss.detach()
