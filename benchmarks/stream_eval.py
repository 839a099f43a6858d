"""Streaming evaluation against the in-memory path (issue 18 item 2): peak RSS and time of
`mocolab knn` and `mocolab linear --mode cached` on a synthetic labeled folder, side by side.

1. A folder of N small JPEGs (train, 10 classes, class-dependent colour and stripes so that the
   accuracy is above chance; plus a test split) is generated under --folder (default
   /tmp/mocolab_stream_bench; never in the repository), or reused when it is complete.
2. For each size (--sizes, default 50000 and 200000 train images: --limit picks the first ones of
   each class) both commands run as subprocesses, in memory (`--stream off`, a cold decoded cache:
   the decoding is timed too) and streamed (`--stream on --memory-limit-gb 0.01`: files decoded in
   DataLoader workers, features in a float32 store on disk, read in --chunk-rows chunks). The
   peak RSS is os.wait4's ru_maxrss: the largest single process (main process or a DataLoader
   worker) of the command. The accuracies of both paths are printed beside each other.
3. The estimate of kNN at ImageNet size (1.28M x 2048 bank, 50k queries): one chunk of
   --est-queries queries x --est-bank bank rows x 2048 dims, float16 store on disk -> float32 on
   the CPU (mocolab.eval.knn.knn_predict_store, as `mocolab knn` runs it), timed and its peak RSS
   measured in a process of its own, then scaled by the number of such chunks.

The backbone is an untrained ResNet-10 of width 8 (64 features, float32): the point is the memory
and the equality of the two paths, not the accuracy. Threads: OMP_NUM_THREADS (set it to 1 on a
shared machine). Example (the figures in benchmarks/RESULTS.md, session 11):

  OMP_NUM_THREADS=1 nice -n 10 python benchmarks/stream_eval.py --json /tmp/stream_eval.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

CLASSES = 10
PRESET = """model: {arch: resnet10, width: 8, stem: cifar, head: mlp_bn, dim: 64, hidden_dim: 64, bn_splits: 1}
data: {image_size: 32, workers: %d, mean: [0.5, 0.5, 0.5], std: [0.25, 0.25, 0.25]}
run: {amp: "off", channels_last: false}
"""


def _write_images(job) -> None:
    """job: (folder, class, first index, count): count 32 x 32 JPEGs of the class."""
    from PIL import Image

    folder, c, lo, n = job
    rng = np.random.default_rng(1000 * c + lo)
    hue = np.array([np.cos(2 * np.pi * c / CLASSES), np.cos(2 * np.pi * (c / CLASSES + 1 / 3)),
                    np.cos(2 * np.pi * (c / CLASSES + 2 / 3))])  # a colour per class
    yy, xx = np.mgrid[0:32, 0:32]
    angle = np.pi * c / CLASSES
    stripes = np.sin((np.cos(angle) * xx + np.sin(angle) * yy) * (0.5 + 0.1 * c))  # an orientation per class
    for i in range(lo, lo + n):
        img = 128 + 60 * hue[None, None, :] * rng.uniform(0.3, 1.0) + 40 * stripes[..., None] * rng.uniform(0.2, 1.0)
        img = img + rng.normal(0, 35, (32, 32, 3))  # noise: classes overlap, the accuracy is not 100 %
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(folder / f"c{c}" / f"{i:07d}.jpg", quality=90)


def generate(folder: Path, n_train: int, n_test: int, procs: int = 2) -> float:
    """folder/{train,test}/c<k>/*.jpg, or nothing when folder/.complete says it is there -> seconds."""
    marker = folder / ".complete"
    if marker.is_file() and marker.read_text() == f"{n_train} {n_test}":
        return 0.0
    t0 = time.perf_counter()
    shutil.rmtree(folder, ignore_errors=True)
    jobs = []
    for split, n, base in (("train", n_train, 0), ("test", n_test, 10_000_000)):
        per = n // CLASSES
        for c in range(CLASSES):
            (folder / split / f"c{c}").mkdir(parents=True)
            jobs += [(folder / split, c, base + lo, min(5000, per - lo)) for lo in range(0, per, 5000)]
    with Pool(procs) as pool:
        pool.map(_write_images, jobs)
    marker.write_text(f"{n_train} {n_test}")
    return time.perf_counter() - t0


def run_command(argv: list[str], cwd: Path, env: dict) -> dict:
    """argv as a subprocess -> {seconds, peak_rss_mb (ru_maxrss of its largest process), stdout}."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}):\n{out[-3000:]}")
    return {"seconds": seconds, "peak_rss_mb": usage.ru_maxrss / 1024, "stdout": out}


def top1(stdout: str) -> float:
    return float(re.search(r"top-1 ([0-9.]+)%", stdout).group(1))


def measure(folder: Path, sizes: list[int], n_train: int, workers: int, chunk_rows: int, work: Path,
            commands=("knn", "linear"), paths=("memory", "stream")) -> list[dict]:
    preset = work / "bench_r10w8.yaml"
    preset.write_text(PRESET % workers)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    rows = []
    for n in sizes:
        limit = [] if n >= n_train else ["--limit", str(n)]
        for command in (["knn"], ["linear", "--mode", "cached"]):
            if command[0] not in commands:
                continue
            for mode in paths:
                cache = Path(tempfile.mkdtemp(prefix="cache_", dir=work))  # cold: the decoding is timed too
                flag = (["--stream", "off"] if mode == "memory" else
                        ["--stream", "on", "--memory-limit-gb", "0.01", "--chunk-rows", str(chunk_rows)])
                target = (["--checkpoint", f"random:{preset}"] if command[0] == "knn"
                          else ["--random-init", str(preset)])
                argv = [sys.executable, "-m", "mocolab", *command, *target, "--data", str(folder), *limit, *flag]
                r = run_command(argv, work, {**env, "MOCOLAB_CACHE": str(cache)})
                shutil.rmtree(cache, ignore_errors=True)
                row = {"train_images": n, "command": " ".join(command), "path": mode, "seconds": r["seconds"],
                       "peak_rss_mb": r["peak_rss_mb"], "top1": top1(r["stdout"]),
                       "argv": " ".join(["mocolab", *argv[3:]])}
                print(f"{n:>7} {row['command']:<20} {mode:<7} {row['seconds']:7.1f} s  {row['peak_rss_mb']:7.0f} MB  "
                      f"top-1 {row['top1']:.2f} %", flush=True)
                rows.append(row)
    return rows


def estimate_chunk(queries: int, bank: int, dim: int, k: int) -> dict:
    """One kNN chunk (queries x bank rows x dim, float16 store on disk -> float32), timed, in this process."""
    import torch

    from mocolab.eval.knn import knn_predict_store
    from mocolab.eval.store import FeatureStore

    g = torch.Generator().manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        stores = []
        for n in (bank, queries):
            st = FeatureStore(n, 0, "float16", tmp)
            for lo in range(0, n, 8192):
                b = min(8192, n - lo)
                st.append(torch.randn(b, dim, generator=g), torch.randint(0, 1000, (b,), generator=g))
            stores.append(st.finish())
        bank_st, query_st = stores
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        t0 = time.perf_counter()
        bank_st.read(0, bank)  # the chunk's read alone (from the page cache: just written)
        t_read = time.perf_counter() - t0
        t0, c0 = time.perf_counter(), time.process_time()
        knn_predict_store(query_st, bank_st, 1000, k=k, query_chunk=queries, bank_chunk=bank)
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        bank_st.close()
        query_st.close()
    return {"queries": queries, "bank": bank, "dim": dim, "k": k, "seconds": seconds, "cpu_seconds": cpu,
            "read_seconds": t_read,
            "peak_rss_mb": rss, "rss_before_mb": rss0, "threads": torch.get_num_threads()}


def extrapolate(chunk: dict, queries: int = 50_000, bank: int = 1_281_167) -> dict:
    chunks = math.ceil(queries / chunk["queries"]) * math.ceil(bank / chunk["bank"])
    return {"queries": queries, "bank": bank, "chunks": chunks, "seconds": chunks * chunk["seconds"],
            "hours": chunks * chunk["seconds"] / 3600, "cpu_hours": chunks * chunk["cpu_seconds"] / 3600,
            "peak_rss_mb": chunk["peak_rss_mb"],
            "bank_store_gb_float16": bank * chunk["dim"] * 2 / 1e9,
            "bank_store_gb_float32": bank * chunk["dim"] * 4 / 1e9,
            "bank_reads": math.ceil(queries / chunk["queries"])}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--folder", default="/tmp/mocolab_stream_bench", help="the synthetic image folder (reused)")
    p.add_argument("--train", type=int, default=200_000, help="train images generated")
    p.add_argument("--test", type=int, default=10_000, help="test images generated")
    p.add_argument("--sizes", type=int, nargs="+", default=[50_000, 200_000], help="train images per measurement")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers (decode)")
    p.add_argument("--chunk-rows", type=int, default=16384)
    p.add_argument("--est-queries", type=int, default=2048)
    p.add_argument("--est-bank", type=int, default=65536)
    p.add_argument("--est-dim", type=int, default=2048)
    p.add_argument("--k", type=int, default=200)
    p.add_argument("--commands", nargs="+", choices=["knn", "linear"], default=["knn", "linear"])
    p.add_argument("--paths", nargs="+", choices=["memory", "stream"], default=["memory", "stream"])
    p.add_argument("--skip-commands", action="store_true", help="only the kNN chunk estimate")
    p.add_argument("--skip-estimate", action="store_true")
    p.add_argument("--estimate-child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--json", help="write the figures here")
    a = p.parse_args()
    if a.estimate_child:  # the estimate's own process: its peak RSS is the chunk's
        print(json.dumps(estimate_chunk(a.est_queries, a.est_bank, a.est_dim, a.k)))
        return
    res: dict = {"torch_threads_env": os.environ.get("OMP_NUM_THREADS")}
    if not a.skip_commands:
        folder = Path(a.folder)
        gen = generate(folder, a.train, a.test)
        how = f"generated in {gen:.0f} s" if gen else "reused"
        print(f"data: {folder} ({a.train} train / {a.test} test 32x32 JPEGs; {how})", flush=True)
        with tempfile.TemporaryDirectory(prefix="stream_eval_") as work:
            res["rows"] = measure(folder, a.sizes, a.train, a.workers, a.chunk_rows, Path(work), a.commands, a.paths)
    if not a.skip_estimate:
        out = subprocess.run([sys.executable, __file__, "--estimate-child", "--est-queries", str(a.est_queries),
                              "--est-bank", str(a.est_bank), "--est-dim", str(a.est_dim), "--k", str(a.k)],
                             capture_output=True, text=True, check=True,
                             env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
        chunk = json.loads(out.stdout.strip().splitlines()[-1])
        est = extrapolate(chunk)
        res["knn_chunk"], res["knn_estimate"] = chunk, est
        print(f"kNN chunk: {chunk['queries']} queries x {chunk['bank']} bank x {chunk['dim']} dims (float16 store -> "
              f"float32, {chunk['threads']} thread(s)): {chunk['seconds']:.2f} s wall, {chunk['cpu_seconds']:.2f} s "
              f"CPU (the chunk's read alone {chunk['read_seconds']:.2f} s), peak RSS {chunk['peak_rss_mb']:.0f} MB")
        print(f"estimate: {est['queries']} queries x {est['bank']} bank = {est['chunks']} chunks: "
              f"{est['hours']:.1f} h wall at this share of this CPU, {est['cpu_hours']:.1f} h of CPU time, "
              f"peak RSS ~{est['peak_rss_mb']:.0f} MB "
              f"(bounded by the chunk); the bank store {est['bank_store_gb_float16']:.1f} GB float16 / "
              f"{est['bank_store_gb_float32']:.1f} GB float32, read {est['bank_reads']} times")
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
