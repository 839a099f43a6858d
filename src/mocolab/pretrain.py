"""`mocolab pretrain`: builds the objects, runs the Trainer, evaluates, exports.

RUN_DIR ends with config.yaml, metrics.jsonl, tb/, checkpoints/, backbone.pth (+ .json)
and summary.json.
"""

from __future__ import annotations

import copy
import logging
import time
from pathlib import Path

import torch

from . import distributed as du
from .auto import auto_values
from .checkpoint import CheckpointError, export_backbone, load_training_checkpoint
from .compiling import compiles, inductor_settings, remember, uses_cudagraphs
from .config import Config, ConfigError, apply_overrides, check_bn_groups, check_limits, from_dict, save_yaml, set_key
from .data import cache_size_for, load_splits
from .engine import Trainer
from .engine.feeds import check_indices
from .eval.knn import knn_evaluate
from .methods import build_method, method_class
from .methods.base import Method
from .runfiles import write_json
from .runtime import check_out_dir, epoch_order, resolve_amp, resolve_device, seed_everything
from .shards import ShardStream, is_shard_pattern

log = logging.getLogger("mocolab")


def knn_monitor(cfg: Config, train, test, device, autocast_dtype):
    """A callable(method) -> {'knn_top1': %, ...}: train split as the bank, test split as queries
    (decoded tensors or file lists)."""

    def run(model: Method) -> dict:
        net = model.encoder_q.backbone if cfg.run.knn_features == "backbone" else model.encoder_q
        kw = dict(device=device, channels_last=cfg.run.channels_last, autocast_dtype=autocast_dtype,
                  size=cfg.data.image_size, workers=cfg.data.workers,
                  cudagraph_steps=model.cudagraphs and cfg.run.knn_features == "head")  # the backbone runs eagerly
        acc = knn_evaluate(net, train, test, cfg.data.mean, cfg.data.std, cfg.run.knn_k, cfg.run.knn_t, **kw)
        return {"knn_top1": acc, "knn_features": cfg.run.knn_features, "knn_k": cfg.run.knn_k, "knn_t": cfg.run.knn_t}

    return run


def build_model(cfg: Config, device: torch.device, n_train: int = 0) -> Method:
    """The config's method (mocolab.methods.build_method) on `device`, compiled if asked.
    n_train: the training set's size (the memory bank's)."""
    model = build_method(cfg, n_train).to(device)
    if cfg.run.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if compiles(cfg):  # in place: parameters, state_dict keys and checkpoints stay as they are
        inductor_settings(cfg)
        mode = None if cfg.run.compile_mode == "default" else cfg.run.compile_mode
        for enc in model.encoders():
            enc.compile(mode=mode)
        model.compiled = True  # the Trainer compiles the augmentation along with them
        model.cudagraphs = uses_cudagraphs(cfg, device)
    return model


def init_weights(model: Method, src: str, cfg: Config) -> str:
    """Continued pretraining (model.init): f_q's backbone (and f_k's, a copy) from `src`, any weights
    `mocolab knn` takes; a mocolab run folder or training checkpoint also gives f_k, the head and the
    predictor. A backbone of another architecture than the config's is a one-line error naming both.
    Returns what was loaded, for the log."""
    from .checkpoint import safe_load
    from .errors import UsageError
    from .eval.load import load_weights, resolve_entry
    from .models.backbones import infer_arch
    from .models.vit import infer_vit

    _, path, _ = resolve_entry(src)
    if path is None:
        raise UsageError(f"--init {src}: random weights are the default start; pass trained weights")
    # where f_k and the head may be: a run folder's training checkpoint, or the file itself
    training = Path(src) / "checkpoints" / "final.pth" if Path(src).is_dir() else Path(path)
    # a training checkpoint given as the file itself is read once: its backbone here; f_k, the
    # head and the predictor below
    obj = safe_load(path) if training == Path(path) and training.suffix != ".safetensors" else None
    sd, _ = load_weights(path, obj)
    vit = infer_vit(sd)
    got = vit["arch"] if vit else "{arch} width {width}".format(**infer_arch(sd))
    mc = cfg.model
    want = mc.arch if mc.arch.startswith("vit") else f"{mc.arch} width {mc.width}"
    if got != want:
        raise ConfigError(f"--init {src} holds a {got} backbone but this run trains a {want} "
                          "(choose a preset of that architecture, or set model.arch / model.width)")
    model.encoder_q.backbone.load_state_dict(sd, strict=True)
    loaded = "backbone"
    if obj is not None:
        state = obj
    else:
        state = safe_load(training) if training.is_file() and training.suffix != ".safetensors" else {}
    if isinstance(state, dict) and {"model", "config"} <= set(state):  # a mocolab training checkpoint
        own = model.state_dict()
        # f_q (head included), f_k and the predictor where the shapes agree; not the queue or bank
        take = {k: v for k, v in state["model"].items() if k.split(".")[0] in ("encoder_q", "encoder_k", "predictor")
                and k in own and own[k].shape == v.shape}
        model.load_state_dict(take, strict=False)
        loaded = f"{len(take)} tensors of {training}"
        if not any(k.startswith("encoder_k.") for k in take) and hasattr(model, "encoder_k"):
            model.encoder_k.load_state_dict(model.encoder_q.state_dict())  # f_k starts as f_q
    elif hasattr(model, "encoder_k"):
        model.encoder_k.backbone.load_state_dict(model.encoder_q.backbone.state_dict())
    return loaded


