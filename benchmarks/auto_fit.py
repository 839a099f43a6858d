"""Fits the rule of `moco.m=auto` and `moco.queue_size=auto` (mocolab/auto.py) to the sweep of
docs/auto_rule.sh, and checks it on a length it was not fitted to (docs/ablations.md, section 5).

  python benchmarks/auto_fit.py --fit 1 3 10 --check 5 [--runs runs] [--json out.json]

For each fitted length (epochs of the sweep's 10,000 images, S steps):
- the kNN of every (K, m) cell: the mean over its seeds, and the seeds' spread;
- the window W* = 1 / (1 - m*): the vertex of a parabola fitted to the mean kNN against log W over
  the K = Kmin row (the smallest queue, where the keys' age matters least); clamped to the grid's
  range of W when the parabola opens upwards or its vertex lies outside;
- the key age each cell gives (K / B steps) against its window: r = age / W.
Then log W* = log W_AT_1K + W_POWER log(S / 1000) by least squares over the lengths, and the
largest ratio r_ok such that every cell with r <= r_ok is within its length's seed spread of the
best cell: AGE_AT_1K and AGE_POWER follow from age = r_ok W*(S).

The check: the rule's m and K at the held-out length, the best grid cell there, and the auto
runs (runs/auto_check_e<E>/seed=<s>, made by docs/auto_rule.sh) against it.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from collections import defaultdict
from pathlib import Path

BATCH = 128  # the sweep's optim.batch_size (cifar10_cpu)
IMAGES = 10_000  # its data.limit


def read_grid(folder: Path) -> dict[tuple[int, float], dict[int, float]]:
    """{(K, m): {seed: kNN}} of a sweep folder's finished cells."""
    cells: dict[tuple[int, float], dict[int, float]] = defaultdict(dict)
    for summary in sorted(folder.glob("cells/*/summary.json")):
        axes = dict(part.split("=", 1) for part in summary.parent.name.split("__"))
        knn = json.loads(summary.read_text()).get("knn_top1")
        if knn is not None:
            cells[(int(axes["queue_size"]), float(axes["m"]))][int(axes.get("seed", 0))] = knn
    return dict(cells)


def spread(cells: dict) -> float:
    """The seeds' spread at this length: the mean over cells of (max - min) of their seeds."""
    gaps = [max(s.values()) - min(s.values()) for s in cells.values() if len(s) > 1]
    return statistics.mean(gaps) if gaps else 0.0


def best(cells: dict) -> tuple[tuple[int, float], float]:
    key = max(cells, key=lambda c: statistics.mean(cells[c].values()))
    return key, statistics.mean(cells[key].values())


def window_vertex(cells: dict) -> float:
    """W* from a parabola through (log W, mean kNN) of the smallest K's row."""
    kmin = min(k for k, _ in cells)
    row = sorted((1 / (1 - m), statistics.mean(s.values())) for (k, m), s in cells.items() if k == kmin)
    xs, ys = [math.log(w) for w, _ in row], [y for _, y in row]
    lo, hi = min(xs), max(xs)
    n = len(xs)
    # least squares y = a x^2 + b x + c (normal equations, 3 x 3)
    sx = [sum(x**p for x in xs) for p in range(5)]
    sxy = [sum(y * x**p for x, y in zip(xs, ys)) for p in range(3)]
    m = [[sx[4], sx[3], sx[2]], [sx[3], sx[2], sx[1]], [sx[2], sx[1], n]]
    a, b, _ = solve3(m, [sxy[2], sxy[1], sxy[0]])
    if a >= 0:  # no maximum inside: the better end
        return math.exp(xs[ys.index(max(ys))])
    return math.exp(min(max(-b / (2 * a), lo), hi))


def solve3(m: list[list[float]], v: list[float]) -> list[float]:
    """Cramer's rule for a 3 x 3 system."""
    def det(a):
        return (a[0][0] * (a[1][1] * a[2][2] - a[1][2] * a[2][1]) - a[0][1] * (a[1][0] * a[2][2] - a[1][2] * a[2][0])
                + a[0][2] * (a[1][0] * a[2][1] - a[1][1] * a[2][0]))
    d = det(m)
    out = []
    for i in range(3):
        mi = [row[:] for row in m]
        for r in range(3):
            mi[r][i] = v[r]
        out.append(det(mi) / d)
    return out


