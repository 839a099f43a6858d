"""Semi-supervised fine-tuning: the whole network (backbone + a new linear layer) trained on a
class-balanced, seeded fraction of the train labels; top-1 on the full test split."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..augment import BatchAugment
from .classify import Classifier, FitConfig, crop_flip, evaluate, feature_dim_of, fit
from .subsets import label_subset, subset

TARGET_STEPS = 1000  # the default epoch count aims at about this many steps, whatever the fraction
MAX_EPOCHS = 100


def protocol_name(fraction: float) -> str:
    return f"fine-tune {fraction * 100:g}% labels"


def default_batch_size(n: int) -> int:
    """Small subsets get small batches, so that an epoch is several steps."""
    return 64 if n < 2000 else 128 if n < 20000 else 256


def finetune_defaults(n: int, batch_size: int | None = None, epochs: int | None = None) -> FitConfig:
    """SGD momentum 0.9, lr 0.05 x batch/256 with cosine decay, wd 5e-4 (the usual short
    fine-tuning recipe); epochs so that ~TARGET_STEPS steps are run (1% of CIFAR-10: 100
    epochs of 7 steps; 10%: 26 epochs of 39 steps; 100%: 5 epochs of 195 steps)."""
    B = batch_size or default_batch_size(n)
    steps_per_epoch = max(1, n // min(B, n))
    epochs = epochs or max(1, min(MAX_EPOCHS, math.ceil(TARGET_STEPS / steps_per_epoch)))
    return FitConfig(epochs=epochs, batch_size=B, lr=0.05 * B / 256, momentum=0.9, weight_decay=5e-4,
                     schedule="cosine", warmup_epochs=0.0)


def finetune(net: nn.Module, train, test, fraction: float, mean, std, size: int, fc: FitConfig | None,
             device: torch.device, autocast_dtype=None, channels_last: bool = False,
             backbone_lr_scale: float = 1.0, crop_scale=(0.2, 1.0), seed: int = 0, out=None,
             settings: dict | None = None, workers: int = 2) -> dict:
    """Fine-tunes `net` (modified in place) on label_subset(train, fraction, seed) ->
    {top1, top5 on the whole test split, subset size, steps, ...}. fc=None: finetune_defaults.
    out: a folder for the loop's checkpoints (resumed when made with the same `settings`).
    train, test: TensorData, or FileLists streamed through `workers` DataLoader workers."""
    idx = label_subset(train.labels, fraction, seed)
    labeled = subset(train, idx)
    fc = fc or finetune_defaults(len(labeled))
    fc.seed = seed
    num_classes = len(train.classes) or int(max(train.labels)) + 1
    torch.manual_seed(seed)  # the new layer's init
    model = Classifier(net, feature_dim_of(net, size), num_classes, frozen=False).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    aug = BatchAugment(crop_flip(size, crop_scale), mean, std, channels_last)
    groups = [{"params": model.backbone.parameters(), "lr_scale": backbone_lr_scale},
              {"params": model.fc.parameters()}]
    stats = fit(model, groups, labeled, aug, fc, device, autocast_dtype, desc=f"finetune {fraction:g}", out=out,
                settings=settings, workers=workers)
    res = evaluate(model, test, mean, std, size, device, autocast_dtype, channels_last, workers)
    return {**res, "labeled_images": len(labeled), "fit": fc.to_dict(),
            **{k: v for k, v in stats.items() if k != "history"}}
