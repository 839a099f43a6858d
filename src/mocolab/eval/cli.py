"""`mocolab linear | finetune | supervised | compare`: the paper's evaluation protocols."""

from __future__ import annotations

from pathlib import Path

from .. import distributed as du
from ..config import command_line_overrides
from ..errors import UsageError
from ..runtime import RUN_OVERWRITE_HELP, check_arguments, prepare_run_dir, resolve_device

TARGET_HELP = ("--checkpoint: a mocolab checkpoint, a backbone.pth export (MoCo or supervised), a run folder, "
               "official MoCo or torchvision weights; --random-init PRESET: an untrained backbone of the preset's "
               "architecture, initialised with --seed (the random-init baseline)")

LOOP_RESUME_HELP = ("continue a stopped run (SIGTERM: exit 75) from its folder beside the result, BASE....run/; what "
                    "a rerun with the same settings does anyway (a loop of other settings starts afresh): accepted so "
                    "that a requeue can pass --resume auto to every command")


def _check(args) -> None:
    """Values argparse cannot check, as one-line errors (UsageError)."""
    check_arguments(args)
    if getattr(args, "t", None) is not None:  # compare's kNN temperature
        from ..limits import check_temperature

        check_temperature(args.t, "--t")
    for f in [getattr(args, "label_fraction", None), *(getattr(args, "fractions", None) or [])]:
        if f is not None and not 0.0 < f <= 1.0:
            raise UsageError(f"a label fraction must lie in (0, 1] (e.g. 0.01, 0.1, 1.0), got {f:g}")
    # feature extraction is sharded over the ranks; training loops are not
    if du.launched_by_torchrun():
        if args.fn is not cmd_linear or args.mode != "cached":
            raise UsageError("under torchrun, evaluation runs `mocolab knn` and `mocolab linear --mode cached` "
                             "(features sharded over the ranks); run the other protocols as one process")
        du.setup(resolve_device(args.device))


def context(args):
    """The protocols' Context from the parsed arguments (data, device, streaming options)."""
    from .protocols import Context

    return Context(args.data, args.limit, args.seed, args.device, args.amp, stream=args.stream,
                   memory_limit_gb=args.memory_limit_gb, store_dtype=args.store_dtype, chunk_rows=args.chunk_rows)


def _target(args):
    from .protocols import Target

    entry = args.checkpoint if args.checkpoint else f"random:{args.random_init}"
    tg = Target.from_entry(entry, args.results_dir or ".", args.seed, args.image_size)
    if args.results_dir and tg.path is not None:
        tg.base = Path(args.results_dir) / tg.path.name
    return tg, context(args)


def add_stream_options(p) -> None:
    """--stream, --memory-limit-gb, --store-dtype, --chunk-rows (knn, linear, finetune, compare)."""
    g = p.add_argument_group("streaming (data larger than memory)")
    g.add_argument("--stream", choices=["auto", "on", "off"], default="auto",
                   help="off: decode each split into memory (the fastest for small data); on: stream the image "
                        "files through DataLoader workers (decode, resize, center crop in the workers; features "
                        "into a store, kNN and the cached linear probe read it chunk by chunk; linear --mode paper "
                        "and finetune decode each batch's files); auto (default): on when the decoded train + "
                        "test splits (images x 3 x S x S bytes) exceed --memory-limit-gb")
    g.add_argument("--memory-limit-gb", type=float, default=8.0, metavar="GB",
                   help="memory for decoded images and features (default 8): above it --stream auto streams, and "
                        "a split's features (N x D float32) go to a memory-mapped file in TMPDIR, deleted after")
    g.add_argument("--store-dtype", choices=["float32", "float16"], default="float32",
                   help="the on-disk feature store's type: float32 (default) gives the in-memory accuracies; "
                        "float16 takes half the disk and reads but its rounding flips near-tie predictions "
                        "(about 0.1 %% of kNN's on CIFAR-10, and L-BFGS may stop elsewhere)")
    g.add_argument("--chunk-rows", type=int, default=16384, metavar="N",
                   help="feature rows per chunk read from an on-disk store (default 16384): kNN compares 1024 "
                        "queries with N bank rows at a time, the linear probe sums its loss over N rows at a time")


