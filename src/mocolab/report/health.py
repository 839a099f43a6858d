"""The report's health panel: a run's health figures (mocolab.health) against epochs, and the
warnings it raised."""

from __future__ import annotations

import math
from pathlib import Path

from . import page
from .curves import series
from .runs import Run, number

# (metrics.jsonl key, panel title, y-axis label)
PANELS = [
    ("alignment", "alignment E||q - k||² (falls as it learns)", "alignment"),
    ("uniformity", "uniformity log E exp(-2||f_i - f_j||²) (→ -4: spread)", "uniformity"),
    ("feature_std", "per-dimension std (healthy ≈ 1/√d; dotted)", "std"),
    ("effective_rank", "effective rank of the batch's features", "rank"),
    ("key_age", "oldest key's age; dashed: window 1/(1 - m)", "steps"),
    ("loss", "loss; dashed: chance ln(K + 1)", "loss"),
]


def warnings_of(run: Run) -> list[tuple[int, str]]:
    """(step, text) of each health warning the run raised, in order."""
    seen = []
    for r in sorted(run.records + run.monitors, key=lambda r: r.get("step", 0)):
        for text in r.get("warnings") or []:
            if isinstance(text, str) and text not in [t for _, t in seen]:
                seen.append((r.get("step", 0), text))
    return seen


def plot_health(runs: list[Run], path: Path) -> None:
    """A 2 x 3 grid of the health figures against epochs, one colour per run."""
    from ..plotting import legend_below, save, setup

    plt = setup()
    fig, axes = plt.subplots(2, 3, figsize=(15, 8.5))
    colors = plt.get_cmap("tab10" if len(runs) <= 10 else "tab20")
    for ax, (key, title, ylabel) in zip(axes.flat, PANELS):
        for i, run in enumerate(runs):
            c = colors(i % colors.N)
            xs, ys = series(run, key, "epoch")
            if not xs:
                continue
            ax.plot(xs, ys, color=c, lw=1.3, label=run.name)
            # the reference each figure is read against
            ref = {"key_age": "key_window", "loss": "chance_loss"}.get(key)
            if ref:
                rx, ry = series(run, ref, "epoch")
                ax.plot(rx, ry, color=c, lw=1, ls="--")
            dim = number(run.config.get("model", {}).get("dim"))
            if key == "feature_std" and dim:
                ax.axhline(1 / math.sqrt(dim), color=c, lw=1, ls=":")
        ax.set_title(title, fontsize=11)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    legend_below(fig, axes.flat)
    save(fig, path, dpi=90)


def health_section(runs: list[Run], out: Path) -> str:
    """The figures' plot and a table of the warnings raised (or a note that none were)."""
    logged = [r for r in runs if any("feature_std" in rec for rec in r.records)]
    if not logged:
        return page.note("no health figures logged (runs from before them, or run.health=false)")
    plot_health(logged, out / "health.png")
    html = [page.figure("health.png", (
        "Health figures of the first step of each log window (mocolab.health): alignment and uniformity "
        "(Wang & Isola 2020), the per-dimension std of the normalized features (collapse: near 0) and their "
        "effective rank (collapse: near 1), the oldest queued key's age in steps against the key encoder's "
        "averaging window 1 / (1 - m) (memory bank: the mean age of the entries drawn), and the loss against "
        "chance, ln(K + 1)."), "health figures")]
    rows = [[run.name, step, text] for run in logged for step, text in warnings_of(run)]
    if rows:
        html.append(page.table(["run", "step", "warning"], rows, ["diff"] * len(rows)))
    else:
        html.append(page.note(f"no health warnings in {', '.join(r.name for r in logged)}"))
    return "\n".join(html)
