"""The training loop: one `Trainer` that drives any method (mocolab.methods) on any feed alike
and owns the optimizer, data order, schedule, budget, signals, logging and checkpoints.

Lifecycle: `Trainer(cfg, method, train | feed=...)`, optionally `load_state_dict(state)` and
`set_schedule(...)`, then `run()`: fit, write checkpoints/final.pth, close the logs.
`pretrain.py`, the transfer tasks and the classifiers build the objects; this module runs steps.
"""

from __future__ import annotations

import logging
import math
import signal
import threading
import time
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from .. import distributed as du
from ..checkpoint import CheckpointError, rng_state, set_rng_state
from ..config import Config, ConfigError
from ..health import HealthWatch, momentum_window
from ..methods.base import Method
from ..optim import build_optimizer
from ..runtime import NonFiniteLoss, Preempted, epoch_order
from ..schedules import StepBudget, lr_at, scaled_lr
from ..step import train_step
from .checkpoints import CheckpointManager
from .feeds import ViewsFeed
from .logger import MetricsLogger

log = logging.getLogger("mocolab")


@dataclass
class Progress:
    epoch: int = 0  # current epoch (0-based)
    it: int = 0  # next step within the epoch
    step: int = 0  # global steps done
    total_steps: int = 0  # the schedule's length (re-estimated under a time budget)
    elapsed: float = 0.0  # training seconds so far (monitors included, start-up excluded)
    images: int = 0  # images (pairs of views) trained on
    train_seconds: float = 0.0  # seconds spent in training steps only (for img/s)


