"""The shared plumbing of a fine-tuning run (device, resume, the Trainer with a feed, the
few-labels subset, result files), used by every transfer task (detect.py, segment.py).

RUN_DIR ends with config.yaml (the TransferConfig), metrics.jsonl, tb/, checkpoints/ (epoch ends,
final.pth), detect.json or segment.json (results, backbone, settings, seed, times) and summary.json.
SIGTERM/SIGINT: the current step is finished, a checkpoint written, exit 75; `--resume auto`
continues from the newest valid checkpoint.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path

import torch

from .. import distributed as du
from ..checkpoint import CheckpointError, load_training_checkpoint
from ..config import ConfigError, apply_overrides, from_dict, save_yaml
from ..data import DataError
from ..engine import Trainer
from ..runfiles import write_json
from ..runtime import check_out_dir, resolve_amp, resolve_device
from .config import TransferConfig, check_kind

log = logging.getLogger("mocolab")

def resume_config(resume: str, out: str | Path, overrides: list[str],
                  kind: str) -> tuple[TransferConfig | None, dict | None]:
    """The config of the run being resumed with the command line's overrides on top, and its
    checkpoint ('auto': the newest valid one in RUN_DIR; (None, None) when there is none)."""
    path, state = load_training_checkpoint(resume, out)
    if state is None:
        return None, None
    if "task" not in state["config"]:
        raise CheckpointError(f"{path} is a pretraining checkpoint, not a `mocolab {kind}` run's; "
                              "pass it as --backbone instead")
    cfg = apply_overrides(from_dict(state["config"], base=TransferConfig()), overrides).validate()
    check_kind(cfg, kind)
    return cfg, state


def setup(cfg: TransferConfig, out: Path) -> tuple[torch.device, torch.dtype | None]:
    """The device (joining the process group under torchrun), output checks, threads, AMP."""
    device = du.setup(resolve_device(cfg.run.device))
    if not du.is_main():
        log.setLevel(logging.WARNING)  # rank 0 reports
    else:
        check_out_dir(out)
    if cfg.task.norm == "syncbn" and du.is_dist() and device.type != "cuda":
        raise ConfigError("task.norm=syncbn needs CUDA under torchrun (torch's SyncBatchNorm); use task.norm=bn")
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    return device, resolve_amp(cfg.run.amp, device)


def train(cfg: TransferConfig, method, feed, device: torch.device, out: Path,
          autocast_dtype: torch.dtype | None, state: dict | None) -> Trainer:
    """Runs the Trainer on the feed (from `state` if given) and writes checkpoints/final.pth.
    task.iters / task.warmup_iters set the schedule's length and warm-up in iterations."""
    if du.is_main():
        save_yaml(cfg, out / "config.yaml")
    trainer = Trainer(cfg, method, None, device, out, autocast_dtype, feed=feed)
    if cfg.task.warmup_iters:
        trainer.set_schedule(warmup_steps=cfg.task.warmup_iters)
    if state is not None:
        trainer.load_state_dict(state)  # a CheckpointError if it is another model's
        log.info("continuing at step %d", trainer.progress.step)
    if cfg.run.budget_minutes <= 0:  # iterations or epochs (--epochs may change on resume)
        trainer.set_schedule(total_steps=cfg.task.iters or trainer.steps_per_epoch * cfg.run.epochs)
    log.info("%d images, %d steps per epoch of %d; schedule: %s", len(feed), trainer.steps_per_epoch,
             cfg.optim.batch_size, f"{cfg.run.budget_minutes:g} minutes" if cfg.run.budget_minutes > 0
             else f"{trainer.progress.total_steps} steps")
    trainer.run()  # fit, final.pth, logs closed; Preempted (checkpoint written) on SIGTERM/SIGINT
    return trainer


def subset_seed(cfg) -> int:
    """The seed of the few-labels draw: task.subset_seed, or run.seed when that is -1."""
    return cfg.run.seed if cfg.task.subset_seed < 0 else cfg.task.subset_seed


def labeled_subset(data, n: int, seed: int):
    """The first n of a seeded permutation of the training images (n = 0: all), as the same type
    (DetectionData or SegData): the few-labels regime, the same images for every backbone at a seed."""
    if n <= 0:
        return data
    if n > len(data):
        raise DataError(f"task.train_images={n} but the training split has {len(data)} images")
    g = torch.Generator().manual_seed(seed)
    keep = sorted(torch.randperm(len(data), generator=g)[:n].tolist())
    if hasattr(data, "items"):  # DetectionData
        return dataclasses.replace(data, items=[data.items[i] for i in keep])
    return dataclasses.replace(data, images=[data.images[i] for i in keep], masks=[data.masks[i] for i in keep])


def gather(local: dict) -> dict:
    """Merges every rank's {index: result} (evaluation shards) on every rank."""
    if not du.is_dist():
        return local
    parts = [None] * du.world_size()
    torch.distributed.all_gather_object(parts, local)
    return {k: v for part in parts for k, v in part.items()}


def write_results(out: Path, name: str, result: dict, summary: dict) -> None:
    """RUN_DIR/<name> (the full record) and RUN_DIR/summary.json, by rank 0."""
    if du.is_main():
        write_json(out / name, _finite(result))
        write_json(out / "summary.json", _finite(summary))


def _finite(obj):
    """NaN (a class without objects) -> null, so the JSON stays standard."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def backbone_record(meta: dict) -> dict:
    return {k: meta[k] for k in ("name", "source", "arch", "width", "stem", "mean", "std") if k in meta}
