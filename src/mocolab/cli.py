"""`mocolab pretrain | knn | linear | finetune | supervised | detect | segment | compare | export |
sweep | shards | presets`: parse, build the config, call the library."""

from __future__ import annotations

import argparse
import logging
import os
import select
import sys
import traceback
import warnings

from . import distributed as du
from .config import build_config, command_line_overrides, preset_names
from .errors import is_user_error
from .runtime import RESUME_HELP, RUN_OVERWRITE_HELP, Preempted, check_arguments, prepare_run_dir, release_run_dirs

log = logging.getLogger("mocolab")


def _setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="mocolab: %(message)s")
    warnings.formatwarning = lambda msg, cat, *a, **k: f"warning: {msg}\n"


def cmd_pretrain(args) -> int:
    from .pretrain import pretrain, resume_config

    check_arguments(args)
    overrides = command_line_overrides(args)
    prepare_run_dir(args.out, "pretrain", resume=bool(args.resume), overwrite=args.overwrite)
    cfg, state = resume_config(args.resume, args.out, overrides) if args.resume else (None, None)
    if args.resume and state is None:
        log.info("no checkpoint in %s yet: starting a new run", args.out)
    if cfg is None:
        cfg = build_config(args.preset, overrides)
    try:
        summary = pretrain(cfg, args.data, args.out, state=state)
    finally:
        du.cleanup()  # leaves the process group (torchrun)
    if int(os.environ.get("RANK", "0")) > 0:  # rank 0 reports
        return 0
    msg = f"done: {summary['epochs']:.2f} epochs, {summary['images_per_second']:.0f} img/s"
    if "knn_top1" in summary:
        msg += f", kNN top-1 {summary['knn_top1']:.2f}% ({summary['knn_features']} features)"
    print(msg + f"; results in {args.out}/summary.json")
    return 0


def cmd_knn(args) -> int:
    from .eval.cli import context
    from .eval.protocols import run_knn

    check_arguments(args)
    ctx = context(argparse.Namespace(**{**vars(args), "seed": 0}))
    res = run_knn(args.checkpoint, ctx, k=args.k, t=args.t, features=args.features, image_size=args.image_size)
    if not du.is_main():
        return 0
    print(f"kNN top-1 {res['knn_top1']:.2f}% (k={args.k}, t={args.t}, {args.features} features, "
          f"{res['train_size']} train / {res['test_size']} test images; features in {res['features_store']})")
    print(f"written: {res['result_file']}")
    return 0


def cmd_shards(args) -> int:
    from .shards import write_shards

    check_arguments(args)
    for pattern in write_shards(args.data, args.out, args.shard_size, args.seed, overwrite=args.overwrite):
        print(f"wrote {pattern}")
    return 0


def cmd_presets(args) -> int:
    for name in preset_names():
        print(name)
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mocolab", description="Momentum Contrast (MoCo) pretraining and evaluation")
    p.add_argument("--debug", action="store_true",
                   help="show the traceback of any error (also MOCOLAB_DEBUG=1); without it, mistakes in the "
                        "input are one line (exit code 2) and other errors show their traceback (exit code 1)")
    sub = p.add_subparsers(dest="command", required=True)

    pt = sub.add_parser("pretrain", help="self-supervised MoCo pretraining on an image folder")
    pt.add_argument("--preset", default="cifar10_cpu",
                    help=f"one of: {', '.join(preset_names())}, or a YAML file "
                         "(ignored with --resume: the run's config is used)")
    pt.add_argument("--data", required=True,
                    help="image folder (train/ test/ splits or one ImageFolder), or cifar10[:ROOT]")
    pt.add_argument("--out", required=True, help="run folder")
    pt.add_argument("--budget-minutes", type=float, help="a complete run (schedule included) within M minutes")
    pt.add_argument("--epochs", type=int)
    pt.add_argument("--batch-size", type=int, help="global batch size")
    pt.add_argument("--init", metavar="SRC", help="continued pretraining: both encoders start from SRC's weights "
                    "(a run folder, checkpoint, export, model folder, official MoCo or torchvision weights; "
                    "model.init); the schedule and optimizer start fresh, the queue is filled with real keys")
    pt.add_argument("--resume", help=RESUME_HELP)
    pt.add_argument("--overwrite", action="store_true", help=RUN_OVERWRITE_HELP)
    pt.add_argument("overrides", nargs="*", help="config overrides key=value, for example optim.lr=0.1 moco.T=0.2")
    pt.set_defaults(fn=cmd_pretrain)

    kn = sub.add_parser("knn", help="weighted kNN accuracy of a checkpoint's features")
    kn.add_argument("--checkpoint", required=True,
                    help="a run folder (its backbone.pth), a mocolab checkpoint or backbone.pth export, official "
                         "MoCo or torchvision weights, or random:PRESET (an untrained backbone)")
    kn.add_argument("--data", required=True, help="folder with labeled train/ and test/ (or val/)")
    kn.add_argument("--k", type=int, default=200)
    kn.add_argument("--t", type=float, default=0.1, help="the vote's temperature, >= 1e-4 (default 0.1; as it goes "
                    "to 0 the vote becomes 1-NN)")
    kn.add_argument("--features", choices=["backbone", "head"], default="backbone")
    kn.add_argument("--image-size", type=int)
    kn.add_argument("--device", default="auto")
    kn.add_argument("--amp", choices=["auto", "bf16", "off"], help="default: the run's setting")
    kn.add_argument("--limit", type=int, default=0, help="first N images per split (class-balanced)")
    from .eval.cli import add_stream_options

    add_stream_options(kn)
    kn.set_defaults(fn=cmd_knn)

    from .eval.cli import add_commands as add_eval_commands

    add_eval_commands(sub)  # linear | finetune | supervised | compare

    from .export import add_command as add_export
    from .report.cli import add_command as add_report
    from .sweep import add_command as add_sweep
    from .transfer.cli import add_commands as add_transfer_commands

    add_transfer_commands(sub)  # detect | segment: fine-tune a backbone for detection / segmentation

    add_export(sub)  # export CKPT --format torchvision|timm|detectron2|safetensors|folder
    from .embeddings import add_command as add_embed
    from .nearest import add_command as add_neighbors

    add_embed(sub)  # embed SRC --data DIR --out FILE: features, paths, labels
    add_neighbors(sub)  # neighbors SRC --data DIR --out DIR: neighbours, duplicates, leakage
    add_sweep(sub)  # sweep --grid key=v1,v2 ...: the paper's ablations, one process per cell
    add_report(sub)  # report RUN_DIR...: a static HTML page of curves, neighbours, embedding map, tables

    sh = sub.add_parser("shards", help="write an image folder into webdataset tar shards "
                                       "(for --data 'PREFIX-{000000..000099}.tar')")
    sh.add_argument("--data", required=True,
                    help="ImageFolder (labels optional); train/ and test/ give PREFIX-train-*, PREFIX-test-*")
    sh.add_argument("--out", required=True, help="PREFIX of the shards (folder and name start)")
    sh.add_argument("--shard-size", type=int, default=10000, help="samples per shard")
    sh.add_argument("--seed", type=int, default=0, help="the order in which images are written (shuffled)")
    sh.add_argument("--overwrite", action="store_true", help="replace the existing shards of PREFIX (else refused)")
    sh.set_defaults(fn=cmd_shards)

    pr = sub.add_parser("presets", help="list the presets")
    pr.set_defaults(fn=cmd_presets)
    return p


