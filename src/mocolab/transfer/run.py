"""`mocolab detect | segment`: the shared plumbing of a fine-tuning run (device, resume, the
Trainer with a feed, result files) and the two commands.

RUN_DIR ends with config.yaml (the TransferConfig), metrics.jsonl, tb/, checkpoints/ (epoch ends,
final.pth), detect.json or segment.json (results, backbone, settings, seed, times) and summary.json.
SIGTERM/SIGINT: the current step is finished, a checkpoint written, exit 75; `--resume auto`
continues from the newest valid checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from pathlib import Path

import torch

from .. import distributed as du
from ..checkpoint import CheckpointError, extract_backbone, load_training_checkpoint, safe_load
from ..config import ConfigError, apply_overrides, from_dict, save_yaml
from ..data import DataError
from ..engine import Trainer
from ..eval.load import resolve_entry
from ..runtime import (
    RESUME_HELP,
    RUN_OVERWRITE_HELP,
    check_arguments,
    check_out_dir,
    prepare_run_dir,
    resolve_amp,
    resolve_device,
)
from .config import TransferConfig, build_transfer_config, check_kind, preset_names

log = logging.getLogger("mocolab")

DEFAULT_PRESETS = {"detect": "bccd_cpu", "segment": "camvid_cpu"}


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
        (out / name).write_text(json.dumps(_finite(result), indent=2))
        (out / "summary.json").write_text(json.dumps(_finite(summary), indent=2))


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


# ---- the commands ------------------------------------------------------------------------

BACKBONE_HELP = ("SRC: anything `mocolab knn` accepts (a pretraining or `mocolab supervised` run folder, "
                 "a checkpoint, a backbone.pth export, official MoCo or torchvision weights) or random:PRESET "
                 "(an untrained backbone of a pretraining preset's architecture, initialised with --seed)")


def command_overrides(args) -> list[str]:
    """The key=value overrides with the flags turned into their keys. --epochs and --iters mean
    a run of that length (no time budget); --budget-minutes a run fitted to the time."""
    out = list(args.overrides)
    if args.epochs is not None:
        out += [f"run.epochs={args.epochs}", "task.iters=0", "run.budget_minutes=0"]
    if args.iters is not None:
        out += [f"task.iters={args.iters}", "run.budget_minutes=0"]
    if args.budget_minutes is not None:
        out += [f"run.budget_minutes={args.budget_minutes}"]
    if args.batch_size is not None:
        out += [f"optim.batch_size={args.batch_size}"]
    if args.seed is not None:
        out += [f"run.seed={args.seed}"]
    return out


def cmd_transfer(args) -> int:
    check_arguments(args)
    kind = args.kind
    overrides = command_overrides(args)
    prepare_run_dir(args.out, kind, resume=bool(args.resume), overwrite=args.overwrite)
    _, path, _ = resolve_entry(args.backbone)  # a bad --backbone is reported before the data is read
    if path is not None:
        extract_backbone(safe_load(path))
    cfg, state = resume_config(args.resume, args.out, overrides, kind) if args.resume else (None, None)
    if args.resume and state is None:
        log.info("no checkpoint in %s yet: starting a new run", args.out)
    if cfg is None:
        cfg = build_transfer_config(args.preset or DEFAULT_PRESETS[kind], overrides, kind)
    try:
        if kind == "detect":
            from .detect import detection_source, run_detect

            source = detection_source(args.data, args.train_json, args.train_images, args.test_json,
                                      args.test_images)
            result = run_detect(cfg, args.backbone, source, args.out, state=state)
        else:
            from .segment import run_segment

            result = run_segment(cfg, args.backbone, args.data, args.out, state=state)
    finally:
        du.cleanup()
    if int(os.environ.get("RANK", "0")) > 0:
        return 0
    t = result["train"]
    if kind == "detect":
        msg = (f"AP {result['AP']:.2f}, AP50 {result['AP50']:.2f}, AP75 {result['AP75']:.2f} "
               f"({result['metric']}); COCO AP {result['coco']['AP']:.2f}")
    else:
        msg = f"mIoU {result['mIoU']:.2f}%, pixel accuracy {result['pixel_acc']:.2f}%"
    print(f"done: {t['steps']} steps ({t['epochs']:.2f} epochs, {t['images_per_second']:.1f} img/s); "
          f"{msg}; results in {Path(args.out) / (kind + '.json')}")
    return 0


def add_commands(sub) -> None:
    """Adds `detect` and `segment` to the `mocolab` parser's subparsers `sub`."""
    names = ", ".join(preset_names())
    common = (" RUN_DIR gets config.yaml, metrics.jsonl, tb/, checkpoints/ (final.pth), {json} and "
              "summary.json. Schedule: --iters N (task.iters), --epochs N or --budget-minutes M (the "
              "step schedule annealed within M minutes of training). key=value overrides: task.*, "
              "optim.*, run.* (for example task.head=c4 optim.lr=0.01 run.threads=2).")
    for kind, what in (("detect", "Faster R-CNN (FPN or the paper's C4) fine-tuned from a backbone; VOC "
                                  "and COCO AP on the test split"),
                       ("segment", "FCN or DeepLabV3 fine-tuned from a backbone; mIoU on the test split")):
        p = sub.add_parser(kind, help=what, epilog=BACKBONE_HELP,
                           description=what + "." + common.format(json=f"{kind}.json"))
        p.add_argument("--backbone", required=True, metavar="SRC", help="the pretrained backbone (see below)")
        if kind == "detect":
            p.add_argument("--data", action="append", metavar="DIR",
                           help="VOC folder (Annotations/, JPEGImages/, ImageSets/Main/: trainval or train "
                                "to train, test or val to test; repeat --data to train on several, e.g. "
                                "VOC2007 and VOC2012, tested on the first) or COCO folder "
                                "(annotations/instances_{train,val}*.json + image folders)")
            p.add_argument("--train-json", help="COCO: training annotations (instead of --data)")
            p.add_argument("--train-images", help="COCO: the training images' folder")
            p.add_argument("--test-json", help="COCO: test annotations")
            p.add_argument("--test-images", help="COCO: the test images' folder")
        else:
            p.add_argument("--data", required=True, metavar="DIR",
                           help="folder with train/ and test/ (or val/), each images/NAME.jpg + masks/NAME.png; "
                                "optional classes.txt (one name per line)")
        p.add_argument("--out", required=True, metavar="RUN_DIR", help="run folder")
        p.add_argument("--preset", help=f"one of: {names}, or a YAML file (default {DEFAULT_PRESETS[kind]}; "
                                        "ignored with --resume: the run's config is used)")
        g = p.add_mutually_exclusive_group()
        g.add_argument("--budget-minutes", type=float, help="a complete run (schedule included) within M minutes")
        g.add_argument("--iters", type=int, help="train N iterations (task.iters)")
        g.add_argument("--epochs", type=int, help="train N epochs")
        p.add_argument("--batch-size", type=int, help="global batch size (optim.batch_size)")
        p.add_argument("--seed", type=int, help="data order, augmentation, new layers, random:PRESET init (run.seed)")
        p.add_argument("--resume", help=RESUME_HELP)
        p.add_argument("--overwrite", action="store_true", help=RUN_OVERWRITE_HELP)
        p.add_argument("overrides", nargs="*", help="config overrides key=value")
        p.set_defaults(fn=cmd_transfer, kind=kind)
