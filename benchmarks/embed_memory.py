"""Peak memory of `mocolab embed` against the number of images (issue 27): is it flat in N?

1. For each N (--sizes, default 10k, 50k and 200k) a folder of N images is built under --folder
   (default /tmp/mocolab_embed_bench; never in the repository) from CIFAR-10's 60,000 JPEGs (train
   and test): <class>/<i>.jpg symlinks, cycling through that class's 6,000 files under distinct
   names, N / 10 per class. A folder is reused when its marker says it is complete.
2. `mocolab embed SRC --data DIR --out FILE` runs as a fresh child process per (N, --stream mode),
   writing FILE (.safetensors by default) into a temporary folder. Measured:
   - peak RSS of the command's main process: VmHWM of /proc/self/status, read at its exit by a
     wrapper (atexit), so it covers the writing of FILE too;
   - peak RSS of its largest process (main or a DataLoader worker): os.wait4's ru_maxrss;
   - peak anonymous and file-backed RSS of the main process (RssAnon / RssFile of /proc/PID/status,
     sampled every --poll seconds): a memory-mapped feature store shows up as file pages, which the
     kernel can drop, where features held in memory are anonymous;
   - seconds, and the size of FILE.
3. The slope of each peak against N (a least-squares line, MB per 100k images) is printed beside
   N x D x 4 bytes, what holding the features in memory would cost.

--stream modes: `auto` (the command's default: the N x D float32 features stay in memory while they
fit --memory-limit-gb, 8 GB) and `on` (a memory-mapped store in TMPDIR, written out chunk by chunk).
Threads: OMP_NUM_THREADS (1 on a shared machine). On a busy machine --image-size 8 cuts the forward
pass (most of the CPU time at 32 px) about 16-fold and keeps D, and so the N x D features. Example
(the figures in the notes of h27):

  OMP_NUM_THREADS=1 nice -n 19 python benchmarks/embed_memory.py --image-size 8 --json /tmp/embed_memory.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

# the command in a child, printing its own /proc/self/status (VmHWM: its peak RSS) at exit
WRAPPER = ("import atexit, sys\n"
           "atexit.register(lambda: sys.stderr.write('STATUS ' + ' '.join(''.join(l.split()) for l in "
           "open('/proc/self/status') if l.startswith(('VmHWM', 'VmRSS', 'RssAnon', 'RssFile'))) + '\\n'))\n"
           "sys.argv = ['mocolab'] + sys.argv[1:]\n"
           "from mocolab.cli import main\n"
           "sys.exit(main())\n")

# --dry: the same command with eval.features.extract_features replaced by random unit features of the
# backbone's width (one 1-image forward pass to learn it): no decoding, no forward pass of the images,
# so what is left is the memory of embed's own structures (file list, store, paths, writer)
DRY = ("import torch, torch.nn.functional as F\n"
       "import mocolab.eval.features as feats\n"
       "def fake(net, fl, mean, std, *, size=32, **kw):\n"
       "    d = net(torch.zeros(1, 3, size, size)).shape[1]\n"
       "    return F.normalize(torch.randn(len(fl), d), dim=1), torch.tensor(fl.labels)  # b x D, b\n"
       "feats.extract_features = fake\n")


def build(cifar: Path, folder: Path, n: int) -> Path:
    """folder/n<N>/<class>/<i:07d>.jpg: N / 10 symlinks per class, cycling through the class's CIFAR-10
    train and test JPEGs -> the folder (reused when complete)."""
    dest = folder / f"n{n}"
    marker = dest / ".complete"
    if marker.is_file() and marker.read_text() == str(n):
        return dest
    classes = sorted(d.name for d in (cifar / "train").iterdir() if d.is_dir())
    if not classes:
        raise SystemExit(f"no class folders in {cifar / 'train'}")
    per = n // len(classes)
    for cls in classes:
        files = sorted(p.resolve() for split in ("train", "test") for p in (cifar / split / cls).glob("*.jpg"))
        (dest / cls).mkdir(parents=True, exist_ok=True)
        for i in range(per):
            link = dest / cls / f"{i:07d}.jpg"
            if not link.is_symlink():
                link.symlink_to(files[i % len(files)])
    marker.write_text(str(n))
    return dest


def _status(pid: int) -> dict:
    """RssAnon / RssFile of /proc/PID/status in MB ({} once the process is gone)."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return {}
    return {k: int(v.split()[0]) / 1024 for k, v in (line.split(":", 1) for line in lines)
            if k in ("RssAnon", "RssFile")}


