"""One classifier training loop, shared by the linear protocol (frozen backbone), fine-tuning
and the supervised baseline: SGD, step or cosine schedule, warmup, optional time budget,
augmentation on cached uint8 batches, bf16 autocast, channels_last."""

from __future__ import annotations

import copy
import json
import logging
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .. import distributed as du
from ..augment import AugSpec, BatchAugment
from ..checkpoint import latest_checkpoint, safe_load
from ..config import LoopConfig, OptimConfig, RunConfig
from ..data import CenterCropFiles, FileList, TensorData, cache_size_for, collate_skip_none, ignore_signals
from ..methods.base import Method
from ..runfiles import read_json, write_json
from .features import extract_features

log = logging.getLogger("mocolab")


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


class Classification(Method):
    """Cross-entropy training of a classifier as a method of the engine (supervised baseline,
    linear protocol, fine-tuning). groups: SGD parameter groups, each with an "lr_scale"."""

    def __init__(self, model: nn.Module, groups: list[dict]):
        super().__init__()
        self.encoder_q = model
        self.groups = [{"params": list(g["params"]), "lr_scale": g.get("lr_scale", 1.0)} for g in groups]

    def learnable_params(self) -> list[dict]:
        return self.groups

    def forward(self, x: torch.Tensor, y: torch.Tensor, *, index=None, generator=None):
        logits = self.encoder_q(x)  # B x C
        top1 = (logits.detach().argmax(1) == y).float().mean() * 100
        return F.cross_entropy(logits.float(), y), {"logs": {"train_top1": top1}}


