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
import sys
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


def window_star(cells: dict, temperature: float) -> float:
    """W*: the mean of log W over the smallest K's row, each m weighted by exp((kNN - best) /
    temperature) (the seeds' spread): the centre of the cells as good as the best within the noise,
    where an argmax would follow the noise of a flat row."""
    kmin = min(k for k, _ in cells)
    row = [(1 / (1 - m), statistics.mean(s.values())) for (k, m), s in cells.items() if k == kmin]
    top = max(y for _, y in row)
    weights = [math.exp((y - top) / max(temperature, 1e-6)) for _, y in row]
    return math.exp(sum(w * math.log(x) for (x, _), w in zip(row, weights)) / sum(weights))


def k_effect_ok(cells: dict) -> list[tuple[float, bool]]:
    """(age / window, within the noise of the same m's smallest-K cell) of each cell: what the
    queue's size alone costs at each m. The noise: the larger seed spread of the two cells."""
    kmin = min(k for k, _ in cells)
    out = []
    for (k, m), s in cells.items():
        base = cells.get((kmin, m))
        if base:
            noise = max(max(s.values()) - min(s.values()), max(base.values()) - min(base.values()))
            out.append((k / BATCH * (1 - m), statistics.mean(s.values()) >= statistics.mean(base.values()) - noise))
    return out


def row_spread(cells: dict) -> float:
    """The seeds' spread over the smallest K's row, the row W* is read from."""
    kmin = min(k for k, _ in cells)
    return spread({c: s for c, s in cells.items() if c[0] == kmin})


def fit_line(xs: list[float], ys: list[float], ws: list[float]) -> tuple[float, float]:
    """(intercept, slope) of y = c + p x by weighted least squares."""
    total = sum(ws)
    mx = sum(w * x for w, x in zip(ws, xs)) / total
    my = sum(w * y for w, y in zip(ws, ys)) / total
    sxx = sum(w * (x - mx) ** 2 for w, x in zip(ws, xs))
    p = sum(w * (x - mx) * (y - my) for w, x, y in zip(ws, xs, ys)) / sxx if sxx else 0.0
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


