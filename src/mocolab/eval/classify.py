"""One classifier training loop, shared by the linear protocol (frozen backbone), fine-tuning
and the supervised baseline: SGD, step or cosine schedule, warmup, optional time budget,
augmentation on cached uint8 batches, bf16 autocast, channels_last."""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ..augment import AugSpec, BatchAugment
from ..data import TensorData
from ..runtime import NonFiniteLoss, epoch_order
from ..schedules import StepBudget, lr_at
from .features import extract_features


def crop_flip(size: int, scale=(0.08, 1.0)) -> AugSpec:
    """Random-resized-crop + horizontal flip only (the linear protocol's training view)."""
    return AugSpec(size, scale=tuple(scale), p_jitter=0.0, p_gray=0.0, p_blur=0.0, p_flip=0.5)


@torch.no_grad()
def feature_dim_of(net: nn.Module, size: int) -> int:
    """Width of `net`'s pooled output, from one forward in eval mode (BN buffers untouched)."""
    was = net.training
    net.eval()
    p = next(net.parameters())
    d = net(torch.zeros(2, 3, size, size, device=p.device, dtype=p.dtype)).flatten(1).shape[1]
    net.train(was)
    return d


class Classifier(nn.Module):
    """backbone (pooled features N x D) -> linear layer (logits N x C). With frozen=True the
    backbone gets no gradient and its BN stays in eval mode, also under .train()."""

    def __init__(self, backbone: nn.Module, feature_dim: int, num_classes: int, frozen: bool = False):
        super().__init__()
        self.backbone, self.frozen = backbone, frozen
        self.fc = nn.Linear(feature_dim, num_classes)
        if frozen:
            backbone.requires_grad_(False)
            backbone.eval()

    def train(self, mode: bool = True):
        super().train(mode)
        if self.frozen:
            self.backbone.eval()  # BN running statistics must not move
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            f = self.backbone(x).flatten(1)  # N x D
        return self.fc(f)  # N x C


@dataclass
class FitConfig:
    epochs: int = 100
    batch_size: int = 256
    lr: float = 0.1  # the lr of the batch as given (no scaling here)
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "step"  # step | cosine
    milestones: list[float] = field(default_factory=lambda: [0.6, 0.8])  # fractions of the run
    warmup_epochs: float = 0.0
    budget_minutes: float = 0.0  # > 0: the schedule is fitted to this wall-clock budget
    seed: int = 0
    log_every: int = 20

    def to_dict(self) -> dict:
        return asdict(self)


def fit(model: nn.Module, groups: list[dict], train: TensorData, aug: BatchAugment, fc: FitConfig,
        device: torch.device, autocast_dtype: torch.dtype | None = None, logger=None, desc: str = "train") -> dict:
    """Trains `model` with cross-entropy on `train` (uint8 images, labels).
    groups: [{"params": [...], "lr_scale": s}, ...]: each group's lr is s x the schedule's lr.
    logger: optional callable(record dict). Returns {"steps", "epochs", "images", "train_seconds",
    "history": [log records]}."""
    n = len(train)
    B = min(fc.batch_size, n)
    if B < fc.batch_size and B >= 16:
        B = B // 16 * 16  # oneDNN's bf16 kernels are several times slower on odd batch sizes
    steps_per_epoch = n // B
    warmup = round(fc.warmup_epochs * steps_per_epoch)
    total = steps_per_epoch * fc.epochs
    budget_s = fc.budget_minutes * 60.0
    if budget_s > 0:
        total = 10**9  # set from the measured step time after a few steps
    opt = torch.optim.SGD([{"params": g["params"], "lr_scale": g.get("lr_scale", 1.0)} for g in groups],
                          lr=fc.lr, momentum=fc.momentum, weight_decay=fc.weight_decay)
    images = train.images.to(device) if device.type == "cuda" else train.images
    labels = train.labels.to(device)
    gen = torch.Generator().manual_seed(fc.seed + 1)
    autocast = {"device_type": device.type, "dtype": autocast_dtype or torch.bfloat16,
                "enabled": autocast_dtype is not None}
    step = epoch = 0
    elapsed = 0.0
    history: list[dict] = []
    loss_sum, n_log = torch.zeros((), device=device), 0
    t_log = time.perf_counter()
    budget = StepBudget(budget_s, start_step=0)
    model.train()
    bar = tqdm(total=None if budget_s > 0 else total, desc=desc, unit="step", mininterval=2.0, dynamic_ncols=True)

    def done() -> bool:
        return step >= total or budget.spent(elapsed)

    while not done():
        order = epoch_order(n, fc.seed, epoch).to(images.device)
        for it in range(steps_per_epoch):
            if done():
                break
            t0 = time.perf_counter()
            idx = order[it * B:(it + 1) * B]
            x = aug(images[idx].to(device, non_blocking=True), gen)  # B x 3 x S x S, normalised
            y = labels[idx.to(labels.device)]
            lr = lr_at(step, total, fc.lr, fc.schedule, fc.milestones, warmup)
            for g in opt.param_groups:
                g["lr"] = lr * g["lr_scale"]
            with torch.autocast(**autocast):
                logits = model(x)  # B x C
            loss = F.cross_entropy(logits.float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.detach()
            n_log += 1
            step += 1
            elapsed += time.perf_counter() - t0
            total = budget.total_steps(step, elapsed, elapsed) or total
            if n_log == fc.log_every or it == steps_per_epoch - 1 or done():
                mean_loss = (loss_sum / n_log).item()  # the only host sync, at log intervals
                if not math.isfinite(mean_loss):
                    raise NonFiniteLoss(f"loss became {mean_loss} at step {step}; try a lower lr")
                rec = {"step": step, "epoch": step / steps_per_epoch, "loss": mean_loss, "lr": lr,
                       "img_per_s": n_log * B / (time.perf_counter() - t_log)}
                history.append(rec)
                if logger is not None:
                    logger(rec)
                bar.set_postfix(ep=f"{rec['epoch']:.2f}", loss=f"{mean_loss:.3f}", lr=f"{lr:.3g}")
                bar.update(n_log)
                loss_sum.zero_()
                n_log, t_log = 0, time.perf_counter()
        epoch += 1
    bar.close()
    return {"steps": step, "epochs": step / steps_per_epoch, "images": step * B, "batch_size": B,
            "train_seconds": elapsed, "history": history}


@torch.no_grad()
def evaluate(model: nn.Module, data: TensorData, mean, std, size: int, device: torch.device,
             autocast_dtype: torch.dtype | None = None, channels_last: bool = False) -> dict:
    """Top-1 / top-5 (%) of `model` on the center crop of every image of `data`."""
    logits, y = extract_features(model, data, mean, std, device=device, size=size, channels_last=channels_last,
                                 autocast_dtype=autocast_dtype, normalize=False)  # N x C
    return topk_accuracy(logits, y)


def topk_accuracy(logits: torch.Tensor, y: torch.Tensor) -> dict:
    y = y.to(logits.device)
    k = min(5, logits.shape[1])
    top = logits.topk(k, dim=1).indices  # N x k
    return {"top1": 100.0 * (top[:, 0] == y).float().mean().item(),
            "top5": 100.0 * (top == y[:, None]).any(1).float().mean().item()}
