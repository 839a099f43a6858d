"""What every command uses: the device, AMP, seeding, the output folder's checks, the data
order of an epoch, and the errors that stop a run."""

from __future__ import annotations

import atexit
import fcntl
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import torch

from .errors import PathError, UsageError, UserError
from .runfiles import read_json, read_yaml, write_json


class NonFiniteLoss(UserError, RuntimeError):
    """The loss stopped being finite (a diverging learning rate): a one-line error."""


class Preempted(RuntimeError):
    """SIGTERM/SIGINT: the current step was finished and a checkpoint written."""

    exit_code = 75  # EX_TEMPFAIL: "try again" (a scheduler may requeue with --resume auto)


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The data order of an epoch: a permutation that depends on (seed, epoch) only, so a
    resumed run replays it exactly."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"run.device={name} but no CUDA device is available")
    return dev


def cpu_has_fast_bf16() -> bool:
    """AMX (Sapphire Rapids and later): bf16 convolutions beat float32 on the CPU."""
    try:
        return bool(torch._C._cpu._init_amx()) and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    except (AttributeError, RuntimeError):
        return False


def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    if amp == "off":
        return None
    if amp == "bf16" or device.type == "cuda" or cpu_has_fast_bf16():
        return torch.bfloat16
    return None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def check_out_dir(out: Path) -> None:
    """Fails before any training if the run folder cannot be written or the disk is full."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write_test"
        probe.write_bytes(b"x")
        probe.unlink()
    except OSError as e:
        raise PathError(f"cannot write to the output folder {out}: {e.strerror or e}") from None
    free = shutil.disk_usage(out).free
    if free < 200 * 2**20:
        raise PathError(f"only {free / 2**20:.0f} MiB free under {out}; checkpoints need more")


RUN_FILES = ("config.yaml", "summary.json", "checkpoints", "backbone.pth", "metrics.jsonl")

RESUME_HELP = ("a checkpoint to continue from, a run folder (its newest valid checkpoint), or 'auto' "
               "(the newest valid in --out; none there: a new run)")
RUN_OVERWRITE_HELP = ("replace the run in --out: its contents are first moved aside, as a whole, to "
                      "OUT.replaced-<timestamp>/ (delete that folder when no longer needed); without it, "
                      "a folder holding another run is refused")


def run_command(out: Path) -> str | None:
    """The command that made the run in `out` (`pretrain`, `supervised`, `detect`, `segment`), from
    its command.json, else its config.yaml (runs older than command.json); None if unknown."""
    meta = read_json(out / "command.json")
    if isinstance(meta.get("command"), str) and meta["command"]:
        return meta["command"]
    task = read_yaml(out / "config.yaml").get("task")
    kind = task.get("kind") if isinstance(task, dict) else None
    return kind if isinstance(kind, str) else None


# -- the run folder's lock ----------------------------------------------------------------------
LOCK_FILE = ".lock"
_LOCKS: dict[Path, int] = {}  # run folder (resolved) -> the open fd holding its OUT/.lock (flock)


class RunFolderBusy(UsageError):
    """Another process holds the run folder's lock."""


def _release(key: Path) -> None:
    fd = _LOCKS.pop(key, None)
    if fd is not None:
        os.close(fd)  # closing the only fd of the open file releases the flock


def release_run_dirs() -> None:
    """Releases every run folder lock this process holds (at exit; the OS does it on a kill too)."""
    for key in list(_LOCKS):
        _release(key)


atexit.register(release_run_dirs)


def lock_run_dir(out: str | Path) -> None:
    """Takes OUT/.lock for the rest of the process (rank 0 only): an exclusive, non-blocking
    fcntl.flock, with this process's PID and host written in the file. A second process on the
    same folder gets one line naming the holder (RunFolderBusy). The OS releases the lock when
    the holder ends, killed with kill -9 too, so no stale lock stays; taking it again in the same
    process is a no-op."""
    if int(os.environ.get("RANK", "0")) > 0:
        return
    out = Path(out).expanduser()
    try:
        out.mkdir(parents=True, exist_ok=True)
        key = out.resolve()
        path = key / LOCK_FILE
        if (fd := _LOCKS.get(key)) is not None:
            held, now = os.fstat(fd), os.stat(path) if path.exists() else None
            if now is not None and (held.st_dev, held.st_ino) == (now.st_dev, now.st_ino):
                return
            _release(key)  # the folder was moved or deleted under this process: lock the one there now
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise PathError(f"cannot write to the output folder {out}: {e.strerror or e}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # BlockingIOError: held by another process
        holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "a process that has not written its PID yet"
        os.close(fd)
        raise RunFolderBusy(f"{out} is in use by another mocolab process ({holder}): wait for it to end, stop it, "
                            "or give another --out") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"PID {os.getpid()} on host {socket.gethostname()}\n".encode(), 0)
    _LOCKS[key] = fd