class LabeledFeed:
    """Augmented, labeled batches from cached uint8 images: ((x B x 3 x S x S, y B), index).
    `generator` is the Trainer's, seeded per step (exact resume)."""

    def __init__(self, data: TensorData, aug: BatchAugment, batch: int, device: torch.device):
        self.images = data.images.to(device) if device.type == "cuda" else data.images
        self.labels = data.labels.to(device)
        self.aug = aug
        self.batch = batch
        self.device = device
        self.generator: torch.Generator | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def batches(self, order: torch.Tensor, start: int, epoch: int):
        B = self.batch
        for it in range(start, len(self) // B):
            # no host sync on CUDA
            idx = du.to_device(order[it * B:(it + 1) * B], self.images.device)
            x = self.aug(self.images[idx].to(self.device, non_blocking=True), self.generator)  # normalised
            yield (x, self.labels[idx.to(self.labels.device)]), None


class FileFeed(LabeledFeed):
    """LabeledFeed's batches streamed from files: each batch of the epoch's order is decoded and
    resized (shorter side to cache_size_for(S), center crop: the uint8 cache's pixels) in `workers`
    DataLoader workers, pinned for CUDA, then augmented on the device by the same BatchAugment, drawing
    from the step-seeded generator: the same views as from the in-memory split, exact resume, with
    one batch in memory instead of the split. A batch loses its unreadable files (a warning each)."""

    def __init__(self, files: FileList, aug: BatchAugment, batch: int, device: torch.device, workers: int = 2):
        self.files = files
        self.aug = aug
        self.batch = batch
        self.device = device
        self.workers = workers
        self.labels = torch.as_tensor(files.labels)
        self.generator: torch.Generator | None = None

    def batches(self, order: torch.Tensor, start: int, epoch: int):
        B, size = self.batch, cache_size_for(self.aug.spec.size)
        plan = [order[it * B:(it + 1) * B].tolist() for it in range(start, len(self) // B)]  # steps' indices
        loader = torch.utils.data.DataLoader(CenterCropFiles(self.files, size, size), batch_sampler=plan,
                                             num_workers=self.workers, collate_fn=collate_skip_none,
                                             pin_memory=self.device.type == "cuda",
                                             worker_init_fn=ignore_signals if self.workers else None)
        for b in loader:
            if b is None:  # every file of the batch was unreadable
                continue
            x, y = b  # B x 3 x R x R uint8, B
            yield (self.aug(x.to(self.device, non_blocking=True), self.generator), y.to(self.device)), None


def loop_config(fc: FitConfig, batch_size: int) -> LoopConfig:
    """FitConfig -> the engine's optim/run settings (fc.lr is the lr of the batch as given)."""
    optim = OptimConfig(batch_size=batch_size, lr=fc.lr, base_batch_size=batch_size, momentum=fc.momentum,
                        weight_decay=fc.weight_decay, schedule=fc.schedule, milestones=list(fc.milestones),
                        warmup_epochs=fc.warmup_epochs)
    run = RunConfig(epochs=fc.epochs, budget_minutes=fc.budget_minutes, seed=fc.seed, log_every=fc.log_every,
                    amp="off", channels_last=False, knn_every=0, save_every=1, keep_checkpoints=1)
    return LoopConfig(optim, run)


def fit(model: nn.Module, groups: list[dict], train: TensorData | FileList, aug: BatchAugment, fc: FitConfig,
        device: torch.device, autocast_dtype: torch.dtype | None = None, logger=None, desc: str = "train",
        out: Path | None = None, resume: bool = True, cfg=None, settings: dict | None = None,
        workers: int = 2) -> dict:
    """Trains `model` with cross-entropy on `train` (uint8 images, labels; or files, streamed through
    `workers` DataLoader workers: FileFeed) on the engine: the
    budget, SIGTERM (checkpoint + exit 75), NaN checks and, with `out`, checkpoints in
    out/checkpoints (resumed when `resume` and they were made with these `settings`, a JSON-able
    dict naming the weights and data, kept in out/settings.json, and this cfg).
    groups: [{"params": [...], "lr_scale": s}, ...]: each group's lr is s x the schedule's lr.
    logger: optional callable(log record). cfg: the engine's settings when the caller has them (the
    supervised baseline's Config, saved in its checkpoints); default: from fc.
    Returns {"steps", "epochs", "images", "batch_size", "train_seconds", "first_loss", "final_loss",
    "history": [this call's log records]}."""
    from ..engine import Trainer

    n = len(train)
    B = min(fc.batch_size, n)
    if B < fc.batch_size and B >= 16:
        # oneDNN's bf16 kernels are several times slower on odd batch sizes
        B = B // 16 * 16
    # the caller's config, with the batch the data allows
    if cfg is not None and cfg.optim.batch_size != B:
        cfg = copy.deepcopy(cfg)
        cfg.optim.batch_size = B
    cfg = cfg or loop_config(fc, B)
    if out is not None:
        Path(out).mkdir(parents=True, exist_ok=True)
    method = Classification(model, groups)
    feed = (FileFeed(train, aug, B, device, workers) if isinstance(train, FileList)
            else LabeledFeed(train, aug, B, device))
    trainer = Trainer(cfg, method, None, device, out, autocast_dtype, feed=feed)
    if out is not None:
        marker = Path(out) / "settings.json"
        same = marker.is_file() and read_json(marker) == json.loads(json.dumps(settings or {}))
        path = latest_checkpoint(Path(out)) if resume and same else None
        # a fresh start: the checkpoints of another run must never be resumed
        if path is None:
            shutil.rmtree(Path(out) / "checkpoints", ignore_errors=True)
        state = safe_load(path) if path is not None else None
        if state is not None and state.get("config") == cfg.to_dict():
            log.info("%s: continuing from %s", desc, path)
            trainer.load_state_dict(state)
        elif path is not None:
            log.info("%s: %s holds other settings; starting afresh", desc, path)
        write_json(marker, settings or {})
    trainer.on_log = logger
    # fits, writes final.pth (with `out`), closes the logs; Preempted (checkpoint written) on SIGTERM
    p = trainer.run()
    loss = {k: (rec or {}).get("loss", float("nan")) for k, rec in
            (("first_loss", trainer.first_log), ("final_loss", trainer.last_log))}
    return {"steps": p.step, "epochs": p.step / trainer.steps_per_epoch, "images": p.images, "batch_size": B,
            "train_seconds": p.train_seconds, **loss, "history": trainer.records}


@torch.no_grad()
def evaluate(model: nn.Module, data: TensorData | FileList, mean, std, size: int, device: torch.device,
             autocast_dtype: torch.dtype | None = None, channels_last: bool = False, workers: int = 2) -> dict:
    """Top-1 / top-5 (%) of `model` on the center crop of every image of `data` (files: decoded in
    `workers` DataLoader workers; only the logits N x C are kept)."""
    logits, y = extract_features(model, data, mean, std, device=device, size=size, channels_last=channels_last,
                                 autocast_dtype=autocast_dtype, normalize=False, workers=workers)  # N x C
    return topk_accuracy(logits, y)


def topk_accuracy(logits: torch.Tensor, y: torch.Tensor) -> dict:
    y = y.to(logits.device)
    k = min(5, logits.shape[1])
    top = logits.topk(k, dim=1).indices  # N x k
    return {"top1": 100.0 * (top[:, 0] == y).float().mean().item(),
            "top5": 100.0 * (top == y[:, None]).any(1).float().mean().item()}