def fit_line(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """(intercept, slope) of y = c + p x by least squares."""
    mx, my = statistics.mean(xs), statistics.mean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    p = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx if sxx else 0.0
    return my - p * mx, p


def table(cells: dict) -> list[str]:
    ms = sorted({m for _, m in cells})
    Ks = sorted({k for k, _ in cells})
    lines = ["| K \\ m | " + " | ".join(f"{m:g}" for m in ms) + " |", "| --- |" + " ---: |" * len(ms)]
    for K in Ks:
        row = []
        for m in ms:
            s = cells.get((K, m))
            row.append("–" if not s else " / ".join(f"{s[k]:.2f}" for k in sorted(s))
                       + f" (**{statistics.mean(s.values()):.2f}**)")
        lines.append(f"| {K} | " + " | ".join(row) + " |")
    return lines


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", default="runs")
    ap.add_argument("--fit", type=int, nargs="+", default=[1, 3, 10])
    ap.add_argument("--check", type=int, nargs="*", default=[5])
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    runs = Path(args.runs)
    steps_per_epoch = IMAGES // BATCH
    result: dict = {"lengths": {}}
    rows = []
    for e in args.fit + args.check:
        cells = read_grid(runs / f"auto_e{e}")
        if not cells:
            print(f"epochs {e}: no finished cells")
            continue
        S = e * steps_per_epoch
        (bk, bm), bknn = best(cells)
        w_star = window_vertex(cells)
        result["lengths"][e] = {"steps": S, "best": [bk, bm, bknn], "spread": spread(cells), "w_star": w_star,
                                "cells": {f"{k},{m}": s for (k, m), s in cells.items()}}
        print(f"\n## {e} epochs ({S} steps): best K {bk}, m {bm} ({bknn:.2f}); seeds' spread {spread(cells):.2f}; "
              f"W* {w_star:.0f} (m* {1 - 1 / w_star:.4f})")
        print("\n".join(table(cells)))
        if e in args.fit:
            rows.append((S, w_star, cells))
    if len(rows) >= 2:
        c, p = fit_line([math.log(S / 1000) for S, _, _ in rows], [math.log(w) for _, w, _ in rows])
        w_at_1k, w_power = math.exp(c), p
        # r_ok: the largest age / window among cells that are all within the spread of their best
        ratios = []
        for _, _, cells in rows:
            _, bknn = best(cells)
            gap = spread(cells)
            for (k, m), s in cells.items():
                ratios.append((k / BATCH * (1 - m), statistics.mean(s.values()) >= bknn - gap))
        ratios.sort()
        r_ok = 0.0
        for r, ok in ratios:
            if not ok:
                break
            r_ok = r
        age_power = w_power  # age = r_ok W*(S): the same power
        age_at_1k = max(r_ok * w_at_1k, 1.0)
        result["rule"] = {"W_AT_1K": w_at_1k, "W_POWER": w_power, "r_ok": r_ok, "AGE_AT_1K": age_at_1k,
                          "AGE_POWER": age_power}
        print(f"\nfit: W* = {w_at_1k:.1f} (S / 1000)^{w_power:.3f}; r_ok = {r_ok:.3f} -> "
              f"age = {age_at_1k:.2f} (S / 1000)^{age_power:.3f}")
        for S in (78, 234, 390, 780, 7000, 500_000):
            w = w_at_1k * (S / 1000) ** w_power
            print(f"  S {S:>7}: m {1 - 1 / w:.4f} (W {w:.0f}), age {max(age_at_1k * (S / 1000) ** age_power, 1):.1f} "
                  f"steps")
    for e in args.check:
        autos = {}
        for summary in sorted((runs / f"auto_check_e{e}").glob("*/summary.json")):
            s = json.loads(summary.read_text())
            autos[summary.parent.name] = (s.get("knn_top1"), s.get("auto"))
        if autos:
            print(f"\nauto at {e} epochs: " + "; ".join(f"{k}: {v[0]:.2f} ({v[1]})" for k, v in autos.items()))
            result.setdefault("check", {})[e] = autos
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=str))
    return result


if __name__ == "__main__":
    main()
