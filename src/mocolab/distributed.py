"""torch.distributed helpers that fall back to rank 0 / world size 1, so the same code runs on
one CPU and under `torchrun` on many GPUs and nodes.

Under torchrun (WORLD_SIZE > 1 in the environment) `setup` joins the process group: NCCL on
CUDA, gloo on CPU. Everything else here is a no-op or the identity on one process.
"""

from __future__ import annotations

import inspect
import os
from contextlib import contextmanager

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


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup(device: torch.device) -> torch.device:
    """Joins the process group when launched by torchrun; returns this rank's device
    (cuda:LOCAL_RANK on GPUs)."""
    if not launched_by_torchrun() or is_dist():
        return device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def cleanup() -> None:
    if is_dist():
        dist.destroy_process_group()


def barrier() -> None:
    if is_dist():
        dist.barrier()


@contextmanager
def main_first():
    """Rank 0 runs the block first (for example decoding into a shared cache), then the others."""
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()


@torch.no_grad()
def all_gather(x: torch.Tensor) -> torch.Tensor:
    """Concatenates x (same shape on every rank) over ranks in rank order: (W*N) x ...; no gradient."""
    if not is_dist():
        return x
    out = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(out, x.contiguous())
    return torch.cat(out)


def all_gather_grad(x: torch.Tensor) -> torch.Tensor:
    """all_gather that carries gradients back to every rank's x (end-to-end's keys): (W*N) x ...
    The backward sums each rank's gradient for x (torch.distributed.nn's reduce-scatter)."""
    if not is_dist():
        return x
    from torch.distributed.nn.functional import all_gather as gather_with_grad

    return torch.cat(gather_with_grad(x.contiguous()))


@torch.no_grad()
def all_gather_uneven(x: torch.Tensor) -> torch.Tensor:
    """Like all_gather, for a first dimension that differs between ranks."""
    if not is_dist():
        return x
    n = torch.tensor([x.shape[0]], device=x.device)
    sizes = all_gather(n).tolist()
    pad = torch.zeros((max(sizes) - x.shape[0], *x.shape[1:]), dtype=x.dtype, device=x.device)
    gathered = all_gather(torch.cat([x, pad]))
    return torch.cat([gathered[i * max(sizes):i * max(sizes) + s] for i, s in enumerate(sizes)])


def all_reduce(x: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """In place over ranks (sum | max | mean); returns x."""
    if is_dist():
        dist.all_reduce(x, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
        if op == "mean":
            x /= world_size()
    return x


def broadcast(x: torch.Tensor, src: int = 0) -> torch.Tensor:
    """In place from rank `src`; returns x."""
    if is_dist():
        dist.broadcast(x, src)
    return x


def ddp(model: torch.nn.Module, device_ids=None) -> torch.nn.Module:
    """DistributedDataParallel without a per-step broadcast of the buffers (the queue is
    identical on every rank already; BN statistics are broadcast before evaluations and saves)."""
    DDP = torch.nn.parallel.DistributedDataParallel
    no_sync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in inspect.signature(DDP.__init__).parameters
               else {"broadcast_buffers": False})  # the name changed in torch 2.14
    return DDP(model, device_ids=device_ids, **no_sync)


@torch.no_grad()
def broadcast_buffers(module: torch.nn.Module) -> None:
    """Rank 0's buffers (BN running statistics) to every rank, before an evaluation or a save."""
    if is_dist():
        for b in module.buffers():
            dist.broadcast(b, 0)


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A CPU tensor onto `device` without a host sync in the hot loop: on CUDA through pinned
    memory and a non-blocking copy (a plain .to() from pageable memory synchronises the stream,
    so the CPU could no longer queue kernels ahead of the GPU)."""
    if device.type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


@torch.no_grad()
def batch_shuffle(x: torch.Tensor, generator: torch.Generator | None = None):
    """Shuffle BN's shuffle. x: this rank's N x ... batch.
    One process: returns (x[perm], idx_unshuffle).
    Several: the W*N images of all ranks are gathered, permuted with rank 0's permutation
    (broadcast), and each rank takes its slice, so a key's BN group mixes samples of all ranks.
    batch_unshuffle(y, idx_unshuffle) puts outputs back in this rank's original order."""
    if not is_dist():
        perm = to_device(torch.randperm(x.shape[0], generator=generator), x.device)
        return x[perm], torch.argsort(perm)
    x_all = all_gather(x)  # (W*N) x ...
    perm = to_device(torch.randperm(x_all.shape[0], generator=generator), x.device)  # used on rank 0 only
    broadcast(perm, 0)
    idx_this = perm.view(world_size(), -1)[rank()]
    return x_all[idx_this], torch.argsort(perm)


@torch.no_grad()
def batch_unshuffle(y: torch.Tensor, idx_unshuffle: torch.Tensor) -> torch.Tensor:
    """Inverse of batch_shuffle for the encoder's outputs y (this rank's slice, N x ...)."""
    if not is_dist():
        return y[idx_unshuffle]
    y_all = all_gather(y)  # (W*N) x ..., in shuffled order
    return y_all[idx_unshuffle.view(world_size(), -1)[rank()]]