def run_embed(src: str, data: Path, out: Path, stream: str, workers: int | None, poll: float, env: dict,
              image_size: int | None = None, dry: bool = False) -> dict:
    """`mocolab embed` in a fresh child -> seconds, peaks (MB), the file's size and D."""
    argv = [sys.executable, "-c", (DRY if dry else "") + WRAPPER, "embed", src, "--data", str(data), "--out", str(out),
            "--quiet", "--device", "cpu", "--stream", stream]
    if workers is not None:
        argv += ["--workers", str(workers)]
    if image_size is not None:
        argv += ["--image-size", str(image_size)]
    logs = out.with_name(out.name + ".log")
    t0 = time.perf_counter()
    with open(logs, "w+") as err, open(logs.with_suffix(".out"), "w+") as std:
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=std, stderr=err, text=True)
        peaks = {"RssAnon": 0.0, "RssFile": 0.0}
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                for k, v in _status(proc.pid).items():
                    peaks[k] = max(peaks[k], v)
                done.wait(poll)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)  # ru_maxrss: the largest process of the command's tree
        seconds = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        done.set()
        sampler.join()
        err.seek(0)
        std.seek(0)
        stderr, stdout = err.read(), std.read()
    if proc.returncode:
        raise RuntimeError(f"{' '.join(argv[3:])} failed ({proc.returncode}):\n{stderr[-3000:]}")
    at_exit = dict(kv.split(":") for line in stderr.splitlines() if line.startswith("STATUS ")
                   for kv in line.split()[1:])
    d = int(stdout.split(" x ")[1].split()[0])  # "wrote FILE (safetensors: N images x D features, ...)"
    return {"seconds": seconds, "vmhwm_mb": int(at_exit["VmHWM"].rstrip("kB")) / 1024,
            "largest_process_mb": usage.ru_maxrss / 1024,
            "rss_anon_peak_mb": peaks["RssAnon"], "rss_file_peak_mb": peaks["RssFile"],
            "file_mb": out.stat().st_size / 2**20, "dim": d, "stdout": stdout.strip()}


def slope(xs: list[int], ys: list[float]) -> float:
    """Least-squares MB per 100k images."""
    return float(np.polyfit(np.asarray(xs, float) / 1e5, np.asarray(ys, float), 1)[0]) if len(xs) > 1 else 0.0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cifar", default=str(ROOT.parent / "shared" / "data" / "cifar10"))
    p.add_argument("--folder", default="/tmp/mocolab_embed_bench", help="the symlink folders (reused)")
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 50_000, 200_000])
    p.add_argument("--src", default="random:cifar10_cpu", help="anything `mocolab embed` takes")
    p.add_argument("--streams", nargs="+", choices=["auto", "on", "off"], default=["auto", "on"])
    p.add_argument("--format", choices=["safetensors", "npy", "parquet"], default="safetensors")
    p.add_argument("--workers", type=int, help="DataLoader workers (default: the model's data.workers)")
    p.add_argument("--image-size", type=int, help="the images' size at the backbone (default: the model's); a "
                   "smaller one makes the forward pass cheaper and leaves D, so the N x D features, as they are")
    p.add_argument("--dry", action="store_true", help="random features instead of decoding and the forward pass: "
                   "the memory of embed's own structures alone, in seconds")
    p.add_argument("--poll", type=float, default=0.05, help="seconds between samples of /proc/PID/status")
    p.add_argument("--json", help="write the rows here too")
    a = p.parse_args()
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    rows = []
    print(f"{'N':>8} {'stream':<6} {'seconds':>8} {'peak RSS MB':>11} {'largest proc':>12} {'anon MB':>8} "
          f"{'file-backed':>11} {'file MB':>8}", flush=True)
    with tempfile.TemporaryDirectory(prefix="embed_memory_") as work:
        for n in a.sizes:
            data = build(Path(a.cifar), Path(a.folder), n)
            for stream in a.streams:
                out = Path(work) / f"emb_{n}_{stream}.{a.format}"
                r = run_embed(a.src, data, out, stream, a.workers, a.poll, env, a.image_size, a.dry)
                for extra in (out, out.with_suffix(".csv"), out.with_name(out.name + ".log"),
                              out.with_name(out.name + ".out")):
                    extra.unlink(missing_ok=True)
                row = {"images": n, "stream": stream, "src": a.src, "image_size": a.image_size, "dry": a.dry, **r}
                rows.append(row)
                print(f"{n:>8} {stream:<6} {r['seconds']:>8.1f} {r['vmhwm_mb']:>11.0f} "
                      f"{r['largest_process_mb']:>12.0f} {r['rss_anon_peak_mb']:>8.0f} {r['rss_file_peak_mb']:>11.0f} "
                      f"{r['file_mb']:>8.1f}", flush=True)
    for stream in a.streams:
        rs = [r for r in rows if r["stream"] == stream]
        xs = [r["images"] for r in rs]
        held = rs[0]["dim"] * 4 * 1e5 / 2**20
        fit = {k: slope(xs, [r[k] for r in rs])
               for k in ("vmhwm_mb", "rss_anon_peak_mb", "rss_file_peak_mb", "file_mb")}
        print(f"stream {stream}: slope per 100k images: peak RSS {fit['vmhwm_mb']:+.1f} MB, anonymous "
              f"{fit['rss_anon_peak_mb']:+.1f} MB, file-backed {fit['rss_file_peak_mb']:+.1f} MB, the file "
              f"{fit['file_mb']:+.1f} MB (100k x {rs[0]['dim']} float32 features held in memory: {held:.1f} MB)")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