@torch.no_grad()
def prime_dictionary(trainer: Trainer) -> int:
    """Before step 0 of a continued pretraining: the method's dictionary (MoCo's queue) filled with
    the keys of the first batches, never random keys. Returns the batches used."""
    method, cfg = trainer.method, trainer.cfg
    order = epoch_order(len(trainer.feed), cfg.run.seed, 0)
    trainer.gen.manual_seed(cfg.run.seed)
    used = 0
    for views, _ in trainer.feed.batches(order, 0, 0):  # augmented as in training: outside autocast
        used += 1
        with trainer.autocast():
            full = method.prime(views)
        if full:
            break
    return used


def resume_config(resume: str, out: str | Path, overrides: list[str]) -> tuple[Config | None, dict | None]:
    """The config of the run being resumed, with the command line's overrides on top, and the
    loaded checkpoint ('auto': the newest valid one in RUN_DIR; (None, None) when there is none)."""
    path, state = load_training_checkpoint(resume, out)
    if state is None:
        return None, None
    if "task" in state["config"]:
        raise CheckpointError(f"{path} is a `mocolab detect/segment` run's checkpoint, not a pretraining's")
    return apply_overrides(from_dict(state["config"]), overrides).validate(), state


def with_auto(cfg: Config, steps: int, n_train: int) -> tuple[Config, dict]:
    """(cfg with moco.m=auto and moco.queue_size=auto replaced by the rule's values for a schedule
    of `steps` steps (mocolab.auto), those values and `for_steps`); cfg itself when nothing is auto."""
    values = auto_values(cfg, steps, n_train)
    if not values:
        return cfg, {}
    resolved = copy.deepcopy(cfg)
    for key, value in values.items():
        set_key(resolved, key, value)
    log.info("auto: %s for %d steps", ", ".join(f"{k}={v:.6g}" for k, v in values.items()), steps)
    return resolved, {**values, "for_steps": steps}


def resolve_when_timed(trainer: Trainer, cfg: Config, n_train: int, values: dict) -> None:
    """Under a time budget the schedule's length is known after the first steps: then the auto
    values are set again for it (the key encoder's m; the queue resized, keeping its newest keys)."""

    def resolve(total_steps: int) -> None:
        trainer.cfg, new = with_auto(cfg, total_steps, n_train)
        values.update(new)
        method = trainer.method
        if "moco.m" in new:
            method.m = new["moco.m"]
        if "moco.queue_size" in new:
            method.queue.resize(new["moco.queue_size"])
            if trainer.watch is not None:  # ln(K + 1) of the new K
                trainer.watch.chance = method.chance_loss(trainer.batch)

    trainer.on_schedule = resolve


