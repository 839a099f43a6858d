"""Linear classification on frozen features, in two modes.

- cached: features extracted once (center crop, no augmentation), standardised, then a
  multinomial logistic regression fitted by full-batch L-BFGS; its L2 strength is picked on a
  held-out 10% of the train split. Reported as "linear (cached features)".
- paper: the MoCo protocol. The frozen backbone (no gradient, BN in eval mode) sees random-
  resized-crop + flip views; SGD lr 30, momentum 0.9, wd 0, 100 epochs, lr x0.1 at 60 and 80,
  batch 256; top-1 on the center crop. Reported as "linear (paper protocol)". As the official
  main_lincls.py: the linear layer starts from N(0, 0.01) weights and zero bias, and the frozen
  backbone's state (weights and BN running statistics) is checked unchanged after training.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..augment import BatchAugment
from .classify import Classifier, FitConfig, crop_flip, evaluate, feature_dim_of, fit
from .store import FeatureStore

CACHED = "linear (cached features)"
PAPER = "linear (paper protocol)"
WD_GRID = (1e-2, 1e-3, 1e-4, 1e-5, 1e-6)


@dataclass
class LinearProbe:
    mean: torch.Tensor  # D
    std: torch.Tensor  # D
    weight: torch.Tensor  # C x D
    bias: torch.Tensor  # C

    def logits(self, f: torch.Tensor) -> torch.Tensor:
        return ((f - self.mean) / self.std) @ self.weight.t() + self.bias  # N x C


def linear_cached(f_train, y_train, f_test, y_test, num_classes: int, *, weight_decay: float | None = None,
                  max_iter: int = 300, seed: int = 0) -> dict:
    """Fits on the train features, scores on the test features (in memory, one chunk each) ->
    {top1, top5, train_top1, weight_decay, ...}."""
    return linear_cached_store(FeatureStore.from_tensor(f_train, y_train), FeatureStore.from_tensor(f_test, y_test),
                               num_classes, weight_decay=weight_decay, max_iter=max_iter, seed=seed,
                               chunk=max(1, len(f_train), len(f_test)), device=f_train.device)


def paper_defaults() -> FitConfig:
    return FitConfig(epochs=100, batch_size=256, lr=30.0, momentum=0.9, weight_decay=0.0, schedule="step",
                     milestones=[0.6, 0.8])


def paper_classifier(net: nn.Module, feature_dim: int, num_classes: int) -> Classifier:
    """The frozen `net` and a linear layer initialised as the official main_lincls.py: weights
    N(0, 0.01), bias 0 (from torch's global RNG)."""
    model = Classifier(net, feature_dim, num_classes, frozen=True)
    nn.init.normal_(model.fc.weight, mean=0.0, std=0.01)  # C x D
    nn.init.zeros_(model.fc.bias)
    return model


def check_unchanged(before: dict, after: dict) -> None:
    """The official sanity_check: the frozen backbone's state_dict (weights, BN running
    statistics) after the linear training equals its copy from before; a RuntimeError names
    what moved (that would be a bug: the protocol's figure would not be of these weights)."""
    moved = [k for k, v in before.items() if k not in after or not torch.equal(v, after[k].to(v.device))]
    if moved:
        raise RuntimeError(f"the frozen backbone changed during the linear protocol's training ({len(moved)} of "
                           f"{len(before)} tensors, first {moved[0]}): its result would not score these weights")


def linear_paper(net: nn.Module, train, test, mean, std, size: int, fc: FitConfig, device: torch.device,
                 autocast_dtype=None, channels_last: bool = False, crop_scale=(0.08, 1.0), out=None,
                 settings: dict | None = None, workers: int = 2) -> dict:
    """The paper's linear protocol on a frozen `net` (pooled features N x D). out: a folder for
    the loop's checkpoints (resumed when made with the same `settings`), or None.
    train, test: TensorData, or FileLists streamed through `workers` DataLoader workers."""
    num_classes = len(train.classes) or int(max(train.labels)) + 1
    model = paper_classifier(net, feature_dim_of(net, size), num_classes).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    # the backbone's weights before the fit, for check_unchanged
    before = {k: v.detach().clone() for k, v in model.backbone.state_dict().items()}
    aug = BatchAugment(crop_flip(size, crop_scale), mean, std, channels_last)
    stats = fit(model, [{"params": model.fc.parameters()}], train, aug, fc, device, autocast_dtype, desc="linear",
                out=out, settings=settings, workers=workers)
    check_unchanged(before, model.backbone.state_dict())
    res = evaluate(model, test, mean, std, size, device, autocast_dtype, channels_last, workers)
    return {**res, **{k: v for k, v in stats.items() if k != "history"}}


def _standardisation(store: FeatureStore, chunk: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean and standard deviation (unbiased, as Tensor.std) of the store's rows, D each, by two
    passes over its chunks in float64."""
    total = torch.zeros(store.dim, dtype=torch.float64, device=device)
    for _, f in store.chunks(chunk, device):
        total += f.double().sum(0)
    mean = total / len(store)
    sq = torch.zeros_like(total)
    for _, f in store.chunks(chunk, device):
        sq += (f.double() - mean).pow(2).sum(0)
    std = (sq / max(1, len(store) - 1)).sqrt()
    return mean.float(), std.float().clamp_min(1e-6)


def _lbfgs_store(store: FeatureStore, rows: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, num_classes: int,
                 wd: float, max_iter: int, chunk: int, device,
                 init: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Minimises mean CE + wd/2 |W|^2 over (W: C x D, b: C) on the store's rows where `rows` (N bool)
    is set, standardised chunk by chunk: the loss and its gradient are sums over chunks (one pass
    over the store per evaluation; one chunk when the features are in memory)."""
    W = torch.zeros(num_classes, store.dim, device=device) if init is None else init[0].clone()
    b = torch.zeros(num_classes, device=device) if init is None else init[1].clone()
    W.requires_grad_(True)
    b.requires_grad_(True)
    n = int(rows.sum())
    y_all = store.labels.to(device)
    opt = torch.optim.LBFGS([W, b], lr=1.0, max_iter=max_iter, history_size=20, tolerance_grad=1e-6,
                            tolerance_change=1e-9, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        total = torch.zeros((), device=device)
        for lo, f in store.chunks(chunk, device):
            keep = rows[lo:lo + len(f)]
            x = (f[keep] - mean) / std  # n_chunk x D, standardised
            part = F.cross_entropy(x @ W.t() + b, y_all[lo:lo + len(f)][keep], reduction="sum") / n
            part.backward()  # the gradient accumulates over the chunks
            total += part.detach()
        reg = 0.5 * wd * W.pow(2).sum()
        reg.backward()
        return total + reg.detach()

    with torch.enable_grad():
        opt.step(closure)
    return W.detach(), b.detach()


@torch.no_grad()
def _top1_store(probe: LinearProbe, store: FeatureStore, rows: torch.Tensor | None, chunk: int, device) -> float:
    """Top-1 (%) of the probe on the store's rows (where `rows` is set; None: all)."""
    hit = total = 0
    y_all = store.labels.to(device)
    for lo, f in store.chunks(chunk, device):
        keep = slice(None) if rows is None else rows[lo:lo + len(f)]
        pred = probe.logits(f[keep]).argmax(1)
        hit += int(pred.eq(y_all[lo:lo + len(f)][keep]).sum())
        total += len(pred)
    return 100.0 * hit / max(1, total)


def fit_linear_store(store: FeatureStore, num_classes: int, *, weight_decay: float | None = None,
                     max_iter: int = 300, seed: int = 0, chunk: int = 65536,
                     device: torch.device | str = "cpu") -> tuple[LinearProbe, dict]:
    """The cached probe's fit on a FeatureStore read chunk by chunk: standardised features, L2
    strength picked from WD_GRID on a seeded, held-out 10% (strongest first, each fit warm-starting
    the next; ties go to the stronger), then refitted on all rows. Other chunk sizes sum in
    another order, so they agree up to float rounding."""
    device = torch.device(device)
    mean, std = _standardisation(store, chunk, device)
    info: dict = {"optimizer": "L-BFGS (full batch, strong Wolfe)", "max_iter": max_iter, "standardised": True}
    if weight_decay is None:
        g = torch.Generator().manual_seed(seed)
        perm = torch.randperm(len(store), generator=g)
        n_val = max(1, len(store) // 10)
        val = torch.zeros(len(store), dtype=torch.bool, device=device)
        val[perm[:n_val].to(device)] = True
        scores, init = {}, None
        for wd in WD_GRID:  # strongest first; each fit warm-starts the next
            init = _lbfgs_store(store, ~val, mean, std, num_classes, wd, max_iter, chunk, device, init)
            scores[wd] = _top1_store(LinearProbe(mean, std, *init), store, val, chunk, device)
        weight_decay = max(WD_GRID, key=lambda wd: (scores[wd], wd))  # ties: the stronger wd
        info["val_top1"] = {f"{wd:g}": s for wd, s in scores.items()}
    everything = torch.ones(len(store), dtype=torch.bool, device=device)
    W, b = _lbfgs_store(store, everything, mean, std, num_classes, weight_decay, max_iter, chunk, device)
    info["weight_decay"] = weight_decay
    return LinearProbe(mean, std, W, b), info


def linear_cached_store(train: FeatureStore, test: FeatureStore, num_classes: int, *,
                        weight_decay: float | None = None, max_iter: int = 300, seed: int = 0, chunk: int = 65536,
                        device: torch.device | str = "cpu") -> dict:
    """The cached probe on FeatureStores (fit_linear_store); top-1 and top-5 (%) of the test store."""
    t0 = time.perf_counter()
    probe, info = fit_linear_store(train, num_classes, weight_decay=weight_decay, max_iter=max_iter, seed=seed,
                                   chunk=chunk, device=device)
    hit1 = hit5 = 0
    with torch.no_grad():
        for lo, f in test.chunks(chunk, device):
            top = probe.logits(f).topk(min(5, num_classes), dim=1).indices  # n x 5
            hit = top == test.labels[lo:lo + len(f)].to(device)[:, None]
            hit1, hit5 = hit1 + int(hit[:, 0].sum()), hit5 + int(hit.any(1).sum())
    res = {"top1": 100.0 * hit1 / max(1, len(test)), "top5": 100.0 * hit5 / max(1, len(test)),
           "train_top1": _top1_store(probe, train, None, chunk, device)}
    return {**res, **info, "fit_seconds": time.perf_counter() - t0}
