"""One MoCo training step, in the order of the paper's Algorithm 1."""

from __future__ import annotations

import torch

from . import distributed as du
from .models.moco import MoCo
from .momentum import momentum_update


def moco_step(model: MoCo, optimizer, x_q, x_k, *, m: float, T: float, symmetric: bool = False,
              autocast=None, generator=None, skip_nonfinite: bool = False, net=None, x_small=None) -> torch.Tensor:
    """Algorithm 1: loss on (q, k, queue); SGD on f_q; f_k <- m f_k + (1-m) f_q; enqueue k.
    Returns the loss (a 0-dim tensor, left on the device: no host sync here).
    net: `model` wrapped in DistributedDataParallel under torchrun (gradients averaged over ranks).
    x_small: multi-crop's extra small query views (see MoCo.forward), or None.
    skip_nonfinite: a NaN/Inf loss on any rank changes nothing (costs one host sync a step)."""
    if model.cudagraphs:  # run.compile_mode with CUDA graphs: the last step's graph outputs may be reused
        torch.compiler.cudagraph_mark_step_begin()
    if skip_nonfinite:  # BN running statistics, restored if the step is skipped
        bn = [b for enc in (model.encoder_q, model.encoder_k, model.predictor) if enc is not None for b in enc.buffers()]
        saved = [b.clone() for b in bn]
    with autocast if autocast is not None else torch.autocast("cpu", enabled=False):
        loss, k = (net or model)(x_q, x_k, T=T, symmetric=symmetric, generator=generator, x_small=x_small)  # k: N x C
    if skip_nonfinite and du.all_reduce((~torch.isfinite(loss)).float(), "max"):
        torch._foreach_copy_(bn, saved)
        return torch.full_like(loss.detach(), float("nan"))  # skipped, on every rank alike
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()  # update(f_q)
    momentum_update(model.encoder_q, model.encoder_k, m)  # f_k = m * f_k + (1 - m) * f_q
    model.queue.enqueue(du.all_gather(k))  # enqueue the newest keys of all ranks, dequeue the oldest
    return loss.detach()