def move_aside(path: Path) -> Path:
    """Renames `path` (a folder) to PATH.replaced-<timestamp>[-N] beside it -> the new name; nothing
    is deleted (the user deletes it when no longer needed)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    aside, n = path.with_name(f"{path.name}.replaced-{stamp}"), 1
    while aside.exists():
        n += 1
        aside = path.with_name(f"{path.name}.replaced-{stamp}-{n}")
    os.rename(path, aside)
    return aside


def check_run_path(out: str | Path) -> Path:
    """--out as given -> Path; UsageError unless a proper folder path: not empty, not the current
    folder nor one of its parents (the run would be written among, or moved aside with, the
    user's other files)."""
    if not str(out).strip():
        raise UsageError("--out is empty: give a folder for the run (e.g. --out runs/NAME)")
    path = Path(out).expanduser()
    here, where = Path.cwd().resolve(), path.resolve()
    if where == here or where in here.parents:
        what = "the current folder" if where == here else "a parent of the current folder"
        raise UsageError(f"--out {out} is {what}: give the run a folder of its own (e.g. --out runs/NAME)")
    return path


def prepare_run_dir(out: str | Path, command: str, resume: bool = False, overwrite: bool = False) -> None:
    """The run folder guard of pretrain, supervised, detect and segment (rank 0 only), called before
    anything is written: `out` must be a proper folder path (check_run_path) and is locked for the
    rest of the process (lock_run_dir: a second process on it is one line naming the holder). A
    folder that already holds a run's files is refused (one line naming them, UsageError), unless `resume`
    continues a run of the same command there, or `overwrite`: the old contents are then moved aside,
    as a whole, to OUT.replaced-<timestamp>/ (nothing of the old run stays in OUT). Records the
    command in OUT/command.json."""
    if int(os.environ.get("RANK", "0")) > 0:
        return
    out = check_run_path(out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file; give a folder for the run")
    if resume and overwrite:
        raise UsageError("--resume continues the run in --out, --overwrite replaces it: give one of them")
    lock_run_dir(out)  # before anything is read or written: one process per run folder
    present = [n for n in RUN_FILES if (out / n).exists()]
    if present:
        made_by = run_command(out)
        what = f"a `mocolab {made_by}` run" if made_by else "a run"
        if overwrite:
            old_lock = _LOCKS.pop(out.resolve())
            aside = move_aside(out)  # the lock file goes along, still held: no other process slips in
            try:
                lock_run_dir(out)
            finally:
                os.close(old_lock)
                (aside / LOCK_FILE).unlink(missing_ok=True)
            logging.getLogger("mocolab").warning("--overwrite: moved the previous run in %s aside to %s", out, aside)
        elif resume:
            if made_by is not None and made_by != command:
                raise UsageError(f"{out} holds {what}, not a `mocolab {command}` run: --resume continues a run "
                                 "of the same command; give another --out")
        else:
            raise UsageError(f"{out} already holds {what} ({', '.join(present)}): pass --resume auto to continue "
                             "it, --overwrite to move it aside (to OUT.replaced-<timestamp>/), or another --out")
    try:
        if not (out / "command.json").exists():
            write_json(out / "command.json", {"command": command}, indent=None)
    except OSError:
        pass  # check_out_dir reports an unwritable folder


def run_process(cmd: list[str]) -> int:
    """Runs a mocolab command as a child process (a sweep's or compare's cell) -> its exit code.
    SIGTERM is passed on (-> 75 once the child has saved); on Ctrl-C (which the child, in the
    same process group, gets too) the child is asked to stop and waited for, so it writes its
    checkpoint, then KeyboardInterrupt is raised."""
    proc = subprocess.Popen(cmd)
    stopped, interrupted = False, False
    main = threading.current_thread() is threading.main_thread()

    def on_term(signum, frame):
        nonlocal stopped
        stopped = True
        proc.send_signal(signal.SIGTERM)

    old = signal.signal(signal.SIGTERM, on_term) if main else None
    try:
        while True:
            try:
                rc = proc.wait()
                break
            except KeyboardInterrupt:
                interrupted = True
                if proc.poll() is None:  # SIGTERM (not a 2nd SIGINT): stop after the step
                    proc.send_signal(signal.SIGTERM)
    finally:
        if main:
            signal.signal(signal.SIGTERM, old)
    if interrupted:
        raise KeyboardInterrupt
    return Preempted.exit_code if stopped else rc


def data_id(data: str) -> str:
    """A data argument as results record it: the resolved path of a folder, else as given
    (cifar10, a shard pattern)."""
    p = Path(data).expanduser()
    return str(p.resolve()) if p.exists() else data


def check_positive(args, names) -> None:
    """Command-line numbers that must be > 0 (when given), as one-line errors (UsageError)."""
    for name in names:
        v = getattr(args, name, None)
        if v is not None and not 0 < v < float("inf"):
            raise UsageError(f"--{name.replace('_', '-')} must be positive, got {v}")


def check_at_least(args, names, minimum: float, why: str = "") -> None:
    """Command-line numbers that must be >= minimum (when given), as one-line errors (UsageError)."""
    for name in names:
        v = getattr(args, name, None)
        if v is not None and not minimum <= v < float("inf"):
            raise UsageError(f"--{name.replace('_', '-')} must be >= {minimum:g}{why}, got {v}")


def check_arguments(args) -> None:
    """The numeric arguments every command shares, by name: counts, rates and sizes > 0, seeds,
    limits and worker counts >= 0, image sizes >= 8, momenta in [0, 1)."""
    check_positive(args, ("epochs", "batch_size", "lr", "budget_minutes", "k", "t", "iters", "shard_size",
                          "budget_minutes_finetune", "epochs_finetune", "paper_epochs", "paper_budget_minutes",
                          "transfer_budget_minutes", "memory_limit_gb", "chunk_rows"))
    check_at_least(args, ("seed", "limit", "weight_decay", "warmup_epochs", "backbone_lr_scale", "knn_every"), 0)
    check_at_least(args, ("image_size",), 8, " (pixels)")
    m = getattr(args, "momentum", None)
    if m is not None and not 0 <= m < 1:
        raise UsageError(f"--momentum must lie in [0, 1), got {m}")

