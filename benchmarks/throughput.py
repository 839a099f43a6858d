"""Throughput of a MoCo training step, rows measured side by side in one process, alternating.

Rows:
  (a) limit    compute only: query fwd+bwd, key fwd, SGD, momentum, enqueue on ready-made views
  (b) mocolab  end to end: cached uint8 batches -> batched tensor augmentation -> step
  (c) pil      mocolab with the PIL backend (torchvision transforms in DataLoader workers)
  (d) peer     lightly's MoCo building blocks with the same backbone, batch, K and augmentations
               (only when `lightly` is installed: pip install -e '.[bench]')
  official     the official MoCo CIFAR-10 demo's own code (facebookresearch/moco, colab notebook): its
               ModelMoCo with SplitBatchNorm by reshape, torchvision ResNet with the CIFAR stem, float32,
               its PIL augmentation in DataLoader workers (cifar10_r18 is that recipe in mocolab)
  compiled     (a) with run.compile=true (torch.compile of both encoders; only when asked for in
               --rows: compiling takes minutes, done in the warm-up, whose time is printed)
  mocolab_compiled  (b) with run.compile=true: encoders and augmentation compiled (likewise)
  compiled_eager_aug  mocolab_compiled with the augmentation left eager (likewise)
  compiled_cudagraphs  compiled with run.compile_mode=reduce-overhead (CUDA graphs on CUDA; likewise)
  limit_e2e, e2e, limit_bank, bank  (a) and (b) for moco.method=e2e and moco.method=bank
  health       (b) with the health figures (mocolab.health) computed on every step; the Trainer
               computes them once per run.log_every steps, so their cost in a run is printed as
               (step time with them - without) / log_every, a share of the step time

Rows are measured in --rows order. A row that fails to build, in its warm-up (3 steps) or
while timed is reported (table, and failed_rows in the JSON); the others are still measured.

Each round times every row for --steps steps, in turn; the figure per row is the median over
rounds, so slow phases of a noisy machine hit every row alike. Prints img/s, (b)/(a), (b)/(d),
peak RSS and, on CUDA, the host-device syncs and the peak GPU memory (of its warm-up) of each row;
--json PATH writes limit_img_s, mocolab_img_s, pil_img_s, peer_img_s, peak_rss_mb, img_s and
peak_gpu_mb (every row's) and more.

  python benchmarks/throughput.py --data ../shared/data/cifar10 --width 16 --batch-size 256
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch
import torch._inductor.config as inductor_config

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from mocolab.config import build_config  # noqa: E402
from mocolab.data import TensorData, load_splits  # noqa: E402
from mocolab.engine import Trainer  # noqa: E402
from mocolab.pretrain import build_model  # noqa: E402
from mocolab.runtime import epoch_order, resolve_amp, resolve_device  # noqa: E402
from mocolab.step import train_step  # noqa: E402

COMPILE = ["run.compile=true", "run.compile_min_minutes=0"]  # compile here whatever the preset's threshold


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def count_syncs(fn, device) -> int | None:
    """Host-device synchronisations in one call of a row (CUDA only: torch's sync debug mode
    warns at each; issue 5 asks for none in the hot loop). None off CUDA."""
    if device.type != "cuda":
        return None
    import warnings
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message).lower() for w in caught)


def make_trainer(cfg, data, device, dtype):
    torch.manual_seed(0)
    return Trainer(cfg, build_model(cfg, device, len(data)), data, device, None, dtype)


def step_fn(tr: Trainer, health: bool = False):
    cfg = tr.cfg

    def step(views, index):
        return train_step(tr.method, tr.optimizer, views, m=cfg.moco.m, index=index, autocast=tr.autocast(),
                          generator=tr.gen, health=health)[0]
    return step


def endless_views(tr: Trainer):
    epoch = 0
    while True:
        yield from tr.feed.batches(epoch_order(len(tr.feed), 0, epoch), 0, epoch)
        epoch += 1


def peer_row(cfg, data: TensorData, device, dtype):
    """lightly's MoCo blocks (projection head, NTXent with memory bank, momentum update,
    batch shuffle) and its MoCoV2 PIL transform in DataLoader workers."""
    try:
        import copy

        from lightly.loss import NTXentLoss
        from lightly.models.modules import MoCoProjectionHead
        from lightly.models.utils import batch_shuffle, batch_unshuffle, update_momentum
        from lightly.transforms import MoCoV2Transform
    except ImportError:
        return None
    from torch import nn

    from mocolab.data import TensorTwoViewDataset
    from mocolab.models.backbones import build_backbone

    backbone, dim = build_backbone(cfg.model.arch, cfg.model.width, "cifar", cfg.model.bn_splits)

    class Peer(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone, self.head = backbone, MoCoProjectionHead(dim, cfg.model.hidden_dim, cfg.model.dim)
            self.backbone_k, self.head_k = copy.deepcopy(self.backbone), copy.deepcopy(self.head)
            for p in list(self.backbone_k.parameters()) + list(self.head_k.parameters()):
                p.requires_grad = False

    model = Peer().to(device)
    if cfg.run.channels_last:
        model = model.to(memory_format=torch.channels_last)
    crit = NTXentLoss(temperature=cfg.moco.T, memory_bank_size=(cfg.moco.queue_size, cfg.model.dim))
    opt = torch.optim.SGD(list(model.backbone.parameters()) + list(model.head.parameters()), lr=0.06, momentum=0.9)
    tf = MoCoV2Transform(input_size=cfg.data.image_size, gaussian_blur=0.0,
                         normalize={"mean": cfg.data.mean, "std": cfg.data.std})
    loader = torch.utils.data.DataLoader(TensorTwoViewDataset(data, tf), batch_size=cfg.optim.batch_size, shuffle=True,
                                         drop_last=True, num_workers=cfg.data.workers, persistent_workers=True)
    it = iter(loader)

    def step():
        nonlocal it
        try:
            (x_q, x_k), _ = next(it)
        except StopIteration:
            it = iter(loader)
            (x_q, x_k), _ = next(it)
        x_q, x_k = x_q.to(device), x_k.to(device)
        update_momentum(model.backbone, model.backbone_k, m=cfg.moco.m)
        update_momentum(model.head, model.head_k, m=cfg.moco.m)
        with torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            q = model.head(model.backbone(x_q))
            with torch.no_grad():
                xk, shuffle = batch_shuffle(x_k)
                k = batch_unshuffle(model.head_k(model.backbone_k(xk)), shuffle)
            loss = crit(q.float(), k.float())
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss.detach()

    return step


def official_row(cfg, data: TensorData, device):
    """The official CIFAR-10 demo's training step as published (float32; .cuda() made device-agnostic):
    SplitBatchNorm by reshape, a torchvision ResNet with a 3x3 stem and no max-pool, a linear head,
    single-GPU batch shuffle, queue of K keys, SGD lr 0.06 wd 5e-4; torchvision PIL augmentation in
    DataLoader workers. cfg gives arch, width, bn_splits, K, m, T, batch and workers."""
    from functools import partial

    import torchvision
    from torch import nn
    from torchvision import transforms as T

    from mocolab.data import TensorTwoViewDataset

    class SplitBatchNorm(nn.BatchNorm2d):
        def __init__(self, num_features, num_splits, **kw):
            super().__init__(num_features, **kw)
            self.num_splits = num_splits

        def forward(self, input):
            N, C, H, W = input.shape
            if self.training or not self.track_running_stats:
                running_mean_split = self.running_mean.repeat(self.num_splits)
                running_var_split = self.running_var.repeat(self.num_splits)
                outcome = nn.functional.batch_norm(
                    input.view(-1, C * self.num_splits, H, W), running_mean_split, running_var_split,
                    self.weight.repeat(self.num_splits), self.bias.repeat(self.num_splits),
                    True, self.momentum, self.eps).view(N, C, H, W)
                self.running_mean.data.copy_(running_mean_split.view(self.num_splits, C).mean(dim=0))
                self.running_var.data.copy_(running_var_split.view(self.num_splits, C).mean(dim=0))
                return outcome
            return nn.functional.batch_norm(input, self.running_mean, self.running_var, self.weight, self.bias,
                                            False, self.momentum, self.eps)

    def base():  # ModelBase: the demo's CIFAR variant of a torchvision ResNet
        norm = partial(SplitBatchNorm, num_splits=cfg.model.bn_splits) if cfg.model.bn_splits > 1 else nn.BatchNorm2d
        net = getattr(torchvision.models, cfg.model.arch)(num_classes=cfg.model.dim, norm_layer=norm)
        layers = []
        for name, module in net.named_children():
            if name == "conv1":
                module = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
            if isinstance(module, nn.MaxPool2d):
                continue
            if isinstance(module, nn.Linear):
                layers.append(nn.Flatten(1))
            layers.append(module)
        return nn.Sequential(*layers)

    K, m, temp = cfg.moco.queue_size, cfg.moco.m, cfg.moco.T
    enc_q, enc_k = base().to(device), base().to(device)
    for pq, pk in zip(enc_q.parameters(), enc_k.parameters()):
        pk.data.copy_(pq.data)
        pk.requires_grad = False
    queue = nn.functional.normalize(torch.randn(cfg.model.dim, K, device=device), dim=0)  # C x K
    ptr = 0
    opt = torch.optim.SGD(enc_q.parameters(), lr=0.06, weight_decay=5e-4, momentum=0.9)
    tf = T.Compose([T.RandomResizedCrop(cfg.data.image_size), T.RandomHorizontalFlip(p=0.5),
                    T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8), T.RandomGrayscale(p=0.2),
                    T.ToTensor(), T.Normalize(cfg.data.mean, cfg.data.std)])

    def pair(img):
        return tf(img), tf(img)
    loader = torch.utils.data.DataLoader(TensorTwoViewDataset(data, pair), batch_size=cfg.optim.batch_size,
                                         shuffle=True, drop_last=True, num_workers=cfg.data.workers,
                                         pin_memory=device.type == "cuda", persistent_workers=cfg.data.workers > 0)
    it = iter(loader)

    def step():
        nonlocal it, ptr
        try:
            (im_q, im_k), _ = next(it)
        except StopIteration:
            it = iter(loader)
            (im_q, im_k), _ = next(it)
        im_q, im_k = im_q.to(device, non_blocking=True), im_k.to(device, non_blocking=True)
        with torch.no_grad():  # _momentum_update_key_encoder
            for pq, pk in zip(enc_q.parameters(), enc_k.parameters()):
                pk.data = pk.data * m + pq.data * (1.0 - m)
        q = nn.functional.normalize(enc_q(im_q), dim=1)  # N x C
        with torch.no_grad():  # _batch_shuffle_single_gpu
            idx = torch.randperm(im_k.shape[0], device=device)
            k = nn.functional.normalize(enc_k(im_k[idx]), dim=1)[torch.argsort(idx)]
        l_pos = torch.einsum("nc,nc->n", [q, k]).unsqueeze(-1)
        l_neg = torch.einsum("nc,ck->nk", [q, queue.clone().detach()])
        logits = torch.cat([l_pos, l_neg], dim=1) / temp  # N x (1 + K)
        loss = nn.functional.cross_entropy(logits, torch.zeros(logits.shape[0], dtype=torch.long, device=device))
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():  # _dequeue_and_enqueue
            n = k.shape[0]
            queue[:, ptr:ptr + n] = k.t()
            ptr = (ptr + n) % K
        return loss.detach()

    return step


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared/data/cifar10"))
    ap.add_argument("--preset", default="cifar10_cpu")
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--amp", default="auto")
    ap.add_argument("--steps", type=int, default=5, help="steps per row per round")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--limit", type=int, default=10000, help="training images to cache (0 = all)")
    ap.add_argument("--rows", default="limit,mocolab,pil,peer")
    ap.add_argument("--json")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args(argv)

    over = [f"model.arch={args.arch}", f"model.width={args.width}", f"optim.batch_size={args.batch_size}",
            f"run.device={args.device}", f"run.amp={args.amp}", *args.overrides]
    cfg = build_config(args.preset, over)
    device = resolve_device(cfg.run.device)
    dtype = resolve_amp(cfg.run.amp, device)
    data = load_splits(args.data, cfg.data.image_size, limit=args.limit, workers=cfg.data.workers).train
    B = cfg.optim.batch_size
    rows = {}
    wanted = args.rows.split(",")

    def trainer_row(extra: list[str], fixed: bool, eager_aug: bool, health: bool = False):
        tr = make_trainer(build_config(args.preset, over + extra), data, device, dtype)
        if eager_aug:
            tr.feed.aug.compile = False  # the encoders compiled, the augmentation eager
        step, views = (step_fn(tr, health=True) if health else step_fn(tr)), endless_views(tr)
        if fixed:  # ready-made views: no data work in this row
            ready = next(views)  # (views, index)
            return lambda: step(*ready)
        return lambda: step(*next(views))

    specs = {  # row: (config overrides, ready-made views, augmentation left eager)
        "limit": ([], True, False),
        "compiled": (COMPILE, True, False),
        "compiled_cudagraphs": (COMPILE + ["run.compile_mode=reduce-overhead"], True, False),
        "mocolab": ([], False, False),
        "mocolab_compiled": (COMPILE, False, False),
        "compiled_eager_aug": (COMPILE, False, True),
        "pil": (["data.backend=pil"], False, False),
        # the other dictionary mechanisms (issue 17): compute limit and end to end
        "limit_e2e": (["moco.method=e2e"], True, False),
        "e2e": (["moco.method=e2e"], False, False),
        "limit_bank": (["moco.method=bank"], True, False),
        "bank": (["moco.method=bank"], False, False),
        # the health figures on every step (issue 31)
        "health": ([], False, False, True),
    }
    unknown = [name for name in wanted if name not in [*specs, "peer", "official"]]
    if unknown:
        raise SystemExit(f"unknown rows {unknown}: choose from {', '.join([*specs, 'peer', 'official'])}")
    if "compiled_cudagraphs" in wanted and hasattr(inductor_config.triton, "cudagraph_or_error"):
        # a graph inductor would quietly run without CUDA graphs fails that row instead (GPU only)
        inductor_config.triton.cudagraph_or_error = True
    failed: dict[str, str] = {}

    def drop(name: str, when: str, e: Exception) -> None:
        """One row that fails (a compile mode on some GPU) is reported; the others go on."""
        failed[name] = f"{when}: {type(e).__name__}: {e}"
        traceback.print_exc()  # where it failed (inside torch.compile: which lowering), for the log
        print(f"row {name} failed in its {failed[name]}", flush=True)
        rows.pop(name, None)

    for name in wanted:
        try:
            if name == "peer":
                peer = peer_row(cfg, data, device, dtype)
                if peer is None:
                    print("peer row skipped: lightly is not installed (pip install -e '.[bench]')")
                    continue
                rows["peer"] = peer
            elif name == "official":
                rows["official"] = official_row(cfg, data, device)
            else:
                rows[name] = trainer_row(*specs[name])
        except Exception as e:  # noqa: BLE001 -- see drop()
            drop(name, "build", e)

    times: dict[str, list[float]] = {k: [] for k in rows}
    warmup_s, peak_gpu_rows = {}, {}
    for name, fn in list(rows.items()):  # warm-up (allocator, kernels, workers; compiled rows compile here)
        t0 = time.perf_counter()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        try:
            for _ in range(3):  # CUDA graphs: a warm-up call, then the recording, then replays
                fn()
            sync(device)
        except Exception as e:  # noqa: BLE001 -- see drop()
            drop(name, "warm-up", e)
            continue
        warmup_s[name] = time.perf_counter() - t0
        if device.type == "cuda":  # this row's steps (and whatever earlier rows still hold)
            peak_gpu_rows[name] = torch.cuda.max_memory_allocated(device) / 2**20
        print(f"warm-up {name}: {warmup_s[name]:.1f} s", flush=True)
    for r in range(args.rounds):
        for name, fn in list(rows.items()):
            try:
                sync(device)
                t0 = time.perf_counter()
                for _ in range(args.steps):
                    loss = fn()
                loss.item()  # wait for the last step
                sync(device)
            except Exception as e:  # noqa: BLE001 -- see drop()
                drop(name, "timing", e)
                continue
            times[name].append(args.steps * B / (time.perf_counter() - t0))
        # as it goes, in case the run is stopped before the table (gpu_check's timeout)
        print(f"round {r + 1}: " + ", ".join(f"{k} {times[k][-1]:.0f}" for k in rows), flush=True)
    times = {k: v for k, v in times.items() if k in rows}

    syncs, sync_errors = {}, {}
    for name, fn in rows.items():  # after the timing: warm
        try:
            syncs[name] = count_syncs(fn, device)
        except Exception as e:  # noqa: BLE001 -- the row's timing stands
            syncs[name] = None
            sync_errors[name] = f"{type(e).__name__}: {e}"
    ips = {k: statistics.median(v) for k, v in times.items()}
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if device.type == "cuda":
        peak_gpu = torch.cuda.max_memory_allocated(device) / 2**20
    print(f"\n{cfg.model.arch} width {cfg.model.width}, batch {B}, {cfg.data.image_size} px, device {device}, "
          f"amp {dtype}, bn_splits {cfg.model.bn_splits}, K {cfg.moco.queue_size}, torch {torch.__version__}")
    print(f"{'row':18s} {'img/s':>9s}   {'host syncs/step':>15s}   rounds")
    for k, v in ips.items():
        sy = "-" if syncs[k] is None else str(syncs[k])
        print(f"{k:18s} {v:9.0f}   {sy:>15s}   " + " ".join(f"{x:.0f}" for x in times[k]))
    result = {"limit_img_s": ips.get("limit"), "mocolab_img_s": ips.get("mocolab"), "pil_img_s": ips.get("pil"),
              "peer_img_s": ips.get("peer"), "compiled_img_s": ips.get("compiled"), "peak_rss_mb": peak,
              "mocolab_compiled_img_s": ips.get("mocolab_compiled"), "warmup_s": warmup_s,
              "compiled_eager_aug_img_s": ips.get("compiled_eager_aug"),
              "compiled_cudagraphs_img_s": ips.get("compiled_cudagraphs"), "host_syncs_per_step": syncs,
              "failed_rows": failed, "sync_count_errors": sync_errors, "device": str(device), "arch": cfg.model.arch,
              "img_s": ips, "peak_gpu_mb": peak_gpu_rows,
              "width": cfg.model.width, "batch_size": B, "amp": str(dtype)}
    for key, num, den, label in [("mocolab_over_limit", "mocolab", "limit", "(b)/(a) mocolab / limit"),
                                 ("compiled_over_limit", "compiled", "limit", "compiled / limit"),
                                 ("cudagraphs_over_compiled", "compiled_cudagraphs", "compiled",
                                  "compiled_cudagraphs / compiled"),
                                 ("mocolab_over_peer", "mocolab", "peer", "(b)/(d) mocolab / peer"),
                                 ("mocolab_over_official", "mocolab", "official", "(b) mocolab / official demo"),
                                 ("compiled_over_peer", "mocolab_compiled", "peer", "mocolab_compiled / peer"),
                                 ("compiled_e2e_over_limit", "mocolab_compiled", "compiled",
                                  "mocolab_compiled / compiled"),
                                 ("aug_compile_gain", "mocolab_compiled", "compiled_eager_aug",
                                  "mocolab_compiled / compiled_eager_aug")]:
        if num in ips and den in ips:
            result[key] = ips[num] / ips[den]
            print(f"{label:38s} = {result[key]:.3f}")
    if "health" in ips and "mocolab" in ips:
        # seconds per step with and without the figures; a run computes them every run.log_every steps
        step_s = B / ips["mocolab"]
        extra = B / ips["health"] - step_s
        # the figures alone, timed on a batch of this size (the rows' difference is within their noise)
        from mocolab.health import figures
        q = torch.nn.functional.normalize(torch.randn(B, cfg.model.dim, device=device), dim=1)
        k = torch.nn.functional.normalize(q + 0.1 * torch.randn_like(q), dim=1)
        figures(q, k)
        t0 = time.perf_counter()
        for _ in range(50):
            out = figures(q, k)
        out["effective_rank"].item()
        alone = (time.perf_counter() - t0) / 50
        result.update(health_row_extra_per_step_s=extra, health_figures_s=alone,
                      health_share_at_log_every=alone / cfg.run.log_every / step_s)
        print(f"{'health every step / mocolab':38s} = {ips['health'] / ips['mocolab']:.3f}")
        print(f"{'health figures alone, per call':38s} = {1000 * alone:.2f} ms (a step: {1000 * step_s:.0f} ms)")
        print(f"{'health cost at run.log_every=' + str(cfg.run.log_every):38s} = "
              f"{100 * result['health_share_at_log_every']:.3f} % of the step time")
    for k, why in failed.items():
        print(f"{k:18s} failed in its {why}")
    for k, why in sync_errors.items():
        print(f"{k:18s} (host syncs not counted: {why})")
    print(f"peak RSS {peak:.0f} MB" + (f", peak GPU memory {peak_gpu:.0f} MB" if device.type == "cuda" else ""))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