def _common(p, target: bool = True) -> None:
    if target:
        p.epilog = TARGET_HELP
        g = p.add_mutually_exclusive_group(required=True)
        g.add_argument("--checkpoint", help="weights to evaluate, or a run folder (its backbone.pth)")
        g.add_argument("--random-init", metavar="PRESET",
                       help="evaluate an untrained backbone of PRESET's architecture")
        p.add_argument("--image-size", type=int, help="default: the checkpoint's (or preset's) image size")
        p.add_argument("--results-dir", help="where the result JSON goes (default: beside the checkpoint; "
                                             "random init: the current folder)")
    p.add_argument("--data", required=True, help="folder with labeled train/ and test/ (or val/) ImageFolders")
    p.add_argument("--seed", type=int, default=0, help="label subsets, classifier init, augmentation, random init")
    p.add_argument("--limit", type=int, default=0, help="first N images per split (class-balanced; for smoke tests)")
    p.add_argument("--device", default="auto")
    p.add_argument("--amp", choices=["auto", "bf16", "off"], help="default: the checkpoint's run setting")
    add_stream_options(p)


def cmd_linear(args) -> int:
    _check(args)
    from .classify import FitConfig
    from .protocols import knn_and_linear_cached, run_linear_paper

    tg, ctx = _target(args)
    if args.mode == "cached":
        rec = knn_and_linear_cached(tg, ctx, knn=False, weight_decay=args.weight_decay, reuse=False)["linear_cached"]
        detail = f"L-BFGS, weight decay {rec['weight_decay']:g}"
    else:
        fc = FitConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, momentum=args.momentum,
                       weight_decay=args.weight_decay or 0.0, schedule=args.schedule,
                       milestones=[m / args.epochs for m in args.milestones] if args.milestones else [0.6, 0.8],
                       warmup_epochs=args.warmup_epochs,
                       budget_minutes=args.budget_minutes or 0.0, seed=args.seed)
        rec = run_linear_paper(tg, ctx, fc, tuple(args.crop_scale))
        detail = f"{rec['epochs']:.1f} epochs, lr {args.lr:g}, batch {rec['batch_size']}"
    if not du.is_main():
        return 0
    print(f"{rec['protocol']}: top-1 {rec['top1']:.2f}%, top-5 {rec['top5']:.2f}% ({detail}; "
          f"{rec['train_size']} train / {rec['test_size']} test images)")
    return 0


def cmd_finetune(args) -> int:
    _check(args)
    from .protocols import run_finetune

    tg, ctx = _target(args)
    rec = run_finetune(tg, ctx, args.label_fraction, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                       weight_decay=args.weight_decay, budget_minutes=args.budget_minutes or 0.0,
                       backbone_lr_scale=args.backbone_lr_scale, crop_scale=tuple(args.crop_scale))
    print(f"{rec['protocol']}: top-1 {rec['top1']:.2f}%, top-5 {rec['top5']:.2f}% on the full test split "
          f"({rec['test_size']} images; {rec['labeled_images']} labeled train images, {rec['epochs']:.1f} epochs)")
    return 0


def cmd_supervised(args) -> int:
    _check(args)
    from ..supervised import supervised_config, train_supervised

    overrides = command_line_overrides(args)
    prepare_run_dir(args.out, "supervised", resume=args.resume == "auto", overwrite=args.overwrite)
    cfg = supervised_config(args.preset, overrides, args.lr)
    cfg.model.bn_splits = 1  # plain BN: no shuffle BN to emulate
    s = train_supervised(cfg, args.data, args.out, resume=args.resume == "auto")
    test = f", test top-1 {s['test_top1']:.2f}%" if "test_top1" in s else ""
    print(f"done: {s['epochs']:.2f} epochs, {s['images_per_second']:.0f} img/s, train top-1 {s['train_top1']:.2f}%"
          f"{test}; backbone in {args.out}/backbone.pth")
    return 0


def cmd_compare(args) -> int:
    _check(args)
    from .compare import TransferSpec, compare, markdown
    from .linear import paper_defaults

    protocols = [p for p in args.protocols if p != "none"]
    if "none" in args.protocols and protocols:
        raise UsageError("--protocols none stands alone (only the transfer columns)")
    if protocols and not args.data:
        raise UsageError(f"--data is needed for the protocols {' '.join(protocols)} (--protocols none: "
                         "only the --detect / --segment columns)")
    bad = [o for o in args.transfer_set if "=" not in o]
    if bad:
        raise UsageError(f"--transfer-set takes key=value items, not {' '.join(bad)} (give the entries first)")
    try:
        seeds = [int(s) for s in args.seeds.replace(",", " ").split()]
    except ValueError:
        raise UsageError(f"--seeds takes seeds separated by commas (e.g. 0,1,2), not {args.seeds!r}") from None
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise UsageError(f"--seeds needs distinct seeds >= 0, got {args.seeds!r}")
    transfer = [TransferSpec(kind, data, preset, list(args.transfer_set), args.transfer_budget_minutes or 0.0)
                for kind, data, preset in (("detect", args.detect, args.detect_preset),
                                           ("segment", args.segment, args.segment_preset)) if data]
    paper = None
    if "linear_paper" in protocols:
        paper = paper_defaults()
        paper.epochs = args.paper_epochs
        paper.budget_minutes = args.paper_budget_minutes or 0.0
    ctx = context(args)
    table = compare(args.entries, ctx, args.out, protocols=protocols, fractions=args.fractions,
                    finetune_budget_minutes=args.budget_minutes_finetune or 0.0, finetune_epochs=args.epochs_finetune,
                    paper_fit=paper, k=args.k, t=args.t, reuse=not args.force, transfer=transfer, seeds=seeds)
    print(markdown(table), end="")
    print(f"written: {args.out}/compare.md, compare.json, compare.png")
    return 1 if table["failed"] else 0


