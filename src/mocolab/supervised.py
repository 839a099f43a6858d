"""`mocolab supervised`: the supervised baseline. The preset's backbone trained with
cross-entropy on the labeled train split, with the preset's augmentation (the same family as
MoCo's views) and the same kind of budget.

RUN_DIR ends with config.yaml, metrics.jsonl, tb/, checkpoints/final.pth, backbone.pth (+ .json,
the same format as pretraining's export) and summary.json.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from .augment import BatchAugment, preset
from .checkpoint import atomic_save
from .config import Config, build_config, save_yaml
from .data import DataError, cache_size_for, load_splits
from .eval.classify import Classifier, FitConfig, evaluate, fit
from .models.backbones import build_backbone, resolve_stem
from .runfiles import write_json
from .runtime import check_out_dir, resolve_amp, resolve_device, seed_everything

log = logging.getLogger("mocolab")

# MoCo's lr (0.03 at batch 256 in cifar10_cpu) is tuned for the contrastive loss; cross-entropy
# training of a ResNet uses 0.1 at batch 256 (He et al. 2016; the standard CIFAR/ImageNet
# recipes), scaled linearly with the batch. The other optimiser settings are the preset's.
SUPERVISED_LR = 0.1


def supervised_config(preset_name: str, overrides: list[str], lr: float | None = None) -> Config:
    """The preset with `overrides`; optim.lr becomes the supervised lr (`lr`, else an
    optim.lr=/lr= override, else SUPERVISED_LR), saved as such in the run's config.yaml."""
    cfg = build_config(preset_name, overrides)
    given = any(item.partition("=")[0].strip() in ("optim.lr", "lr") for item in overrides)
    if lr is not None:
        cfg.optim.lr = lr
    elif not given:
        cfg.optim.lr = SUPERVISED_LR
    return cfg.validate()


def train_supervised(cfg: Config, data: str, out: str | Path, resume: bool = False) -> dict:
    """Trains the baseline into `out` (cfg.optim.lr is the supervised lr at base_batch_size) on
    the engine: checkpoints in out/checkpoints, continued when `resume` and their config is this
    one; SIGTERM writes one and exits 75."""
    out = Path(out)
    check_out_dir(out)
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    seed_everything(cfg.run.seed)
    device = resolve_device(cfg.run.device)
    dtype = resolve_amp(cfg.run.amp, device)
    size = cfg.data.image_size
    mean = cfg.data.mean
    std = cfg.data.std

    splits = load_splits(data, cache_size_for(size), limit=cfg.data.limit, workers=cfg.data.workers,
                         cache_dir=cfg.data.cache_dir)
    train, test = splits.train, splits.test
    if not train.classes or int(train.labels.min()) < 0:
        raise DataError(f"the supervised baseline needs a labeled train split (class folders) under {data}")
    save_yaml(cfg, out / "config.yaml")

    mc = cfg.model
    stem = resolve_stem(mc.stem, size)
    net, feat_dim = build_backbone(mc.arch, mc.width, stem, bn_splits=1)
    model = Classifier(net, feat_dim, len(train.classes)).to(device)
    if cfg.run.channels_last:
        model = model.to(memory_format=torch.channels_last)
    o = cfg.optim
    fc = FitConfig(epochs=cfg.run.epochs, batch_size=o.batch_size, lr=o.lr * o.batch_size / o.base_batch_size,
                   momentum=o.momentum, weight_decay=o.weight_decay, schedule=o.schedule,
                   milestones=list(o.milestones), warmup_epochs=o.warmup_epochs,
                   budget_minutes=cfg.run.budget_minutes, seed=cfg.run.seed, log_every=cfg.run.log_every)
    aug = BatchAugment(preset(cfg.data.augment, size, cfg.data.crop_scale), mean, std, cfg.run.channels_last)
    t0 = time.perf_counter()
    # metrics.jsonl, tb/, checkpoints/ (final.pth too), as a pretraining run has them
    stats = fit(model, [{"params": model.parameters()}], train, aug, fc, device, dtype, desc="supervised",
                out=out, resume=resume, cfg=cfg, settings={"data": str(Path(data).expanduser().resolve())})
    atomic_save({k: v.detach().cpu().clone() for k, v in net.state_dict().items()}, out / "backbone.pth")
    meta = {"arch": mc.arch, "width": mc.width, "stem": stem, "feature_dim": feat_dim, "image_size": size,
            "mean": mean, "std": std, "load_with": "mocolab.models.backbones.torchvision_model",
            "method": "supervised"}
    write_json(out / "backbone.json", meta)

    kw = {"device": device, "autocast_dtype": dtype, "channels_last": cfg.run.channels_last}
    summary = {
        "method": "supervised (cross-entropy)",
        "epochs": stats["epochs"],
        "steps": stats["steps"],
        "images_per_second": stats["images"] / max(stats["train_seconds"], 1e-9),
        "train_seconds": stats["train_seconds"],
        "lr": fc.lr,
        "first_loss": stats["first_loss"],
        "final_loss": stats["final_loss"],
        "train_top1": evaluate(model, train, mean, std, size, **kw)["top1"],
        "amp": str(dtype).replace("torch.", "") if dtype else "off",
        "device": str(device),
    }
    if test is not None:
        summary.update({f"test_{k}": v for k, v in evaluate(model, test, mean, std, size, **kw).items()})
    summary["wall_seconds"] = time.perf_counter() - t0
    write_json(out / "summary.json", summary)
    return summary
