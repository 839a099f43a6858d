"""SplitBatchNorm implementations, side by side: one MoCo-sized forward+backward of a
width-16 CIFAR ResNet-18 (batch 256, 32 px), rows alternating within one process.

  plain     nn.BatchNorm2d (no splits): the floor
  chunked   mocolab's SplitBatchNorm on a CPU: native BN kernel on each contiguous chunk, then cat
  folded    mocolab's SplitBatchNorm off the CPU: contiguous groups folded into channels,
            n x (S C) x H x W, one BN call between two copies
  reshape   the official demo's trick: view as (N/S, C*S, H, W) (a copy in channels_last;
            interleaved groups)
  autograd  statistics from composed autograd ops (var_mean, sub, mul)

Besides ms per step, each row counts the aten ops that compute in one forward + backward
(TorchDispatchMode, below autograd; views and allocations left out): on a GPU each is about
one kernel launch, the cost of a small step, so the count stands in for the GPU's launch
overhead on a machine without one.

  python benchmarks/splitbn.py [--splits 8] [--amp bf16|off] [--channels-last 1|0]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from mocolab.models.backbones import build_backbone  # noqa: E402
from mocolab.models.splitbn import SplitBatchNorm  # noqa: E402


class ReshapeSplitBN(SplitBatchNorm):
    def forward(self, x):
        if not self.training:
            return super().forward(x)
        N, C, H, W = x.shape
        S = self.splits
        cl = not x.is_contiguous()
        xc = x.contiguous()
        y = F.batch_norm(xc.view(N // S, C * S, H, W), self.running_mean.repeat(S), self.running_var.repeat(S),
                         self.weight.repeat(S), self.bias.repeat(S), True, self.momentum, self.eps).view(N, C, H, W)
        return y.contiguous(memory_format=torch.channels_last) if cl else y


class AutogradSplitBN(SplitBatchNorm):
    def forward(self, x):
        if not self.training:
            return super().forward(x)
        xs = x.view(self.splits, -1, *x.shape[1:]).float()
        var, mean = torch.var_mean(xs, dim=(1, 3, 4), correction=0, keepdim=True)
        y = ((xs - mean) * torch.rsqrt(var + self.eps) * self.weight.view(1, 1, -1, 1, 1)
             + self.bias.view(1, 1, -1, 1, 1))
        return y.view_as(x).to(x.dtype)


class OpCounter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.n = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if not (func.is_view or "view" in name or name.startswith("empty") or name == "detach"):
            self.n += 1  # ops that compute (views and allocations launch no kernel)
        return func(*args, **(kwargs or {}))


def build(kind: str, splits: int, cl: bool):
    net, _ = build_backbone("resnet18", 16, "cifar", bn_splits=1)
    cls = {"chunked": SplitBatchNorm, "folded": SplitBatchNorm, "reshape": ReshapeSplitBN,
           "autograd": AutogradSplitBN}.get(kind)
    if cls is not None:  # swap every BatchNorm2d for the split variant
        for _name, mod in list(net.named_modules()):
            for child_name, child in list(mod.named_children()):
                if type(child) is nn.BatchNorm2d:
                    setattr(mod, child_name, cls(child.num_features, splits))
                    getattr(mod, child_name).fold = kind == "folded"
    return net.to(memory_format=torch.channels_last) if cl else net


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--splits", type=int, default=8)
    ap.add_argument("--amp", default="bf16")
    ap.add_argument("--channels-last", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=3)
    args = ap.parse_args()
    cl = bool(args.channels_last)
    x = torch.randn(args.batch_size, 3, 32, 32)
    if cl:
        x = x.contiguous(memory_format=torch.channels_last)
    rows = {k: build(k, args.splits, cl) for k in ("plain", "chunked", "folded", "reshape", "autograd")}
    times = {k: [] for k in rows}

    def step(net):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.amp == "bf16"):
            y = net(x)
        y.float().square().mean().backward()

    ops = {}
    for k, net in rows.items():
        step(net)
        with OpCounter() as counter:
            step(net)
        ops[k] = counter.n
    for _ in range(args.rounds):
        for k, net in rows.items():
            t0 = time.perf_counter()
            for _ in range(args.steps):
                step(net)
            times[k].append((time.perf_counter() - t0) / args.steps)
    base = statistics.median(times["plain"])
    print(f"R18-w16, batch {args.batch_size}, splits {args.splits}, amp {args.amp}, channels_last {cl}, "
          f"torch {torch.__version__}")
    for k, v in times.items():
        m = statistics.median(v)
        print(f"{k:9s} {m * 1000:7.1f} ms/step  {args.batch_size / m:6.0f} img/s  x{m / base:.2f} of plain  "
              f"{ops[k]:5d} computing aten ops per forward + backward")


if __name__ == "__main__":
    main()