def add_commands(sub) -> None:
    """Adds the evaluation sub-commands to the `mocolab` parser's subparsers `sub`."""
    li = sub.add_parser("linear", help="linear classification on frozen features (cached or the paper protocol)",
                        description="Linear classifier on the frozen backbone's global-pooled features. "
                        "--mode cached (default): features extracted once (center crop, no augmentation), "
                        "standardised, multinomial logistic regression by L-BFGS (weight decay picked on a "
                        "held-out 10%% of train unless --weight-decay); reported as 'linear (cached features)'. "
                        "--mode paper: the MoCo protocol (frozen backbone, BN in eval mode; SGD lr 30, "
                        "momentum 0.9, wd 0, 100 epochs, lr x0.1 at 60 and 80, batch 256; random-resized-crop "
                        "+ flip, center-crop test). Writes <checkpoint>.linear_{cached,paper}.json.")
    _common(li)
    li.add_argument("--mode", choices=["cached", "paper"], default="cached")
    li.add_argument("--epochs", type=int, default=100, help="paper mode")
    li.add_argument("--lr", type=float, default=30.0, help="paper mode")
    li.add_argument("--batch-size", type=int, default=256, help="paper mode")
    li.add_argument("--momentum", type=float, default=0.9, help="paper mode")
    li.add_argument("--weight-decay", type=float, help="paper mode: default 0; cached: default picked on held-out data")
    li.add_argument("--schedule", choices=["step", "cosine"], default="step", help="paper mode")
    li.add_argument("--milestones", type=float, nargs="+",
                    help="paper mode: epochs of lr x0.1 (default: 60%% and 80%% of --epochs, i.e. 60 80)")
    li.add_argument("--warmup-epochs", type=float, default=0.0, help="paper mode")
    li.add_argument("--budget-minutes", type=float, help="paper mode: fit the schedule to M minutes")
    li.add_argument("--crop-scale", type=float, nargs=2, default=[0.08, 1.0],
                    help="paper mode: random-resized-crop scale")
    li.add_argument("--resume", choices=["auto"], help=LOOP_RESUME_HELP)
    li.set_defaults(fn=cmd_linear)

    ft = sub.add_parser("finetune", help="semi-supervised fine-tuning of the whole network on a fraction of the labels",
                        description="Fine-tunes the whole network (backbone + new linear layer) on a class-balanced, "
                        "seeded subset of the train labels (each class keeps round(fraction x its count); same "
                        "seed, same subset), then reports top-1 on the full test split. Defaults: SGD momentum "
                        "0.9, lr 0.05 x batch/256, cosine, wd 5e-4, random-resized-crop (0.2-1) + flip, batch "
                        "64/128/256 by subset size, epochs for ~1000 steps (at most 100). "
                        "Writes <checkpoint>.finetune_<fraction>.json.")
    _common(ft)
    ft.add_argument("--label-fraction", type=float, required=True, help="in (0, 1], e.g. 0.01, 0.1 or 1.0")
    ft.add_argument("--epochs", type=int)
    ft.add_argument("--batch-size", type=int)
    ft.add_argument("--lr", type=float, help="for the batch as given")
    ft.add_argument("--weight-decay", type=float)
    ft.add_argument("--backbone-lr-scale", type=float, default=1.0, help="backbone lr = scale x the head's")
    ft.add_argument("--budget-minutes", type=float, help="fit the schedule to M minutes")
    ft.add_argument("--crop-scale", type=float, nargs=2, default=[0.2, 1.0])
    ft.add_argument("--resume", choices=["auto"], help=LOOP_RESUME_HELP)
    ft.set_defaults(fn=cmd_finetune)

    from ..config import preset_names

    su = sub.add_parser("supervised", help="the supervised baseline: the preset's backbone trained with labels",
                        description="Trains the preset's backbone (plain BN) with cross-entropy on the labeled "
                        "train split, with the preset's augmentation and optimiser settings; lr 0.1 x batch/256 "
                        "unless --lr or optim.lr=. RUN_DIR gets config.yaml, metrics.jsonl, checkpoints/final.pth, "
                        "backbone.pth + backbone.json (the same export format as pretraining) and summary.json.")
    su.add_argument("--preset", default="cifar10_cpu", help=f"one of: {', '.join(preset_names())}, or a YAML file")
    su.add_argument("--data", required=True, help="labeled image folder (train/ test/ splits or one ImageFolder)")
    su.add_argument("--out", required=True, help="run folder")
    su.add_argument("--budget-minutes", type=float, help="a complete run (schedule included) within M minutes")
    su.add_argument("--epochs", type=int)
    su.add_argument("--batch-size", type=int)
    su.add_argument("--lr", type=float, help="at optim.base_batch_size (default 0.1)")
    su.add_argument("--resume", choices=["auto"], help="continue from the newest checkpoint in --out "
                    "(made with the same config and data)")
    su.add_argument("--overwrite", action="store_true", help=RUN_OVERWRITE_HELP)
    su.add_argument("overrides", nargs="*", help="config overrides key=value, e.g. data.limit=1000")
    su.set_defaults(fn=cmd_supervised)

    co = sub.add_parser("compare", help="one table and bar chart: several checkpoints under the same protocols",
                        description="ENTRY: random:PRESET (an untrained backbone), a run folder (its backbone.pth) "
                        "or a checkpoint file. Each result is written beside its checkpoint (random init: in --out) "
                        "and reused when its settings match (--force recomputes). Writes OUT/compare.md, "
                        "compare.json and compare.png. --detect / --segment add transfer columns (detect AP50, "
                        "detect AP, segment mIoU): every entry fine-tuned with the same recipe (the preset, "
                        "--transfer-set, --transfer-budget-minutes) at each of --seeds (random:PRESET: a new init "
                        "per seed too), mean +- std (n) over the seeds; each fine-tune is a `mocolab detect | "
                        "segment` process in OUT/transfer/TASK/ENTRY/seedS/, reused when finished with the same "
                        "weights, data, seed and settings, continued (--resume auto) when interrupted. SIGTERM: "
                        "the running fine-tune saves a checkpoint, the table so far is written, exit 75; the same "
                        "command goes on.")
    co.add_argument("entries", nargs="+", metavar="ENTRY")
    _common(co, target=False)
    data = next(a for a in co._actions if a.dest == "data")
    data.required, data.help = False, data.help + " (needed by the protocols; not with --protocols none)"
    co.add_argument("--out", required=True, help="folder for compare.md, compare.json, compare.png")
    co.add_argument("--protocols", nargs="+", default=["knn", "linear_cached", "finetune"],
                    choices=["knn", "linear_cached", "linear_paper", "finetune", "none"],
                    help="none: only the transfer columns")
    co.add_argument("--fractions", type=float, nargs="+", default=[0.01, 0.1], help="fine-tune label fractions")
    co.add_argument("--budget-minutes-finetune", type=float, help="per fine-tuning run")
    co.add_argument("--epochs-finetune", type=int, help="default: ~1000 steps (see finetune --help)")
    co.add_argument("--paper-epochs", type=int, default=100, help="linear_paper")
    co.add_argument("--paper-budget-minutes", type=float, help="linear_paper, per entry")
    co.add_argument("--k", type=int, default=200)
    co.add_argument("--t", type=float, default=0.1, help="kNN temperature, >= 1e-4")
    co.add_argument("--detect", metavar="DIR", help="detection data as `mocolab detect --data` takes it "
                                                    "(VOC or COCO folder): adds detect AP50 and AP")
    co.add_argument("--segment", metavar="DIR", help="segmentation data as `mocolab segment --data` takes it: "
                                                     "adds segment mIoU")
    co.add_argument("--detect-preset", default="bccd_cpu", help="transfer preset or YAML file for --detect")
    co.add_argument("--segment-preset", default="camvid_cpu", help="transfer preset or YAML file for --segment")
    co.add_argument("--transfer-budget-minutes", type=float, metavar="M",
                    help="each fine-tune's time budget (default: the preset's epochs, the same steps for every "
                         "backbone; bccd_cpu 6 epochs, camvid_cpu 10)")
    co.add_argument("--transfer-set", nargs="+", default=[], metavar="KEY=VALUE",
                    help="overrides for every detect/segment fine-tune, e.g. run.threads=1 task.iters=100")
    co.add_argument("--seeds", default="0,1,2", help="transfer seeds, e.g. 0,1,2 (fine-tune and random init)")
    co.add_argument("--force", action="store_true", help="recompute even when a matching result exists "
                                                         "(transfer: start every cell over)")
    co.set_defaults(fn=cmd_compare)