def main(argv: list[str] | None = None) -> int:
    _setup_logging()
    p = parser()
    args, extra = p.parse_known_args(argv)  # key=value overrides may follow --options too
    if "--debug" in extra:  # also after the command's name
        extra = [e for e in extra if e != "--debug"]
        args.debug = True
    debug = args.debug or os.environ.get("MOCOLAB_DEBUG", "") not in ("", "0")
    if extra:
        stray = [e for e in extra if e.startswith("-") or "=" not in e or not hasattr(args, "overrides")]
        if stray:
            p.error(f"unrecognized arguments: {' '.join(stray)}")
        args.overrides = list(args.overrides) + extra
    try:
        code = args.fn(args)
        sys.stdout.flush()  # a reader gone (`| head`) shows here, not as "Exception ignored" at the exit
        return code
    except Preempted as e:
        print(f"mocolab: {e}", file=sys.stderr)
        return Preempted.exit_code
    except KeyboardInterrupt:
        print("mocolab: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError as e:
        if not stdout_gone():  # another pipe's (a data loader worker's): a bug to report
            return report_error(e, debug)
        # stdout closed by its reader (`mocolab ... | head`): stop quietly, as a shell tool does;
        # stdout goes to devnull so that the interpreter's final flush raises nothing either
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):  # a stdout without a file descriptor (captured, in-process)
            pass
        return 141
    except Exception as e:  # every error ends as a message and an exit code
        return report_error(e, debug)
    finally:
        du.cleanup()  # leaves the process group (torchrun)
        release_run_dirs()  # an in-process command (tests, the API) frees its run folders' locks


def stdout_gone() -> bool:
    """Whether stdout is a pipe whose reader has gone (`mocolab ... | head`); True when that cannot be
    told (no poll on Windows, a stdout without a file descriptor)."""
    try:
        poll = select.poll()
        poll.register(sys.stdout.fileno(), select.POLLOUT)
    except (AttributeError, OSError, ValueError):
        return True
    return any(ev & (select.POLLERR | select.POLLHUP) for _, ev in poll.poll(0))


# optional dependencies (pyproject's extras): the module a command imports -> the extra that brings it
EXTRAS = {"pycocotools": "transfer", "matplotlib": "report", "sklearn": "report", "timm": "vit",
          "pyarrow": "parquet", "tensorboard": "tensorboard"}


def missing_extra(e: Exception) -> str | None:
    """The extra to install when `e` is the import of a missing optional dependency."""
    if isinstance(e, ModuleNotFoundError) and e.name:
        return EXTRAS.get(e.name.split(".")[0])
    return None


def report_error(e: Exception, debug: bool = False) -> int:
    """A user's mistake (errors.is_user_error): one line, exit code 2 (with its traceback too when
    debugging); anything else is a bug, here or in a library: its traceback, exit code 1."""
    extra = missing_extra(e)
    if extra and not debug:  # an optional dependency the command needs is not installed
        print(f"mocolab: error: {e.name} is not installed; pip install 'mocolab[{extra}]'", file=sys.stderr)
        return 2
    user = is_user_error(e)
    if debug or not user:
        traceback.print_exc()
    if user:
        print(f"mocolab: error: {e}", file=sys.stderr)
        return 2
    print(f"mocolab: internal error ({type(e).__name__}): the traceback above says where; "
          "please report it with the command line", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