def pretrain(cfg: Config, data: str, out: str | Path, state: dict | None = None) -> dict:
    """Runs a pretraining into `out`; `state` is a loaded training checkpoint to continue from
    (its config is the caller's business: see resume_config)."""
    out = Path(out)
    device = du.setup(resolve_device(cfg.run.device))  # joins the process group under torchrun
    if not du.is_main():
        log.setLevel(logging.WARNING)  # rank 0 reports
    else:
        check_out_dir(out)
    splits, group = check_bn_groups(cfg.model.bn_splits, cfg.optim.batch_size, du.world_size())  # before training
    if du.world_size() > 1:
        log.info("BN: %d group(s) of %d images per process, %d in the global batch", splits, group,
                 splits * du.world_size())
    if cfg.model.sync_bn and du.is_dist() and device.type != "cuda":
        raise ConfigError("model.sync_bn=true needs CUDA (torch's SyncBatchNorm); "
                          "on CPUs shuffle BN across ranks is used")
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    autocast_dtype = resolve_amp(cfg.run.amp, device)

    t_load = time.perf_counter()
    size = cache_size_for(cfg.data.image_size)
    with du.main_first():  # rank 0 decodes into the shared cache; the others then read it
        # before decoding: a method that needs image indices cannot read shards
        check_indices(cfg, method_class(cfg.moco.method).needs_index, is_shard_pattern(data))
        if is_shard_pattern(data):  # streamed; the kNN monitor reads data.knn_data if given
            train = ShardStream(data, size, cfg.data.shuffle_buffer)
            bank = test = None  # the kNN monitor's images: data.knn_data's, if given
            if cfg.data.knn_data:
                ks = load_splits(cfg.data.knn_data, size, limit=cfg.data.limit, workers=cfg.data.workers,
                                 cache_dir=cfg.data.cache_dir)
                bank, test = ks.train, ks.test
        else:
            splits = load_splits(data, size, limit=cfg.data.limit, workers=cfg.data.workers,
                                 cache_dir=cfg.data.cache_dir, decode=cfg.data.cache)
            train, test = (splits.train, splits.test) if cfg.data.cache else (splits.train_files, splits.test_files)
            bank = train
    log.info("data: %d train images%s (%.1fs)", len(train),
             f", {len(test)} test images" if test is not None else "", time.perf_counter() - t_load)
    if du.is_main():
        save_yaml(cfg, out / "config.yaml")

    seed_everything(cfg.run.seed)  # here: decoding (a DataLoader) draws from the RNG only without a cache
    n_train = len(train) if not isinstance(train, ShardStream) else 0
    check_limits(cfg, n_train=n_train, device=device)  # the bank and the cache, now that n is known
    asked = cfg  # moco.m / moco.queue_size may be auto: resolved for the schedule's length
    cfg, auto = with_auto(asked, cfg.run.epochs * max(len(train) // cfg.optim.batch_size, 1), n_train)
    model = build_model(cfg, device, n_train)
    labeled = test is not None and int(torch.as_tensor(bank.labels).min()) >= 0
    monitor = knn_monitor(cfg, bank, test, device, autocast_dtype) if labeled else None
    trainer = Trainer(cfg, model, train, device, out, autocast_dtype, monitor)
    if auto and cfg.run.budget_minutes > 0 and state is None:  # the epochs' values were provisional
        resolve_when_timed(trainer, asked, n_train, auto)
    if state is None and cfg.model.init:  # continued pretraining: weights from init, a fresh schedule
        log.info("init: %s from %s", init_weights(model, cfg.model.init, cfg), cfg.model.init)
        log.info("init: the dictionary filled from %d batches", prime_dictionary(trainer))
    if state is not None:
        trainer.load_state_dict(state)
        log.info("continuing at step %d", trainer.progress.step)
        if cfg.run.budget_minutes <= 0:  # --epochs may have changed on the command line
            trainer.set_schedule(total_steps=trainer.steps_per_epoch * cfg.run.epochs)

    t0 = time.perf_counter()
    # fit, final.pth (rank 0's BN statistics on every rank, for the save and the kNN), logs closed;
    # Preempted (checkpoint written) on SIGTERM/SIGINT
    trainer.run()
    if model.compiled:  # its graphs are in inductor's cache now: later runs compile warm
        remember(cfg)
    meta = {"arch": cfg.model.arch, "width": cfg.model.width, "stem": model.stem,
            "feature_dim": model.feature_dim, "image_size": cfg.data.image_size, "mean": cfg.data.mean,
            "method": method_class(cfg.moco.method).title,
            "std": cfg.data.std, "load_with": "mocolab.models.backbones.torchvision_model"}
    if cfg.model.arch.startswith("vit"):  # a timm VisionTransformer's state_dict (strict load)
        meta.update(width=None, stem=None, load_with="mocolab.models.vit.timm_vit(arch, img_size)",
                    img_size=cfg.data.crop_size or cfg.data.image_size)
    if du.is_main():
        export_backbone(model, out / "backbone.pth", out / "backbone.json", meta)

    summary = trainer.summary()
    summary["init"] = cfg.model.init or None
    if auto:
        summary["auto"] = auto
    if model.cudagraphs:  # graphs inductor would not capture (a CPU op, an input mutation) ran without
        from torch._dynamo.utils import counters
        summary["cudagraph_skips"] = counters["inductor"]["cudagraph_skips"]
        if summary["cudagraph_skips"]:
            log.warning("run.compile_mode=%s: %d compiled graphs ran without CUDA graphs (see the log's "
                        "'skipping cudagraphs' lines)", cfg.run.compile_mode, summary["cudagraph_skips"])
    if monitor is not None:
        t_eval = time.perf_counter()
        summary.update(monitor(model))
        summary["knn_seconds"] = time.perf_counter() - t_eval
    else:
        log.warning("no labeled test split next to the training data (for shards: data.knn_data=DIR): kNN skipped")
    summary["wall_seconds"] = time.perf_counter() - t0
    if du.is_main():
        write_json(out / "summary.json", summary)
    return summary
