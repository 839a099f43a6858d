"""Running the evaluation protocols on one target (a checkpoint, a run's export or a random
init), with result JSONs beside the checkpoint and reuse of results whose settings match."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from .. import distributed as du
from ..data import DataError, Splits, cache_size_for, load_splits
from ..runtime import data_id, resolve_amp, resolve_device
from .classify import FitConfig
from .features import extract_features
from .finetune import finetune, finetune_defaults, protocol_name
from .knn import knn_accuracy
from .linear import CACHED, PAPER, linear_cached, linear_paper
from .load import load_for_eval, random_backbone, resolve_entry
from .results import file_identity, find_matching, result_path, write_result
from .subsets import check_fraction, label_subset

log = logging.getLogger("mocolab")


@dataclass
class Target:
    """What is evaluated. base: the path that result files are named after."""

    entry: str  # random:PRESET, a run folder or a checkpoint file, as given
    name: str
    path: Path | None
    base: Path
    seed: int = 0
    image_size: int | None = None

    @classmethod
    def from_entry(cls, entry: str, results_dir: Path | str = ".", seed: int = 0, image_size: int | None = None):
        name, path, base = resolve_entry(entry, results_dir, seed)
        return cls(entry, name, path, base, seed, image_size)

    @property
    def method(self) -> str:
        if self.path is None:
            return "random init"
        side = self.path.with_suffix(".json")
        if side.is_file():
            try:
                return json.loads(side.read_text()).get("method", "MoCo")
            except ValueError:
                pass
        return "checkpoint"

    def load(self):
        """-> (backbone returning pooled features N x D, config with the preprocessing)."""
        if self.path is None:
            return random_backbone(self.entry[len("random:"):], self.seed, self.image_size)
        return load_for_eval(str(self.path), "backbone", self.image_size)

    def identity(self) -> dict:
        if self.path is None:
            return {"random_init": self.entry[len("random:"):], "init_seed": self.seed}
        return {"checkpoint": str(self.path.resolve()), **file_identity(self.path)}


@dataclass
class Context:
    """The data and the device, shared by every target of a command."""

    data: str
    limit: int = 0
    seed: int = 0
    device: str = "auto"
    amp: str | None = None  # None: the checkpoint's run setting
    _splits: dict = field(default_factory=dict)

    def splits(self, image_size: int) -> Splits:
        size = cache_size_for(image_size)
        if size not in self._splits:
            with du.main_first():  # under torchrun rank 0 decodes into the shared cache first
                s = load_splits(self.data, size, limit=self.limit)
            if s.test is None or not s.train.classes or int(s.train.labels.min()) < 0:
                raise DataError(f"evaluation needs labeled train/ and test/ (or val/) folders under {self.data}")
            self._splits[size] = s
        return self._splits[size]

    def data_id(self) -> str:
        return data_id(self.data)


def _prepare(target: Target, ctx: Context):
    net, cfg = target.load()
    device = resolve_device(ctx.device)
    net = net.to(device)
    if cfg.run.channels_last:
        net = net.to(memory_format=torch.channels_last)
    dtype = resolve_amp(ctx.amp or cfg.run.amp, device)
    return net, cfg, device, dtype


def _settings(target: Target, ctx: Context, cfg, key: str, **params) -> dict:
    return {"key": key, "weights": target.identity(), "data": ctx.data_id(), "limit": ctx.limit,
            "seed": ctx.seed, "image_size": cfg.data.image_size, **params}


def _record(target: Target, ctx: Context, protocol: str, settings: dict, numbers: dict, splits: Splits,
            seconds: float, device) -> dict:
    return {"protocol": protocol, "name": target.name, "method": target.method,
            "checkpoint": str(target.path) if target.path else target.entry, "data": ctx.data_id(),
            "seed": ctx.seed, "train_size": len(splits.train), "test_size": len(splits.test),
            **numbers, "settings": settings, "seconds": seconds, "device": str(device)}


def knn_and_linear_cached(target: Target, ctx: Context, *, knn: bool = True, linear: bool = True, k: int = 200,
                          t: float = 0.1, weight_decay: float | None = None, reuse: bool = True) -> dict:
    """kNN and the cached-feature linear probe on one feature extraction -> {key: result}."""
    net, cfg, device, dtype = _prepare(target, ctx)
    wanted = {}
    if knn:
        wanted["knn"] = _settings(target, ctx, cfg, "knn", k=k, t=t, features="backbone")
    if linear:
        wanted["linear_cached"] = _settings(target, ctx, cfg, "linear_cached", weight_decay=weight_decay)
    out = {}
    for key, st in wanted.items():
        old = find_matching(target.base, key, st) if reuse else None
        if old is not None:
            log.info("%s: reusing %s", target.name, old["result_file"])
            out[key] = old
    todo = [key for key in wanted if key not in out]
    if not todo:
        return out
    splits = ctx.splits(cfg.data.image_size)
    t0 = time.perf_counter()
    kw = {"device": device, "size": cfg.data.image_size, "channels_last": cfg.run.channels_last,
              "autocast_dtype": dtype, "normalize": False}
    f_tr, y_tr = extract_features(net, splits.train, cfg.data.mean, cfg.data.std, **kw)  # N x D
    f_te, y_te = extract_features(net, splits.test, cfg.data.mean, cfg.data.std, **kw)  # M x D
    t_feat = time.perf_counter() - t0
    num_classes = len(splits.train.classes)
    for key in todo:
        t1 = time.perf_counter()
        if key == "knn":
            acc = knn_accuracy(F.normalize(f_tr, dim=1), y_tr, F.normalize(f_te, dim=1), y_te, num_classes, k, t)
            numbers = {"top1": acc, "knn_top1": acc, "k": k, "t": t, "features": "backbone"}
            protocol = "knn"
        else:
            numbers = linear_cached(f_tr, y_tr, f_te, y_te, num_classes, weight_decay=weight_decay, seed=ctx.seed)
            protocol = CACHED
        rec = _record(target, ctx, protocol, wanted[key], numbers, splits,
                      t_feat + time.perf_counter() - t1, device)
        path = result_path(target.base, key, wanted[key])
        rec["result_file"] = str(path)
        write_result(path, rec)
        out[key] = rec
    return out


def loop_dir(result: Path) -> Path:
    """The folder beside a result JSON that holds its training loop's checkpoints, metrics.jsonl
    and tb/ (`backbone.linear_paper.seed0.3f2a9c1d.json` -> `backbone.linear_paper.seed0.3f2a9c1d.run/`):
    a stopped protocol run resumes there when started again with the same settings."""
    return result.with_suffix(".run")


def run_linear_paper(target: Target, ctx: Context, fc: FitConfig, crop_scale=(0.08, 1.0), reuse: bool = False) -> dict:
    net, cfg, device, dtype = _prepare(target, ctx)
    fc.seed = ctx.seed
    st = _settings(target, ctx, cfg, "linear_paper", fit=fc.to_dict(), crop_scale=list(crop_scale),
                   frozen_backbone=True, bn="eval", fc_init="normal_0.01")  # fc_init: results before it differ
    path = result_path(target.base, "linear_paper", st)
    if reuse and (old := find_matching(target.base, "linear_paper", st)) is not None:
        return old
    splits = ctx.splits(cfg.data.image_size)
    torch.manual_seed(ctx.seed)  # the linear layer's init
    t0 = time.perf_counter()
    numbers = linear_paper(net, splits.train, splits.test, cfg.data.mean, cfg.data.std, cfg.data.image_size, fc,
                           device, dtype, cfg.run.channels_last, crop_scale, out=loop_dir(path), settings=st)
    rec = _record(target, ctx, PAPER, st, numbers, splits, time.perf_counter() - t0, device)
    rec["result_file"] = str(path)
    write_result(path, rec)
    return rec


def run_finetune(target: Target, ctx: Context, fraction: float, *, epochs: int | None = None,
                 batch_size: int | None = None, lr: float | None = None, weight_decay: float | None = None,
                 budget_minutes: float = 0.0, backbone_lr_scale: float = 1.0, crop_scale=(0.2, 1.0),
                 reuse: bool = False) -> dict:
    check_fraction(fraction)
    net, cfg, device, dtype = _prepare(target, ctx)
    splits = ctx.splits(cfg.data.image_size)  # needed to size the defaults
    n_labeled = len(label_subset(splits.train.labels, fraction, ctx.seed))
    fc = finetune_defaults(n_labeled, batch_size, epochs)
    if lr is not None:
        fc.lr = lr
    if weight_decay is not None:
        fc.weight_decay = weight_decay
    fc.budget_minutes, fc.seed = budget_minutes, ctx.seed
    key = f"finetune_{fraction:g}"
    st = _settings(target, ctx, cfg, key, fraction=fraction, fit=fc.to_dict(), backbone_lr_scale=backbone_lr_scale,
                   crop_scale=list(crop_scale))
    path = result_path(target.base, key, st)
    if reuse and (old := find_matching(target.base, key, st)) is not None:
        log.info("%s: reusing %s", target.name, old["result_file"])
        return old
    t0 = time.perf_counter()
    numbers = finetune(net, splits.train, splits.test, fraction, cfg.data.mean, cfg.data.std, cfg.data.image_size,
                       fc, device, dtype, cfg.run.channels_last, backbone_lr_scale, crop_scale, ctx.seed,
                       out=loop_dir(path), settings=st)
    rec = _record(target, ctx, protocol_name(fraction), st, numbers, splits, time.perf_counter() - t0, device)
    rec["label_fraction"] = fraction
    rec["result_file"] = str(path)
    write_result(path, rec)
    return rec
