"""Kill -9 a real pretraining at random moments, resume each time, compare with an uninterrupted run.

    python benchmarks/faults.py --data ../shared/data/cifar10 [--kills 20] [--method moco|e2e|bank] [--json faults.json]

1. An uninterrupted reference run (small CIFAR subset, width-8 ResNet-18, one thread, so that
   the arithmetic is deterministic).
2. The same run, started with `--resume auto` again and again, each time killed with SIGKILL
   at a random moment: once it has passed a random step (20 steps drawn over the run), a random
   fraction of a step later, or (every third kill) as soon as a checkpoint is being written.
3. After the last kill it runs to the end; its final checkpoint is compared with the
   reference's: the method's state (encoders, queue or bank), optimizer, progress and RNG states
   (the bank's draws included), bit for bit.

It prints how many resumes succeeded, how many checkpoint files failed to load, and whether the
final state is bit-identical; --json also writes resumes_ok, resumes_total, corrupt_checkpoints
and bit_identical.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import torch

from mocolab.checkpoint import CheckpointError, safe_load

RUN = ["model.width=8", "model.hidden_dim=32", "model.dim=16", "model.bn_splits=4", "data.limit=512",
       "optim.batch_size=32", "moco.queue_size=256", "run.checkpoint_every=3", "run.keep_checkpoints=2",
       "run.log_every=1", "run.amp=off", "run.channels_last=false", "run.threads=1", "data.workers=0"]


def command(data: str, out: Path, epochs: int, method: str = "moco") -> list[str]:
    return [sys.executable, "-m", "mocolab", "pretrain", "--data", data, "--out", str(out), "--epochs", str(epochs),
            "--resume", "auto", *RUN, f"moco.method={method}"]


def start(cmd: list[str], log: Path, env: dict) -> subprocess.Popen:
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(log, "w"), env=env)


def temp_files(ckdir: Path) -> set:
    """(name, mtime) of the checkpoint temp files: one that is new is a write in progress."""
    out = set()
    for p in ckdir.glob(".*.tmp") if ckdir.is_dir() else []:
        try:
            out.add((p.name, p.stat().st_mtime_ns))
        except FileNotFoundError:  # renamed meanwhile
            pass
    return out


def logged_step(metrics: Path) -> int:
    try:
        lines = metrics.read_text().splitlines()
        return json.loads(lines[-1])["step"] if lines else 0
    except (FileNotFoundError, json.JSONDecodeError, KeyError):  # not there yet, or half a line
        return 0


def equal(a, b) -> bool:
    """Bit-for-bit equality of nested checkpoint contents."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(equal(x, y) for x, y in zip(a, b))
    return a == b


def compare(ref: dict, got: dict) -> list[str]:
    """Names of the parts that differ (wall-clock fields excepted)."""
    bad = [k for k in ("model", "optimizer", "rng", "skipped") if not equal(ref.get(k), got.get(k))]
    timing = {"elapsed", "train_seconds"}
    pr, pg = ({k: v for k, v in s["progress"].items() if k not in timing} for s in (ref, got))
    return bad + ([] if pr == pg else ["progress"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "cifar10"))
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", default="/tmp/mocolab_faults")
    ap.add_argument("--method", default="moco", choices=["moco", "e2e", "bank"], help="moco.method of the run")
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    work = Path(args.workdir)
    subprocess.run(["rm", "-rf", str(work)], check=True)
    work.mkdir(parents=True)
    env = {**os.environ, "MOCOLAB_CACHE": str(work / "cache"), "PYTHONPATH": str(ROOT / "src")}

    t0 = time.time()
    ref = start(command(args.data, work / "ref", args.epochs, args.method), work / "ref.log", env)
    if ref.wait() != 0:
        print((work / "ref.log").read_text()[-2000:])
        return 1
    duration = time.time() - t0
    print(f"reference run: {duration:.1f}s")

    out, ckdir = work / "faulted", work / "faulted" / "checkpoints"
    total = safe_load(work / "ref" / "checkpoints" / "final.pth")["progress"]["step"]
    targets = sorted(rng.sample(range(1, total), args.kills))  # kill once past these steps
    step_s = duration / total
    resumes_ok, kills, during_write, corrupt = 0, 0, 0, set()
    for i in range(args.kills + 1):
        log = work / f"attempt_{i:02d}.log"
        p = start(command(args.data, out, args.epochs, args.method), log, env)
        if i == args.kills:  # the last attempt runs to the end
            rc = p.wait()
            resumes_ok += rc == 0 and "Traceback" not in log.read_text()
            print(f"attempt {i}: ran to the end with code {rc}")
            break
        deadline = time.time() + 4 * duration
        while logged_step(out / "metrics.jsonl") < targets[i] and p.poll() is None and time.time() < deadline:
            time.sleep(0.002)
        if i % 3 == 2:  # as soon as a checkpoint is being written
            old = temp_files(ckdir)
            while not temp_files(ckdir) - old and p.poll() is None and time.time() < deadline:
                time.sleep(0.0002)
        else:
            time.sleep(rng.uniform(0, step_s))
        if p.poll() is not None:  # it finished (or failed) before the kill
            print(f"attempt {i}: ended by itself with code {p.returncode}")
        else:
            before = temp_files(ckdir)
            p.send_signal(signal.SIGKILL)
            p.wait()
            kills += 1
            during_write += bool(before) and before == temp_files(ckdir)  # a temp file left behind
            print(f"attempt {i}: killed past step {targets[i]}" + (" during a checkpoint write" if i % 3 == 2 else ""))
        text = log.read_text()  # a resume fails if it errs (killed during start-up is no failure)
        failed = "Traceback" in text or "mocolab: error" in text or p.returncode not in (0, -signal.SIGKILL)
        resumes_ok += i > 0 and not failed
        for f in ckdir.glob("*.pth") if ckdir.is_dir() else []:
            try:
                safe_load(f)
            except CheckpointError:
                corrupt.add(f.name)
    print(f"kills: {kills} ({during_write} during a checkpoint write)")

    final_ref = safe_load(work / "ref" / "checkpoints" / "final.pth")
    final_path = ckdir / "final.pth"
    diff = compare(final_ref, safe_load(final_path)) if final_path.is_file() else ["no final checkpoint"]
    result = {"resumes_ok": int(resumes_ok), "resumes_total": args.kills, "corrupt_checkpoints": len(corrupt),
              "bit_identical": not diff, "kills": kills, "kills_during_write": during_write,
              "steps": final_ref["progress"]["step"], "reference_seconds": round(duration, 1)}
    print(f"resumes: {resumes_ok}/{args.kills} ok; corrupt checkpoints: {len(corrupt)}; "
          f"final state bit-identical: {not diff}" + (f" (differs: {', '.join(diff)})" if diff else ""))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0 if result["bit_identical"] and resumes_ok == args.kills and not corrupt else 1


if __name__ == "__main__":
    sys.exit(main())
