"""Training-step time of the CIFAR-size ViTs against cifar10_cpu's ResNet-10 (width 16), side by side:
each row is a backbone's forward + backward + SGD step on a batch of 32 x 32 images; rounds alternate
the rows and each figure is the median over rounds, so a noisy machine slows every row alike.
Prints seconds a step and the ratio to the ResNet (the ViT presets' speed claims come from here).

  python benchmarks/vit_step.py --threads 1 --batch-size 64 --rounds 5
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from mocolab.models.backbones import build_backbone  # noqa: E402
from mocolab.models.vit import build_vit  # noqa: E402


def step_time(net: torch.nn.Module, x: torch.Tensor, steps: int) -> float:
    """Seconds per step (mean over `steps`) of forward + backward + SGD on x (B x 3 x 32 x 32)."""
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.01)
    t0 = time.perf_counter()
    for _ in range(steps):
        net(x).float().pow(2).mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return (time.perf_counter() - t0) / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=2, help="steps per row and round")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    x = torch.randn(a.batch_size, 3, 32, 32)
    rows = {"resnet10 w16 (cifar10_cpu)": build_backbone("resnet10", 16, "cifar")[0],
            "vit_tiny_patch4 (ViT-Ti/4)": build_vit("vit_tiny_patch4", 32)[0],
            "vit_mini_patch4 (cifar10_vit_cpu)": build_vit("vit_mini_patch4", 32)[0]}
    for net in rows.values():  # warm-up
        step_time(net, x, 1)
    times = {k: [] for k in rows}
    for _ in range(a.rounds):
        for k, net in rows.items():
            times[k].append(step_time(net, x, a.steps))
    base = statistics.median(times["resnet10 w16 (cifar10_cpu)"])
    print(f"batch {a.batch_size}, {a.threads} thread(s), median of {a.rounds} rounds x {a.steps} steps")
    print("| backbone | s / step | vs ResNet-10 |\n| --- | ---: | ---: |")
    for k, ts in times.items():
        m = statistics.median(ts)
        print(f"| {k} | {m:.3f} | {m / base:.1f}x |")


if __name__ == "__main__":
    main()
