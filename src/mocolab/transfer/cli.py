"""`mocolab detect | segment | ...`: one command per registered transfer task (mocolab.registry.TASKS),
each parsing its data options and calling the task's `run` (the same function as the API's)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from .. import distributed as du
from ..eval.load import load_weights, resolve_entry
from ..registry import TASKS
from ..runtime import RESUME_HELP, RUN_OVERWRITE_HELP, check_arguments, prepare_run_dir
from .common import resume_config
from .config import build_transfer_config, preset_names

log = logging.getLogger("mocolab")


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
    task = TASKS.get(args.kind)
    overrides = command_overrides(args)
    prepare_run_dir(args.out, task.name, resume=bool(args.resume), overwrite=args.overwrite)
    _, path, _ = resolve_entry(args.backbone)  # a bad --backbone is reported before the data is read
    if path is not None:
        load_weights(path)  # any weights file or model folder resolve_entry gives
    cfg, state = resume_config(args.resume, args.out, overrides, task.name) if args.resume else (None, None)
    if args.resume and state is None:
        log.info("no checkpoint in %s yet: starting a new run", args.out)
    if cfg is None:
        cfg = build_transfer_config(args.preset or task.default_preset, overrides, task.name)
    try:
        result = task.run(cfg, args.backbone, task.source_from_args(args), args.out, state=state)
    finally:
        du.cleanup()
    if int(os.environ.get("RANK", "0")) > 0:
        return 0
    t = result["train"]
    print(f"done: {t['steps']} steps ({t['epochs']:.2f} epochs, {t['images_per_second']:.1f} img/s); "
          f"{task.headline(result)}; results in {Path(args.out) / task.result_file}")
    return 0


def add_commands(sub) -> None:
    """Adds a command per registered transfer task to the `mocolab` parser's subparsers `sub`."""
    names = ", ".join(preset_names())
    common = (" RUN_DIR gets config.yaml, metrics.jsonl, tb/, checkpoints/ (final.pth), {json} and "
              "summary.json. Schedule: --iters N (task.iters), --epochs N or --budget-minutes M (the "
              "step schedule annealed within M minutes of training). key=value overrides: task.*, "
              "optim.*, run.* (for example task.head=c4 optim.lr=0.01 run.threads=2).")
    for task in TASKS:
        p = sub.add_parser(task.name, help=task.help, epilog=BACKBONE_HELP,
                           description=task.help + "." + common.format(json=task.result_file))
        p.add_argument("--backbone", required=True, metavar="SRC", help="the pretrained backbone (see below)")
        task.add_arguments(p)
        p.add_argument("--out", required=True, metavar="RUN_DIR", help="run folder")
        p.add_argument("--preset", help=f"one of: {names}, or a YAML file (default {task.default_preset}; "
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
        p.set_defaults(fn=cmd_transfer, kind=task.name)
