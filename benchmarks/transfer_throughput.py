"""Training throughput of `mocolab detect` and `mocolab segment` beside their compute limit:
rows measured side by side in one process, alternating.

Rows, per task:
  limit  compute only: one batch taken from the feed once, kept in memory (on the device), and
         the training step (forward + backward + SGD step) repeated on it
  feed   end to end: each step takes the next batch from the feed's batches(order, start, epoch)
         iterator (DataLoader workers decoding and augmenting, copy to the device), then the step

The models, feeds and optimizer are built as the commands build them: the TransferConfig from a
preset plus key=value overrides (applied to both tasks), the backbone from --backbone, the
DetectionMethod / SegmentationMethod, and mocolab.step.train_step with the Trainer's SGD over
method.learnable_params(). Each round times every row for --steps steps, in turn; the figure per
row is the median over rounds. feed / limit near 1 means the data pipeline is not the bottleneck.
The feed's workers prefetch (4 batches each) while the other rows run, so use --steps well above
task.workers x 4 for a fair feed figure.

  python benchmarks/transfer_throughput.py --rounds 5 --steps 30 --json /tmp/transfer_tp.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from mocolab.runtime import epoch_order, resolve_amp, resolve_device, seed_everything  # noqa: E402
from mocolab.schedules import scaled_lr  # noqa: E402
from mocolab.step import train_step  # noqa: E402
from mocolab.transfer.config import build_transfer_config  # noqa: E402
from mocolab.transfer.detect import DetectionMethod, build_model, detection_source, load_detection  # noqa: E402
from mocolab.transfer.feeds import DetectionFeed, SegmentationFeed  # noqa: E402
from mocolab.transfer.models import build_segmenter, freeze_stages, load_backbone  # noqa: E402
from mocolab.transfer.segment import SegmentationMethod, load_segmentation  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared/data"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_task(kind: str, cfg, backbone_src: str, data: str, device: torch.device):
    """(method, train feed) as run_detect / run_segment build them."""
    t = cfg.task
    backbone, meta = load_backbone(backbone_src, seed=cfg.run.seed)
    if kind == "detect":
        train_data, _, fmt = load_detection(detection_source(data))
        seed_everything(cfg.run.seed)
        method = DetectionMethod(build_model(cfg, backbone, meta, train_data.num_classes).to(device))
        feed = DetectionFeed(train_data, cfg, train=True, device=device, keep_difficult=fmt == "voc")
    else:
        train_data, _ = load_segmentation(data, t.num_classes, t.ignore_index)
        seed_everything(cfg.run.seed)
        model = build_segmenter(backbone, meta, train_data.num_classes, head=t.head, norm=t.norm, aux=t.aux)
        model = model.to(device)
        if t.trainable_layers < 5:
            freeze_stages(model.net.backbone, t.trainable_layers)
        method = SegmentationMethod(model, t.ignore_index)
        feed = SegmentationFeed(train_data, cfg, train=True, device=device)
    return method, feed


def make_rows(cfg, method, feed, device: torch.device, dtype) -> dict:
    """{"limit": fn, "feed": fn}: each call runs one training step and returns its loss."""
    o = cfg.optim
    optimizer = torch.optim.SGD(method.learnable_params(), lr=scaled_lr(o.lr, o.batch_size, o.base_batch_size),
                                momentum=o.momentum, weight_decay=o.weight_decay)  # as the Trainer's
    method.train()

    def autocast():
        return torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None)

    def step(views):
        return train_step(method, optimizer, views, autocast=autocast())[0]

    def endless():  # the feed's epochs, one after another (as Trainer.fit walks them)
        epoch = 0
        while True:
            yield from feed.batches(epoch_order(len(feed), cfg.run.seed, epoch), 0, epoch)
            epoch += 1

    batches = endless()
    ready, _ = next(batches)  # the limit row's batch: the feed's first, decoded and augmented once
    return {"limit": lambda: step(ready), "feed": lambda: step(next(batches)[0])}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", default="detect,segment")
    ap.add_argument("--detect-data", default=str(SHARED / "bccd/BCCD"))
    ap.add_argument("--segment-data", default=str(SHARED / "camvid"))
    ap.add_argument("--detect-preset", default="bccd_cpu")
    ap.add_argument("--segment-preset", default="camvid_cpu")
    ap.add_argument("--backbone", default="random:imagenette_cpu")
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (compute threads)")
    ap.add_argument("--steps", type=int, default=10, help="steps per row per round")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps per row first")
    ap.add_argument("--json")
    ap.add_argument("overrides", nargs="*", help="key=value config overrides, for both tasks (e.g. task.workers=4)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    tasks = args.tasks.split(",")
    unknown = [k for k in tasks if k not in ("detect", "segment")]
    if unknown:
        raise SystemExit(f"unknown tasks {unknown}: choose from detect, segment")
    presets = {"detect": args.detect_preset, "segment": args.segment_preset}
    data = {"detect": args.detect_data, "segment": args.segment_data}
    rows, info = {}, {}
    for kind in tasks:
        cfg = build_transfer_config(presets[kind], args.overrides, kind)
        device = resolve_device(cfg.run.device)
        dtype = resolve_amp(cfg.run.amp, device)
        method, feed = build_task(kind, cfg, args.backbone, data[kind], device)
        for name, fn in make_rows(cfg, method, feed, device, dtype).items():
            rows[(kind, name)] = (fn, device, cfg.optim.batch_size)
        info[kind] = {"preset": presets[kind], "head": cfg.task.head, "batch_size": cfg.optim.batch_size,
                      "workers": cfg.task.workers, "device": str(device), "amp": str(dtype),
                      "images": len(feed)}

    for (kind, name), (fn, device, _) in rows.items():  # warm-up: allocator, kernels, workers started
        t0 = time.perf_counter()
        for _ in range(args.warmup):
            fn()
        sync(device)
        print(f"warm-up {kind} {name}: {time.perf_counter() - t0:.1f} s", flush=True)

    times: dict[tuple[str, str], list[float]] = {k: [] for k in rows}
    for r in range(args.rounds):
        for key, (fn, device, B) in rows.items():
            sync(device)
            t0 = time.perf_counter()
            for _ in range(args.steps):
                loss = fn()
            loss.item()  # wait for the last step
            sync(device)
            times[key].append(args.steps * B / (time.perf_counter() - t0))
        print(f"round {r + 1}: " + ", ".join(f"{k} {n} {times[(k, n)][-1]:.1f}" for k, n in rows), flush=True)

    print(f"\nbackbone {args.backbone}, {args.threads} compute thread(s), {args.rounds} rounds x {args.steps} steps, "
          f"torch {torch.__version__}")
    print(f"{'task':8s} {'preset':12s} {'batch':>5s} {'workers':>7s} {'limit img/s':>11s} {'feed img/s':>10s} "
          f"{'feed/limit':>10s}   device, amp; rounds (limit | feed)")
    result = {"backbone": args.backbone, "threads": args.threads, "steps": args.steps, "rounds": args.rounds,
              "torch": torch.__version__, "tasks": {}}
    for kind in tasks:
        lim, fed = statistics.median(times[(kind, "limit")]), statistics.median(times[(kind, "feed")])
        i = info[kind]
        rounds = " | ".join(" ".join(f"{x:.1f}" for x in times[(kind, n)]) for n in ("limit", "feed"))
        print(f"{kind:8s} {i['preset']:12s} {i['batch_size']:5d} {i['workers']:7d} {lim:11.2f} {fed:10.2f} "
              f"{fed / lim:10.3f}   {i['device']}, {i['amp']}; {rounds}")
        result["tasks"][kind] = {**i, "limit_img_s": lim, "feed_img_s": fed, "feed_over_limit": fed / lim,
                                 "limit_rounds": times[(kind, "limit")], "feed_rounds": times[(kind, "feed")]}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
