"""What every command uses: the device, AMP, seeding, the output folder's checks, the data
order of an epoch, and the errors that stop a run."""

from __future__ import annotations

import json
import random
import shutil
import signal
import subprocess
import threading
from pathlib import Path

import numpy as np
import torch


class NonFiniteLoss(RuntimeError):
    pass


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
        raise ValueError(f"run.device={name} but no CUDA device is available")
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
        raise OSError(f"cannot write to the output folder {out}: {e.strerror or e}") from None
    free = shutil.disk_usage(out).free
    if free < 200 * 2**20:
        raise OSError(f"only {free / 2**20:.0f} MiB free under {out}; checkpoints need more")


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


def read_json(path: str | Path) -> dict:
    """A JSON file's object, or {} when it is missing or unreadable (a result still being written)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}


def check_positive(args, names) -> None:
    """Command-line numbers that must be > 0 (when given), as one-line errors (ValueError)."""
    for name in names:
        v = getattr(args, name, None)
        if v is not None and v <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be positive, got {v}")