class Trainer:
    def __init__(self, cfg: Config, method: Method, train, device: torch.device,
                 out: Path | None, autocast_dtype: torch.dtype | None, monitor=None, feed=None):
        """train: the images to pretrain on (TensorData | FileList | ShardStream), fed as augmented
        views (engine.feeds.ViewsFeed); or None with `feed`: an object with len() (samples) and
        batches(order, start, epoch) -> iterator of (views, index) for this rank (the transfer
        tasks' and the classifiers' labeled feeds). With a feed, cfg needs only its optim and run
        groups (and to_dict). monitor: callable(method) -> dict, run every run.knn_every epochs."""
        pretraining = feed is None
        if pretraining:
            feed = ViewsFeed(cfg, method, train, device)
        self.cfg, self.method, self.feed, self.device, self.out = cfg, method, feed, device, out
        self.monitor = monitor
        o = cfg.optim
        self.base_lr = scaled_lr(o.lr, o.batch_size, o.base_batch_size)
        self.optimizer = build_optimizer(method.learnable_params(), o, self.base_lr)
        self.batch = o.batch_size  # global: each of the W ranks takes its slice of every batch
        self.world, self.rank = du.world_size(), du.rank()
        if self.batch % self.world:
            raise ConfigError(f"the batch ({self.batch}) must be divisible by the number of processes ({self.world})")
        self.local_batch = self.batch // self.world
        self.steps_per_epoch = len(feed) // self.batch
        if self.steps_per_epoch == 0:
            raise ConfigError(f"optim.batch_size={self.batch} is larger than the dataset ({len(feed)} images)")
        self.warmup_steps = int(round(o.warmup_epochs * self.steps_per_epoch))
        self.budget_s = cfg.run.budget_minutes * 60.0
        self.budget = StepBudget(self.budget_s, start_step=0)  # restarted by fit() from the resumed step
        self.progress = Progress(total_steps=self.steps_per_epoch * cfg.run.epochs)
        self.gen = torch.Generator()  # augmentation + shuffle BN; seeded by (seed, step, rank) each step
        feed.generator = self.gen  # the feed's augmentation draws from it (exact resume)
        self.net = method  # what the step calls: DistributedDataParallel(method) under torchrun (see fit)
        self.autocast_dtype = autocast_dtype
        self.logger = MetricsLogger(out)
        self.checkpoints = CheckpointManager(out, cfg.run.keep_checkpoints, self.steps_per_epoch)
        self.history: list[dict] = []  # monitor results (saved in checkpoints)
        self.records: list[dict] = []  # this process's log lines
        # the run's first and latest log lines (saved: a resumed or finished run still reports its
        # first and final loss)
        self.first_log: dict | None = None
        self.last_log: dict | None = None
        self.on_log = None  # optional callable(record) for each log line
        # optional callable(total_steps), once, when a time budget's first estimate of the schedule's
        # length is made (moco.m=auto and moco.queue_size=auto are resolved then)
        self.on_schedule = None
        self.stop_signal: int | None = None  # set by SIGTERM/SIGINT: finish the step, save, exit
        self.stop_agreed = False  # under torchrun: some rank got a signal (agreed at log steps)
        self.budget_over = False  # under torchrun: rank 0's time budget is spent (agreed at log steps)
        self.skipped = 0  # non-finite steps skipped (run.skip_nonfinite)
        # pretraining's health figures and warnings (mocolab.health)
        self.watch = None
        if pretraining and cfg.run.health:
            self.watch = HealthWatch(method.chance_loss(self.batch), cfg.model.dim, self.warmup_steps)

    def set_schedule(self, total_steps: int | None = None, warmup_steps: int | None = None) -> None:
        """The schedule's length and its warm-up, in steps (the transfer tasks count iterations;
        a resumed run's --epochs may differ from its checkpoint's)."""
        if total_steps is not None:
            self.progress.total_steps = total_steps
        if warmup_steps is not None:
            self.warmup_steps = warmup_steps
            if self.watch is not None:
                self.watch.warmup_steps = warmup_steps

    def autocast(self):
        """The run's autocast context (bf16/fp16 with run.amp, else a disabled one)."""
        return torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.bfloat16,
                              enabled=self.autocast_dtype is not None)

    def run(self) -> Progress:
        """fit(), then checkpoints/final.pth (rank 0's BN statistics on every rank), and the logs
        closed whatever happens (Preempted, NonFiniteLoss and errors go to the caller)."""
        try:
            self.fit()  # raises Preempted (checkpoint written) on SIGTERM/SIGINT
            du.broadcast_buffers(self.method)
            self.save("final.pth")
        finally:
            self.logger.close()
        return self.progress

    def summary(self) -> dict:
        """What every run's summary.json starts with: progress, speed, precision, device."""
        p, dtype = self.progress, self.autocast_dtype
        health = {"health_warnings": list(self.watch.raised.values())} if self.watch is not None else {}
        return {
            **health,
            "epochs": p.step / self.steps_per_epoch,
            "steps": p.step,
            "batch_size": self.batch,
            "images_per_second": p.images / max(p.train_seconds, 1e-9),
            "train_seconds": p.elapsed,
            "amp": str(dtype).replace("torch.", "") if dtype else "off",
            "device": str(self.device),
            "processes": self.world,
        }

    # -- state ---------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "model": self.method.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "progress": asdict(self.progress),
            "rng": rng_state({"aug": self.gen, **self.method.generators()}),
            "config": self.cfg.to_dict(),
            "history": self.history,
            "skipped": self.skipped,
            "logs": {"first": self.first_log, "last": self.last_log},
            "health": self.watch.state_dict() if self.watch is not None else None,
        }

    def load_state_dict(self, state: dict) -> None:
        try:
            self.method.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as e:  # another method, backbone, bank size or task
            raise CheckpointError(f"the checkpoint does not fit this run (another method, model, data size or "
                                  f"task setting?): {str(e).splitlines()[0]}") from None
        self.progress = Progress(**state["progress"])
        set_rng_state(state["rng"], {"aug": self.gen, **self.method.generators()})
        self.history = list(state.get("history", []))
        self.skipped = int(state.get("skipped", 0))
        logs = state.get("logs") or {}
        self.first_log, self.last_log = logs.get("first"), logs.get("last")
        if self.watch is not None and state.get("health"):
            self.watch.load_state_dict(state["health"])

    def save(self, name: str) -> Path | None:
        """checkpoints/<name> with the full state (rank 0); the newest run.keep_checkpoints
        periodic ones are kept."""
        if self.out is None or not du.is_main():
            return None
        return self.checkpoints.save(self.state_dict(), name)

    @contextmanager
    def _graceful_signals(self):
        """SIGTERM and SIGINT ask the loop to stop after the current step; a second SIGINT
        interrupts at once."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum, frame):
            self.stop_signal = signum
            signal.signal(signal.SIGINT, signal.default_int_handler)

        old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield
        finally:
            for s, h in old.items():
                signal.signal(s, h)

    # -- schedule and budget -------------------------------------------------------------
    def _reestimate(self, total: int) -> None:
        """Under a time budget the schedule's length follows the measured speed (StepBudget);
        under torchrun rank 0's estimate is everyone's."""
        if self.world > 1:
            total = int(du.broadcast(torch.tensor([total], device=self.device), 0).item())
        self.progress.total_steps = total
        if self.on_schedule is not None:
            self.on_schedule(total)
            self.on_schedule = None

    def _done(self) -> bool:
        """Every rank answers the same: under torchrun only agreed values are used."""
        p = self.progress
        if self.stop_agreed or (self.world == 1 and self.stop_signal is not None):
            return True
        if self.budget_over if self.world > 1 else self.budget.spent(p.elapsed):
            return True
        return p.step >= p.total_steps

    def _saves_epoch(self, epoch: int) -> bool:
        """Whether fit() writes a checkpoint at the end of `epoch` (1-based): every run.save_every."""
        every = self.cfg.run.save_every
        return bool(every) and epoch % every == 0

    def _step_seed(self, step: int) -> int:
        """The augmentation/shuffle seed of a step on this rank: a resumed run, on any number
        of ranks, draws what an uninterrupted one would."""
        return ((self.cfg.run.seed % 2**19) << 44) | ((step % 2**32) << 12) | (self.rank % 2**12)  # < 2**63

    # -- the loop ------------------------------------------------------------------------
    def fit(self) -> Progress:
        cfg, p = self.cfg, self.progress
        if self.budget_s > 0 and p.step == 0:
            p.total_steps = 10**9  # set from the measured speed after the first steps
        bar = tqdm(total=None, disable=not du.is_main(), dynamic_ncols=True, unit="step",
                   initial=p.step, mininterval=2.0)
        self.method.train()
        self.budget = StepBudget(self.budget_s, start_step=p.step)  # step time measured from here + 5 on
        if du.is_dist() and self.net is self.method:  # gradients averaged over ranks
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = du.ddp(self.method, ids)
        try:
            with self._graceful_signals():
                while not self._done():
                    self.train_one_epoch(bar)
                    if p.it == self.steps_per_epoch:  # a full epoch: next epoch, checkpoint, monitor
                        p.epoch, p.it = p.epoch + 1, 0
                        du.broadcast_buffers(self.method)  # rank 0's BN statistics, for the monitor and the save
                        if cfg.run.knn_every and p.epoch % cfg.run.knn_every == 0 and self.monitor and not self._done():
                            t0 = time.perf_counter()
                            result = self.monitor(self.method)
                            p.elapsed += time.perf_counter() - t0
                            self.history.append({"epoch": p.epoch, "step": p.step, **result})
                            rec = {"epoch": p.epoch, "step": p.step, "elapsed_s": p.elapsed, **result}
                            self._health_warnings(rec, pretext_acc=(self.last_log or {}).get("pretext_acc"))
                            self.logger.write(rec, p.step)
                            bar.write(f"epoch {p.epoch}: {result}")
                        if self._saves_epoch(p.epoch):
                            self.save(f"epoch_{p.epoch:04d}.pth")
        finally:
            bar.close()
        if self.stop_agreed or (self.world == 1 and self.stop_signal is not None):
            du.broadcast_buffers(self.method)
            path = self.save(f"step_{p.step:08d}.pth")
            raise Preempted(f"stopped by {signal.Signals(self.stop_signal or signal.SIGTERM).name} "
                            f"after step {p.step}; checkpoint {path}; continue with --resume auto")
        return p

    def train_one_epoch(self, bar) -> None:
        cfg = self.cfg
        p = self.progress
        method = self.method
        order = epoch_order(len(self.feed), cfg.run.seed, p.epoch)
        B, dev = self.batch, self.device
        losses: list[torch.Tensor] = []  # this log window's losses, on the device; read at log time only
        logs: dict[str, list[torch.Tensor]] = {}  # the method's logs (pretext_acc), likewise
        n_log, t_log = 0, time.perf_counter()
        views = self.feed.batches(order, p.it, p.epoch)
        t0 = time.perf_counter()
        while p.it < self.steps_per_epoch and not self._done():
            self.gen.manual_seed(self._step_seed(p.step))
            batch = next(views, None)  # augmented views, b x 3 x S x S each (b = B / ranks), and indices
            if batch is None:  # the loader ran short (unreadable images were skipped)
                p.it = self.steps_per_epoch
                break
            x, index = batch
            lr = lr_at(p.step, p.total_steps, self.base_lr, cfg.optim.schedule, cfg.optim.milestones, self.warmup_steps)
            for group in self.optimizer.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)
            m = method.momentum(p.step / p.total_steps)
            # the health figures: on the first step of each log line's window
            health = self.watch is not None and n_log == 0
            loss, step_logs = train_step(method, self.optimizer, x, m=m, index=index, autocast=self.autocast(),
                                         generator=self.gen, skip_nonfinite=cfg.run.skip_nonfinite > 0, net=self.net,
                                         health=health)
            for k, v in step_logs.items():
                logs.setdefault(k, []).append(v)
            if cfg.run.skip_nonfinite and not math.isfinite(loss.item()):  # train_step changed nothing
                self.skipped += 1
                warnings.warn(f"skipped step {p.step + 1} (epoch {p.epoch}): loss {loss.item()} "
                              f"({self.skipped} of at most {cfg.run.skip_nonfinite})", stacklevel=2)
                if self.skipped > cfg.run.skip_nonfinite:
                    raise NonFiniteLoss(f"more than run.skip_nonfinite={cfg.run.skip_nonfinite} steps had a "
                                        f"non-finite loss (the last at step {p.step + 1}); the last checkpoint is kept")
            else:
                losses.append(loss)
            n_log += 1
            p.it, p.step, p.images = p.it + 1, p.step + 1, p.images + B
            t1 = time.perf_counter()
            p.elapsed += t1 - t0
            p.train_seconds += t1 - t0
            t0 = t1
            total = self.budget.total_steps(p.step, p.train_seconds, p.elapsed)
            if total is not None:
                self._reestimate(total)
            fit_saves = p.it == self.steps_per_epoch and self._saves_epoch(p.epoch + 1)
            save_now = cfg.run.checkpoint_every and p.step % cfg.run.checkpoint_every == 0 and not fit_saves
            if n_log == cfg.run.log_every or p.it == self.steps_per_epoch or self._done() or save_now:
                # checked before every save, so that no checkpoint ever holds a diverged model
                window = torch.stack(losses) if losses else torch.full((0,), 0.0, device=dev)
                if self.world > 1:  # every rank sees the global mean loss and any rank's signal
                    du.all_reduce(window, "mean")
                    over = self.budget.spent(p.elapsed)
                    flags = du.all_reduce(
                        torch.tensor([float(self.stop_signal is not None), float(over)], device=dev), "max")
                    self.stop_agreed, self.budget_over = (bool(f) for f in flags.tolist())
                self._check_finite(window)  # the only host sync, at log intervals
                mean_loss = window.mean().item() if losses else float("nan")
                ips = n_log * B / (time.perf_counter() - t_log)
                rec = {"epoch": p.epoch, "step": p.step, "loss": mean_loss, "lr": lr, "img_per_s": ips,
                       "epoch_float": p.step / self.steps_per_epoch, "elapsed_s": p.elapsed, **self._mean_logs(logs)}
                if method.momentum_pairs():
                    rec["m"] = m
                    if "key_age" in rec and m < 1:
                        rec["key_window"] = momentum_window(m)
                if self.watch is not None:
                    rec["chance_loss"] = self.watch.chance  # ln(K + 1)
                self._health_warnings(rec)
                self.logger.write(rec, p.step)
                self.records.append(rec)
                self.first_log, self.last_log = self.first_log or rec, rec
                if self.on_log is not None:
                    self.on_log(rec)
                bar.set_postfix(ep=f"{rec['epoch_float']:.2f}", loss=f"{mean_loss:.3f}", lr=f"{lr:.3g}",
                                img_s=f"{ips:.0f}")
                bar.update(n_log)
                losses.clear()
                logs.clear()
                n_log, t_log = 0, time.perf_counter()
            if save_now:
                self.save(f"step_{p.step:08d}.pth")  # the epoch ends of run.save_every are saved by fit()
        if losses:  # steps since the last log (the loop ended early): checked before fit() saves
            self._check_finite(torch.stack(losses))

    def _health_warnings(self, rec: dict, **extra) -> None:
        """Adds to rec (a log line or a kNN monitor) the health warnings it raises for the first
        time, and logs each. extra: figures the check needs that rec lacks."""
        if self.watch is None:
            return
        new = self.watch.check({**extra, **rec})
        for text in new:
            log.warning("health: %s", text)
        if new:
            rec["warnings"] = new

    def _mean_logs(self, logs: dict[str, list[torch.Tensor]]) -> dict[str, float]:
        """The log window's mean of each of the method's logs (over ranks too)."""
        if not logs:
            return {}
        means = torch.stack([torch.stack(v).float().mean() for v in logs.values()])
        if self.world > 1:
            du.all_reduce(means, "mean")
        return dict(zip(logs, means.tolist()))

    def _check_finite(self, window: torch.Tensor) -> None:
        """window: the losses of the steps that end at the current step. Stops at a NaN/Inf,
        naming its step; called before every save, so no checkpoint holds a diverged model."""
        finite = torch.isfinite(window).tolist()
        if not all(finite):
            p, i = self.progress, finite.index(False)
            bad = p.step - len(finite) + i + 1  # the window's first bad step
            raise NonFiniteLoss(f"loss became {window[i].item()} at step {bad} (epoch {p.epoch}); nothing was "
                                "saved after it and the last checkpoint is kept; try a lower optim.lr, or "
                                "run.skip_nonfinite=N")
