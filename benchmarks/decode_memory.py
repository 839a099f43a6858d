"""Peak memory of decoding a folder of extreme-aspect images (issue 28): every decoding path
bounds an image's size from its header (mocolab.data.check_image_size: MAX_PIXELS, MAX_ASPECT)
before it decodes or resizes it, so a few hundred bytes can no longer take gigabytes.

The folder (made in a temporary directory): --normal small JPEGs, --extreme PNGs of 1 x 200,000
and 200,000 x 1 pixels (a few hundred bytes each), and the largest images the bounds let through:
one of MAX_ASPECT:1 at MAX_PIXELS and one square at MAX_PIXELS. Each path runs in a process of its
own, which reports its peak RSS (VmHWM; DataLoader workers 0, so everything is in that process),
beside a process that only imports mocolab (the floor: torch and torchvision):

- cache:  data.decode_to_tensor (folders and the decoded uint8 cache; pretraining, kNN in memory)
- stream: data.CenterCropFiles (streaming evaluation)
- pil:    data.PILFileDataset (the pil backend)
- shards: shards.ShardStream over a tar of the folder (webdataset)
- feeds:  transfer.feeds (detection samples)

--unbounded SIZE adds the same cache decode of ONE 1 x 200,000 PNG at that size with the bounds
switched off (what every path did before): about 1 GB at 32 px, 39 GB at 256 px, so keep it small.
Exit status 1 when a bounded path peaks at or above --limit-mb (default 1024).

  OMP_NUM_THREADS=1 nice python benchmarks/decode_memory.py --size 256 --unbounded 32
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def make_folder(folder: Path, normal: int, extreme: int) -> list[str]:
    """The images (class folder `x`); -> their names."""
    import numpy as np
    from PIL import Image

    from mocolab.data import MAX_ASPECT, MAX_PIXELS

    d = folder / "x"
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(normal):
        Image.fromarray((rng.random((48, 64, 3)) * 255).astype(np.uint8)).save(d / f"normal{i}.jpg")
    for i in range(extreme):
        Image.new("RGB", (1, 200_000) if i % 2 else (200_000, 1)).save(d / f"extreme{i}.png")
    h = int((MAX_PIXELS / MAX_ASPECT) ** 0.5)  # MAX_ASPECT * h * h <= MAX_PIXELS
    Image.new("RGB", (MAX_ASPECT * h, h), (10, 200, 30)).save(d / "at_the_aspect_bound.png")
    side = int(MAX_PIXELS ** 0.5)
    Image.new("RGB", (side, side), (200, 10, 30)).save(d / "at_the_pixel_bound.png")
    return sorted(p.name for p in d.iterdir())


def child(path: str, folder: Path, size: int) -> dict:
    """Runs one decoding path over the folder in this process -> counts (peak RSS added by main)."""
    import warnings

    from mocolab import data

    warnings.simplefilter("ignore")
    fl = data.scan_folder(folder)
    if path == "unbounded":
        data.MAX_ASPECT, data.MAX_PIXELS = 10**12, 10**15
        fl = data.FileList(fl.root, [p for p in fl.files if p.name == "extreme1.png"], [0], fl.classes)
    if path == "import":
        return {"decoded": 0}
    if path in ("cache", "unbounded"):
        out = data.decode_to_tensor(fl, size, workers=0, cache_dir=folder.parent / f"cache_{path}")
        return {"decoded": len(out)}
    if path == "stream":
        ds = data.CenterCropFiles(fl, size, data.cache_size_for(size))
    elif path == "pil":
        from torchvision.transforms import v2

        ds = data.PILFileDataset(fl, v2.Compose([v2.RandomResizedCrop(size), v2.PILToTensor()]), seed=0)
    elif path == "feeds":
        from mocolab.transfer.boxes import DetectionData, make_item
        from mocolab.transfer.feeds import _DetectionSamples

        items = [make_item(p, [], [], [], 1, 1, i, []) for i, p in enumerate(fl.files)]  # no boxes
        ds = _DetectionSamples(DetectionData(["x"], items), flip=0.5, seed=0, keep_difficult=True)
    elif path == "shards":
        from mocolab.shards import ShardStream, write_shards

        (pattern,) = write_shards(folder, folder.parent / f"shards_{os.getpid()}" / "s", shard_size=4)
        return {"decoded": sum(1 for _ in ShardStream(pattern, size).dataset(0))}
    return {"decoded": sum(ds[i] is not None for i in range(len(ds)))}


def peak_rss_mb() -> float:
    """This process's peak RSS: VmHWM, which starts afresh at exec (ru_maxrss would start from the
    parent's RSS at fork)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_child(path: str, folder: Path, size: int) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""),
               CUDA_VISIBLE_DEVICES="")
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, __file__, "--child", path, "--folder", str(folder), "--size", str(size)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    out, err = proc.communicate()
    if proc.returncode != 0:
        return {"path": path, "error": (err.strip().splitlines() or ["?"])[-1]}
    res = json.loads(out.strip().splitlines()[-1])
    res.update(path=path, seconds=round(time.perf_counter() - t0, 1))
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--normal", type=int, default=8, help="small JPEGs")
    ap.add_argument("--extreme", type=int, default=16, help="1 x 200,000 and 200,000 x 1 PNGs")
    ap.add_argument("--size", type=int, default=256, help="decode size (the cache side of 224 px training)")
    ap.add_argument("--unbounded", type=int, default=0, metavar="SIZE",
                    help="also decode one 1 x 200,000 PNG at SIZE with the bounds off (32: about 1 GB)")
    ap.add_argument("--limit-mb", type=float, default=1024.0)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--folder", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child == "make":
        sys.path.insert(0, str(ROOT / "src"))
        print(json.dumps(make_folder(Path(args.folder), args.normal, args.extreme)))
        return 0
    if args.child:
        res = child(args.child, Path(args.folder), args.size)
        print(json.dumps({**res, "peak_rss_mb": round(peak_rss_mb(), 1)}))
        return 0
    with tempfile.TemporaryDirectory() as tmp:  # this process imports neither torch nor PIL
        folder = Path(tmp) / "images"
        names = json.loads(subprocess.run([sys.executable, __file__, "--child", "make", "--folder", str(folder),
                                           "--normal", str(args.normal), "--extreme", str(args.extreme)],
                                          check=True, capture_output=True, text=True).stdout)
        total = sum(p.stat().st_size for p in (folder / "x").iterdir())
        print(f"{len(names)} images ({total / 1e6:.1f} MB on disk): {args.normal} small JPEGs, {args.extreme} "
              f"1x200000 / 200000x1 PNGs, 2 at the bounds; decode size {args.size}")
        paths = ["import", "cache", "stream", "pil", "shards", "feeds"] + ["unbounded"] * bool(args.unbounded)
        rows, bad = [], 0
        for path in paths:
            res = run_child(path, folder, args.unbounded if path == "unbounded" else args.size)
            rows.append(res)
            if "error" in res:
                print(f"{path:10s} failed: {res['error']}")
                bad += path != "unbounded"
                continue
            over = path != "unbounded" and res["peak_rss_mb"] >= args.limit_mb
            bad += over
            floor = rows[0].get("peak_rss_mb", 0)
            print(f"{path:10s} peak RSS {res['peak_rss_mb']:8.1f} MB  (+{res['peak_rss_mb'] - floor:7.1f} over the "
                  f"import)  {res['decoded']:3d} of {len(names)} images decoded  {res['seconds']:6.1f} s"
                  + ("  OVER THE LIMIT" if over else ""))
    worst = max((r["peak_rss_mb"] for r in rows if "peak_rss_mb" in r and r["path"] != "unbounded"), default=0)
    print(f"worst bounded path: {worst:.0f} MB (limit {args.limit_mb:.0f} MB): {'ok' if not bad else 'FAILED'}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
