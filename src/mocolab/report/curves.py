"""Training curves from metrics.jsonl: loss, lr, momentum, pretext accuracy, img/s and the kNN
monitor, against epoch and against training time; several runs on one axis."""

from __future__ import annotations

from pathlib import Path

from .runs import Run, number

# (metrics.jsonl key, panel title, y-axis label)
PANELS = [
    ("loss", "training loss", "loss (InfoNCE / task loss)"),
    ("lr", "learning rate", "lr"),
    ("m", "key encoder momentum m", "m"),
    ("pretext_acc", "pretext accuracy (1+K-way top-1)", "top-1 (%)"),
    ("img_per_s", "throughput", "images / s"),
    ("knn_top1", "kNN monitor (test split)", "kNN top-1 (%)"),
]
X_AXES = {"epoch": ("epoch_float", "epoch"), "time": ("seconds", "training time (min)")}


def series(run: Run, key: str, x: str) -> tuple[list[float], list[float]]:
    """(x values, y values) of one metric; x is "epoch" or "time" (minutes)."""
    src, recs = (run.monitors, "epoch") if key == "knn_top1" else (run.records, "epoch_float")
    xkey = recs if x == "epoch" else "seconds"
    xs, ys = [], []
    for r in src:  # numbers only: a hand-edited line may hold anything
        if number(r.get(key)) is not None and number(r.get(xkey)) is not None:
            xs.append(r[xkey] / 60 if x == "time" else r[xkey])
            ys.append(r[key])
    return xs, ys


def final_knn(run: Run, x: str) -> tuple[float, float] | None:
    """(x, %) of the final kNN evaluation in summary.json, if there is one."""
    s = run.summary
    if number(s.get("knn_top1")) is None:
        return None
    xv = number(s.get("epochs")) if x == "epoch" else (number(s.get("train_seconds")) or 0) / 60
    return (xv, s["knn_top1"]) if xv is not None else None


def plot_curves(runs: list[Run], x: str, path: Path) -> list[str]:
    """Writes a 2 x 3 grid of panels to `path`; returns the panels' keys that had data."""
    from ..plotting import legend_below, save, setup

    plt = setup()

    fig, axes = plt.subplots(2, 3, figsize=(15, 8.5))
    colors = plt.get_cmap("tab10" if len(runs) <= 10 else "tab20")
    shown = []
    for ax, (key, title, ylabel) in zip(axes.flat, PANELS):
        drawn = False
        for i, run in enumerate(runs):
            xs, ys = series(run, key, x)
            end = final_knn(run, x) if key == "knn_top1" else None
            if not xs and end is None:
                continue
            c = colors(i % colors.N)
            if xs:
                ax.plot(xs, ys, color=c, marker="o" if len(xs) < 30 else None, ms=3, lw=1.3, label=run.name)
            if end is not None:
                ax.plot([end[0]], [end[1]], color=c, marker="*", ms=11, ls="none")
            drawn = True
        ax.set_title(title, fontsize=11)
        ax.set_xlabel(X_AXES[x][1])
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if key == "lr" and drawn:
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
        if not drawn:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes, color="gray")
        else:
            shown.append(key)
    legend_below(fig, axes.flat)
    save(fig, path, dpi=90)
    return shown
