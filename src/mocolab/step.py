"""One training step of any method. For MoCo, with the method's forward and after_step, it is
the paper's Algorithm 1: loss on (q, k, queue); SGD on f_q; f_k <- m f_k + (1-m) f_q; enqueue k."""

from __future__ import annotations

import torch

from . import distributed as du
from .methods.base import Method
from .momentum import momentum_update


def train_step(method: Method, optimizer, views, *, m: float = 0.0, index=None, autocast=None, generator=None,
               skip_nonfinite: bool = False, net=None, health: bool = False) -> tuple[torch.Tensor, dict]:
    """views: the feed's batches (for MoCo x_q, x_k[, x_small]); index: their dataset indices.
    Returns (loss, logs): 0-dim tensors left on the device (no host sync here).
    net: `method` wrapped in DistributedDataParallel under torchrun (gradients averaged over ranks).
    skip_nonfinite: a NaN/Inf loss on any rank changes nothing (costs one host sync a step).
    health: adds the method's health figures (mocolab.health) to the logs, as its state was for
    this step's loss (before after_step)."""
    if method.cudagraphs:  # run.compile_mode with CUDA graphs: the last step's graph outputs may be reused
        torch.compiler.cudagraph_mark_step_begin()
    if skip_nonfinite:  # BN running statistics, restored if the step is skipped
        bn = method.norm_buffers()
        saved = [b.clone() for b in bn]
    with autocast if autocast is not None else torch.autocast("cpu", enabled=False):
        loss, out = (net or method)(*views, index=index, generator=generator)
    if skip_nonfinite and du.all_reduce((~torch.isfinite(loss)).float(), "max"):
        torch._foreach_copy_(bn, saved)
        return torch.full_like(loss.detach(), float("nan")), {}  # skipped, on every rank alike
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()  # update(f_q)
    for online, target in method.momentum_pairs():
        momentum_update(online, target, m)  # f_k = m * f_k + (1 - m) * f_q
    logs = {**out.get("logs", {}), **(method.health(out) if health else {})}
    method.after_step(out)  # MoCo: enqueue the newest keys, dequeue the oldest; bank: update entries
    return loss.detach(), logs