def plot(rows_by_e: dict, rule: dict, path: Path) -> None:
    """Left: kNN of the smallest queue against the window W, one line per length, the rule's W
    dashed. Right: what the queue's size costs (kNN minus the same m's smallest queue) against the
    oldest key's age / W; the age share dotted."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from mocolab.plotting import save, setup

    plt = setup()
    fig, (a, b) = plt.subplots(1, 2, figsize=(13, 4.8))
    for i, (e, cells) in enumerate(sorted(rows_by_e.items())):
        c = f"C{i}"
        kmin = min(k for k, _ in cells)
        row = sorted((1 / (1 - m), s) for (k, m), s in cells.items() if k == kmin)
        xs = [w for w, _ in row]
        a.errorbar(xs, [statistics.mean(s.values()) for _, s in row],
                   yerr=[[statistics.mean(s.values()) - min(s.values()) for _, s in row],
                         [max(s.values()) - statistics.mean(s.values()) for _, s in row]],
                   color=c, marker="o", capsize=3, label=f"{e} epochs ({e * (IMAGES // BATCH)} steps)")
        a.axvline(rule["W_AT_1K"] * (e * (IMAGES // BATCH) / 1000) ** rule["W_POWER"], color=c, ls="--", lw=1)
        for (k, m), s in cells.items():
            base = cells.get((kmin, m))
            if base and k != kmin:
                b.scatter(k / BATCH * (1 - m), statistics.mean(s.values()) - statistics.mean(base.values()),
                          color=c, marker="o" if k == 1024 else "s", s=30)
    a.set_xscale("log")
    a.set_xlabel("window 1 / (1 - m), steps (dashed: the rule's)")
    a.set_ylabel("kNN top-1 (%), the smallest K (256)")
    a.legend(fontsize=9)
    a.grid(alpha=0.3)
    b.axvline(rule["AGE_SHARE"], color="gray", ls=":")
    b.axhline(0, color="gray", lw=0.8)
    b.set_xscale("log")
    b.set_xlabel("oldest key's age / window (circles: K 1024, squares: K 4096)")
    b.set_ylabel("kNN minus K 256 at the same m (points)")
    b.grid(alpha=0.3)
    from matplotlib.ticker import FuncFormatter

    for ax in (a, b):  # plain numbers on the log axes
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    fig.tight_layout()
    save(fig, path, dpi=90)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", default="runs")
    ap.add_argument("--fit", type=int, nargs="+", default=[1, 3, 10])
    ap.add_argument("--check", type=int, nargs="*", default=[5])
    # MoCo's 200 ImageNet epochs at batch 256 (5,005 steps each): best m 0.999 (its K 4,096 ablation)
    ap.add_argument("--anchor", type=float, nargs=2, default=[200 * 5005, 1000.0], metavar=("STEPS", "WINDOW"),
                    help="a published (schedule length, best window) point added to the fit; --no-anchor: none")
    ap.add_argument("--no-anchor", dest="anchor", action="store_const", const=None)
    ap.add_argument("--json")
    ap.add_argument("--plot", help="write the figure of docs/ablations.md, section 5, here")
    args = ap.parse_args(argv)
    runs = Path(args.runs)
    steps_per_epoch = IMAGES // BATCH
    result: dict = {"lengths": {}}
    rows = []
    grids = {}  # epochs -> its finished cells (the plot's too)
    for e in args.fit + args.check:
        cells = read_grid(runs / f"auto_e{e}")
        if not cells:
            print(f"epochs {e}: no finished cells")
            continue
        grids[e] = cells
        S = e * steps_per_epoch
        (bk, bm), bknn = best(cells)
        w_star = window_star(cells, row_spread(cells))
        result["lengths"][e] = {"steps": S, "best": [bk, bm, bknn], "spread": spread(cells), "w_star": w_star,
                                "cells": {f"{k},{m}": s for (k, m), s in cells.items()}}
        print(f"\n## {e} epochs ({S} steps): best K {bk}, m {bm} ({bknn:.2f}); seeds' spread {spread(cells):.2f}; "
              f"W* {w_star:.0f} (m* {1 - 1 / w_star:.4f}; the K {min(k for k, _ in cells)} row's spread "
              f"{row_spread(cells):.2f})")
        print("\n".join(table(cells)))
        if e in args.fit:
            rows.append((S, w_star, cells))
    if len(rows) >= 2:
        # log W* = log W_AT_1K + W_POWER log(S / 1000), each length weighted by 1 / spread^2 (a flat,
        # noisy short run says little about its best window)
        xs = [math.log(S / 1000) for S, _, _ in rows]
        ys = [math.log(w) for _, w, _ in rows]
        ws = [1 / max(row_spread(cells), 0.05) ** 2 for _, _, cells in rows]
        c, p = fit_line(xs, ys, ws)
        print(f"\nW* from these lengths alone: {math.exp(c):.1f} (S / 1000)^{p:.3f}")
        if args.anchor:  # the paper's ImageNet run: its best window at its length, weighted as our best length
            xs.append(math.log(args.anchor[0] / 1000))
            ys.append(math.log(args.anchor[1]))
            ws.append(max(ws))
            c, p = fit_line(xs, ys, ws)
            print(f"W* with the anchor (S {args.anchor[0]:.0f}, W {args.anchor[1]:.0f}): {math.exp(c):.1f} "
                  f"(S / 1000)^{p:.3f}")
        for S, w_star, cells in rows:
            print(f"  {S} steps: W* {w_star:.0f} (weight {1 / max(row_spread(cells), 0.05) ** 2:.2f}), "
                  f"the fit {math.exp(c) * (S / 1000) ** p:.0f}")
        for S, label in [(5 * 390, "5 epochs of 50,000 CIFAR images (session 6: m 0.97-0.98 best, 0.99 behind)"),
                         (200 * 5005, "the paper's 200 ImageNet epochs (m 0.999 best)")]:
            w = math.exp(c) * (S / 1000) ** p
            print(f"  {label}: S {S}, W {w:.0f}, m {1 - 1 / w:.4f}")
        # r_ok: the largest age / window at or below which no cell loses more than the noise to the
        # smallest queue at its m
        ratios = sorted(r for _, _, cells in rows for r in k_effect_ok(cells))
        r_ok = 0.0
        for r, ok in ratios:
            if not ok:
                break
            r_ok = r
        result["rule"] = {"W_AT_1K": math.exp(c), "W_POWER": p, "AGE_SHARE": r_ok}
        print(f"\nrule: W = {math.exp(c):.1f} (S / 1000)^{p:.3f}; age <= {r_ok:.3f} W")
        print("cells by age / window (ok: within the spread of the same m's smallest K): "
              + ", ".join(f"{r:.3f} {'ok' if ok else 'NO'}" for r, ok in ratios))
    if args.plot and "rule" in result:
        plot(grids, result["rule"], Path(args.plot))
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
