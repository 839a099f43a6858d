"""`mocolab compare`: several checkpoints (or runs, or random inits) under the same protocols,
as one table (compare.md, compare.json) and one bar chart (compare.png)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from .linear import CACHED, PAPER
from .protocols import Context, Target, knn_and_linear_cached, run_finetune, run_linear_paper
from .results import result_path

log = logging.getLogger("mocolab")

PROTOCOLS = ("knn", "linear_cached", "linear_paper", "finetune")


def column_names(protocols, fractions) -> list[tuple[str, str]]:
    """[(result key, column title)] in table order."""
    cols = []
    for p in protocols:
        if p == "knn":
            cols.append(("knn", "kNN"))
        elif p == "linear_cached":
            cols.append(("linear_cached", CACHED))
        elif p == "linear_paper":
            cols.append(("linear_paper", PAPER))
        elif p == "finetune":
            cols += [(f"finetune_{f:g}", f"fine-tune {f * 100:g}% labels") for f in fractions]
    return cols


def compare(entries: list[str], ctx: Context, out: str | Path, *, protocols=("knn", "linear_cached", "finetune"),
            fractions=(0.01, 0.1), finetune_budget_minutes: float = 0.0, finetune_epochs: int | None = None,
            paper_fit=None, k: int = 200, t: float = 0.1, reuse: bool = True) -> dict:
    """Evaluates every entry (random:PRESET, a run folder, a checkpoint) -> the table as a dict,
    written to out/compare.{json,md,png}."""
    bad = [p for p in protocols if p not in PROTOCOLS]
    if bad:
        raise ValueError(f"unknown protocol(s) {', '.join(bad)}; choose from {', '.join(PROTOCOLS)}")
    if "linear_paper" in protocols and paper_fit is None:
        raise ValueError("linear_paper needs its fit settings")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    targets = [Target.from_entry(e, out, ctx.seed) for e in entries]
    cols = column_names(protocols, fractions)
    rows = []
    for tg in targets:
        res = {}
        if "knn" in protocols or "linear_cached" in protocols:
            res.update(knn_and_linear_cached(tg, ctx, knn="knn" in protocols, linear="linear_cached" in protocols,
                                             k=k, t=t, reuse=reuse))
        if "linear_paper" in protocols:
            res["linear_paper"] = run_linear_paper(tg, ctx, paper_fit, reuse=reuse)
        if "finetune" in protocols:
            for f in fractions:
                res[f"finetune_{f:g}"] = run_finetune(tg, ctx, f, epochs=finetune_epochs,
                                                      budget_minutes=finetune_budget_minutes, reuse=reuse)
        rows.append({"name": tg.name, "method": tg.method, "entry": tg.entry,
                     "top1": {title: res[key]["top1"] for key, title in cols},
                     "results": {key: str(result_path(tg.base, key)) for key, _ in cols}})
    table = {"data": ctx.data_id(), "limit": ctx.limit, "seed": ctx.seed, "columns": [c for _, c in cols],
             "rows": rows}
    (out / "compare.json").write_text(json.dumps(table, indent=2))
    (out / "compare.md").write_text(markdown(table))
    bar_chart(table, out / "compare.png")
    return table


def markdown(table: dict) -> str:
    cols = table["columns"]
    lines = [f"Top-1 (%) on the test split of {table['data']}"
             + (f" (first {table['limit']} images per split)" if table["limit"] else "")
             + f", seed {table['seed']}.", "",
             "| model | method | " + " | ".join(cols) + " |", "| --- | --- |" + " ---: |" * len(cols)]
    for r in table["rows"]:
        lines.append(f"| {r['name']} | {r['method']} | " + " | ".join(f"{r['top1'][c]:.2f}" for c in cols) + " |")
    return "\n".join(lines) + "\n"


def bar_chart(table: dict, path: Path) -> None:
    """Grouped bars: one group per column (protocol), one bar per row (model)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    cols, rows = table["columns"], table["rows"]
    x = np.arange(len(cols))
    w = 0.8 / max(1, len(rows))
    fig, ax = plt.subplots(figsize=(2.2 * len(cols) + 2, 4.5))
    for i, r in enumerate(rows):
        vals = [r["top1"][c] for c in cols]
        bars = ax.bar(x + (i - (len(rows) - 1) / 2) * w, vals, w,
                      label=r["name"] if r["method"] in r["name"] else f"{r['name']} ({r['method']})")
        ax.bar_label(bars, fmt="%.1f", fontsize=7)
    ax.set_xticks(x, cols)
    ax.set_ylabel("test top-1 (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8, loc="upper left")
    ax.set_title(Path(table["data"]).name)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
