"""Train/test leakage audit (issue 27): precision and recall of `mocolab neighbors --leakage` on
near-duplicates planted into CIFAR-10's test split, and how many of CIFAR-10's own test images it
flags (ciFAIR, Barz & Denzler 2020: about 3.3 % have a near-duplicate in the training set).

1. A copy of the test split is made under --folder (symlinks to the originals, never in the
   repository), and 4 near-duplicates of each of --planted training images (seeded choice) are
   written into it, in the class folder of their original: JPEG quality 60; resized to 0.8x and
   back (bicubic); horizontally flipped; brightness +10 %. The training split is a symlink.
2. For each backbone (--backbones: anything `mocolab knn` accepts; default a MoCo run, a
   supervised run and random init) mocolab.nearest.run_neighbors runs as `mocolab neighbors
   --leakage` does, at its default threshold (--threshold to change it): a flagged planted copy is a
   true positive; precision = planted flagged / flagged, recall = planted flagged / planted; the
   originals flagged are reported as a percentage of the 10,000.

  nice -n 10 python benchmarks/leakage.py --backbones runs/leak_moco runs/leak_sup random:cifar10_cpu
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

VARIANTS = ("jpeg60", "resize08", "flip", "bright10")


def plant(cifar: Path, folder: Path, n: int, seed: int = 0) -> int:
    """folder/train -> cifar/train; folder/test/<class>/: symlinks to the originals + 4 x n planted copies."""
    from PIL import Image, ImageEnhance

    marker = folder / ".complete"
    if marker.is_file() and marker.read_text() == f"{n} {seed}":
        return 4 * n
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "train").exists():
        (folder / "train").symlink_to((cifar / "train").resolve())
    train = sorted(p for p in (cifar / "train").rglob("*") if p.is_file())
    for cls in sorted(d.name for d in (cifar / "test").iterdir() if d.is_dir()):
        (folder / "test" / cls).mkdir(parents=True, exist_ok=True)
        for p in sorted((cifar / "test" / cls).iterdir()):
            link = folder / "test" / cls / p.name
            if not link.exists():
                link.symlink_to(p.resolve())
    for src in random.Random(seed).sample(train, n):
        im = Image.open(src).convert("RGB")
        w, h = im.size
        dst = folder / "test" / src.parent.name
        im.save(dst / f"planted_{src.stem}_jpeg60.jpg", quality=60)
        small = im.resize((round(0.8 * w), round(0.8 * h)), Image.BICUBIC)
        small.resize((w, h), Image.BICUBIC).save(dst / f"planted_{src.stem}_resize08.png")
        im.transpose(Image.FLIP_LEFT_RIGHT).save(dst / f"planted_{src.stem}_flip.png")
        ImageEnhance.Brightness(im).enhance(1.1).save(dst / f"planted_{src.stem}_bright10.png")
    marker.write_text(f"{n} {seed}")
    return 4 * n


def score(pairs: list[tuple[str, str, float]], threshold: float, planted: int, query_images: int) -> dict:
    """pairs: (test path, its nearest training path, cosine), both relative to their split, one per test
    image -> the audit's figures at `threshold`. A planted copy counts as found when flagged; `matched_own`
    counts those whose nearest training image is the very image it was made from."""
    flagged = [(t, n) for t, n, c in pairs if c >= threshold]
    found = [(t, n) for t, n in flagged if Path(t).name.startswith("planted_")]
    by_variant = {v: sum(Path(t).stem.endswith(v) for t, _ in found) for v in VARIANTS}
    # planted_<stem>_<variant>.<ext> in test/<class>/ was made from train/<class>/<stem>.<ext>
    own = sum(Path(n).parent == Path(t).parent and Path(n).stem == Path(t).stem[len("planted_"):].rsplit("_", 1)[0]
              for t, n in found)
    originals = query_images - planted
    return {"threshold": threshold, "flagged": len(flagged), "planted_found": len(found),
            "precision": len(found) / max(len(flagged), 1), "recall": len(found) / planted,
            "recall_by_variant": {v: by_variant[v] / (planted // 4) for v in VARIANTS},
            "planted_matched_own": own, "originals_flagged": len(flagged) - len(found),
            "originals_flagged_percent": 100.0 * (len(flagged) - len(found)) / originals}


def read_pairs(out: Path) -> list[tuple[str, str, float]]:
    """out/neighbors.csv (query, rank, neighbor, cosine) -> the rank-1 rows as (test, train, cosine)."""
    with open(out / "neighbors.csv", newline="") as f:
        return [(r["query"], r["neighbor"], float(r["cosine"])) for r in csv.DictReader(f) if r["rank"] == "1"]


def audit(src: str, folder: Path, out: Path, threshold: float | None, planted: int) -> dict:
    from mocolab.nearest import DEFAULT_LEAK, run_neighbors

    t0 = time.perf_counter()
    r = run_neighbors(src, folder, out, k=1, leakage=threshold or DEFAULT_LEAK, show=30, overwrite=True,
                      device="cpu", progress=False)
    pairs = read_pairs(out)
    row = score(pairs, r["leakage_threshold"], planted, r["query_images"])
    # the same flags as the command's own (its leakage.csv), or the scoring here is wrong
    assert row["flagged"] == len(r["leaked_paths"]), (row["flagged"], len(r["leaked_paths"]))
    return {"backbone": src, **row, "mean_nearest_cosine": r["mean_nearest_cosine"],
            "seconds": time.perf_counter() - t0}


def rescore(src: str, out: Path, threshold: float | None, planted: int) -> dict:
    """The figures at another threshold from a previous run's out/neighbors.csv (k=1), without embedding."""
    from mocolab.nearest import DEFAULT_LEAK

    summary = json.loads((out / "neighbors.json").read_text())
    if summary["model"] != src:
        raise SystemExit(f"{out}/neighbors.json is of {summary['model']}, not {src}")
    t0 = time.perf_counter()
    pairs = read_pairs(out)
    row = score(pairs, threshold or DEFAULT_LEAK, planted, len(pairs))
    return {"backbone": src, **row, "mean_nearest_cosine": sum(c for *_, c in pairs) / len(pairs),
            "seconds": time.perf_counter() - t0, "rescored_from": str(out / "neighbors.csv")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cifar", default=str(ROOT.parent / "shared" / "data" / "cifar10"))
    ap.add_argument("--folder", default="/tmp/mocolab_leakage")
    ap.add_argument("--planted", type=int, default=200, help="training images copied, 4 ways each")
    ap.add_argument("--backbones", nargs="+", default=["runs/leak_moco", "runs/leak_sup", "random:cifar10_cpu"])
    ap.add_argument("--threshold", type=float, help="default: mocolab.nearest.DEFAULT_LEAK")
    ap.add_argument("--rescore", action="store_true",
                    help="no embedding: score the neighbors.csv that a previous run left in --folder/out<i>/")
    ap.add_argument("--json", help="write the rows here too")
    args = ap.parse_args()
    folder = Path(args.folder)
    planted = plant(Path(args.cifar), folder / "data", args.planted)
    rows = []
    for i, src in enumerate(args.backbones):
        row = (rescore(src, folder / f"out{i}", args.threshold, planted) if args.rescore else
               audit(src, folder / "data", folder / f"out{i}", args.threshold, planted))
        rows.append(row)
        print(f"{src}: threshold {row['threshold']}, flagged {row['flagged']}, precision {row['precision']:.3f}, "
              f"recall {row['recall']:.3f} {row['recall_by_variant']}, nearest is its own original "
              f"{row['planted_matched_own']}/{row['planted_found']}, own test images flagged "
              f"{row['originals_flagged']} ({row['originals_flagged_percent']:.2f} %), mean nearest cosine "
              f"{row['mean_nearest_cosine']:.3f} ({row['seconds']:.0f} s)", flush=True)
    print("\n| backbone | flagged | precision | recall (jpeg60 / resize / flip / bright) | own original | "
          "own test images flagged |\n| --- | ---: | ---: | --- | ---: | ---: |")
    for r in rows:
        v = " / ".join(f"{r['recall_by_variant'][k]:.3f}" for k in VARIANTS)
        print(f"| {r['backbone']} | {r['flagged']:,} | {r['precision']:.3f} | {r['recall']:.3f} ({v}) | "
              f"{r['planted_matched_own']}/{r['planted_found']} | {r['originals_flagged']} "
              f"({r['originals_flagged_percent']:.2f} %) |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
