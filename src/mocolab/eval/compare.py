"""`mocolab compare`: several checkpoints (or runs, or random inits) under the same protocols,
as one table (compare.md, compare.json) and one bar chart (compare.png).

Transfer columns (`--detect DIR`, `--segment DIR`): every entry fine-tuned with the same recipe
(a transfer preset plus overrides) at each seed, as `mocolab detect | segment` processes in
OUT/transfer/<task>/<entry>/seed<S>/ (cell.json: what the cell is). A cell whose result file
matches (weights, data, seed, settings) is reused; one with checkpoints only is continued with
`--resume auto`; one made for other settings (or with a torn cell.json) is moved aside to
SEED.replaced-<timestamp>/, never deleted, and started over. A cell's exit 75 (SIGTERM) stops
the compare with the table so far and exit 75: the same command goes on."""

from __future__ import annotations

import json
import logging
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UsageError
from ..registry import TASKS
from ..runfiles import read_json, write_json, write_text
from ..runtime import Preempted, data_id, lock_run_dir, move_aside, run_process
from .linear import CACHED, PAPER
from .protocols import Context, Target, knn_and_linear_cached, run_finetune, run_linear_paper

log = logging.getLogger("mocolab")

PROTOCOLS = ("knn", "linear_cached", "linear_paper", "finetune")
# settings that change where and how fast a cell runs, not its result: ignored when matching
RUNTIME_KEYS = {"run": ("threads", "device", "log_every", "keep_checkpoints", "checkpoint_every", "save_every"),
                "task": ("workers", "eval_batch")}
METRICS = {"voc": "VOC AP (area under PR; AP = mean over IoU 0.50:0.95)", "voc07": "VOC07 11-point AP",
           "coco": "COCO AP"}


@dataclass
class TransferSpec:
    """One transfer task of the table: a `mocolab detect | segment` recipe for every entry."""

    kind: str  # detect | segment
    data: str
    preset: str
    overrides: list[str] = field(default_factory=list)  # key=value, for every fine-tune
    budget_minutes: float = 0.0  # per fine-tune; 0: the preset's (or the overrides') schedule

    def cell_overrides(self, seed: int) -> list[str]:
        """As `mocolab detect --budget-minutes M --seed S key=value...` applies them."""
        budget = [f"run.budget_minutes={self.budget_minutes:g}"] if self.budget_minutes else []
        return [*self.overrides, *budget, f"run.seed={seed}"]

    def config(self, seed: int = 0):
        from ..transfer.config import build_transfer_config

        return build_transfer_config(self.preset, self.cell_overrides(seed), self.kind)

    def command(self, backbone: str, out: Path, seed: int) -> list[str]:
        budget = ["--budget-minutes", f"{self.budget_minutes:g}"] if self.budget_minutes else []
        return [sys.executable, "-m", "mocolab", self.kind, "--backbone", backbone, "--data", self.data,
                "--out", str(out), "--preset", self.preset, "--seed", str(seed), "--resume", "auto", *budget,
                *self.overrides]

    def check(self) -> None:
        """Bad presets, overrides or data folders as one-line errors, before any training."""
        from ..data import DataError

        self.config()
        if not Path(self.data).is_dir():
            raise DataError(f"--{self.kind}: data folder not found: {self.data}")
        TASKS.get(self.kind).check_data(self.data)

    def describe(self) -> dict:
        cfg = self.config()
        schedule = (f"{self.budget_minutes:g} minutes" if self.budget_minutes else
                    f"{cfg.task.iters} iterations" if cfg.task.iters else f"{cfg.run.epochs} epochs")
        return {"data": data_id(self.data), "preset": self.preset, "set": list(self.overrides),
                "budget_minutes": self.budget_minutes or None, "schedule": schedule, "head": cfg.task.head,
                "norm": cfg.task.norm, "metric": TASKS.get(self.kind).metric_name(cfg)}


def _comparable(settings: dict) -> dict:
    """A transfer config (as a dict) without RUNTIME_KEYS, JSON-normalised."""
    s = json.loads(json.dumps(settings))
    for group, keys in RUNTIME_KEYS.items():
        for k in keys:
            s.get(group, {}).pop(k, None)
    return s


def _same_spec(a: dict | None, b: dict | None) -> bool:
    """Two cell specs (or configs) agree, a key missing on one side counting as its default: a
    setting added in a later version at its default value does not invalidate finished cells."""
    from ..transfer.config import TransferConfig

    defaults = _comparable(TransferConfig().to_dict())

    def norm(x):
        if not isinstance(x, dict):
            return x
        x = json.loads(json.dumps(x))
        cfg = x.get("config", x)
        for group, values in defaults.items():
            if isinstance(cfg.get(group), dict):
                for k, v in values.items():
                    if cfg[group].get(k, v) == v:
                        cfg[group].pop(k, None)
        return x

    return a is not None and b is not None and norm(a) == norm(b)


def _runtime(override: str) -> bool:
    group, _, key = override.split("=", 1)[0].partition(".")
    return key in RUNTIME_KEYS.get(group, ())


def mean_std(values) -> tuple[float | None, float | None, int]:
    """-> (mean, sample standard deviation (n - 1; 0 for one value), n); None values skipped."""
    v = [float(x) for x in values if x is not None and math.isfinite(x)]
    n = len(v)
    if n == 0:
        return None, None, 0
    m = sum(v) / n
    return m, (math.sqrt(sum((x - m) ** 2 for x in v) / (n - 1)) if n > 1 else 0.0), n


def format_stat(st: dict) -> str:
    """"52.31 ± 1.20 (3)": mean ± std (runs); "n/a" when no run finished."""
    return f"{st['mean']:.2f} ± {st['std']:.2f} ({st['n']})" if st["n"] else "n/a"


def entry_dirs(targets: list[Target]) -> list[str]:
    """A folder name per entry: random_<preset> or the run's / file's name; names that two
    entries share get a short hash of the entry."""
    import hashlib

    def slug(tg):
        name = f"random_{Path(tg.entry[len('random:'):]).stem}" if tg.path is None else tg.name
        return re.sub(r"[^A-Za-z0-9_.+-]+", "_", name).strip("._") or "entry"

    names = [slug(tg) for tg in targets]
    return [n if names.count(n) == 1 else
            f"{n}-{hashlib.sha1(str(tg.path.resolve() if tg.path else tg.entry).encode()).hexdigest()[:6]}"
            for n, tg in zip(names, targets)]


def cell_spec(tg: Target, spec: TransferSpec, seed: int) -> dict:
    """What a cell is: the weights (random init: its preset and seed), the data, the seed and the
    fine-tuning settings; its result is reused only when all of them match."""
    source = f"{tg.entry} (seed {seed})" if tg.path is None else str(tg.path.resolve())
    return json.loads(json.dumps({"task": spec.kind, "weights": tg.identity(), "source": source,
                                  "data": data_id(spec.data), "seed": seed,
                                  "config": _comparable(spec.config(seed).to_dict())}))


def finished_result(cell: Path, want: dict) -> dict | None:
    """The cell's detect.json / segment.json if it records `want`'s backbone, seed and settings."""
    res = read_json(cell / f"{want['task']}.json")
    ok = (res and res.get("seed") == want["seed"] and res.get("backbone", {}).get("source") == want["source"]
          and _same_spec(_comparable(res.get("settings", {})), want["config"]))
    return res if ok else None


def transfer_cell(tg: Target, spec: TransferSpec, seed: int, cell: Path, runner, force: bool = False):
    """Reuses, continues or runs one fine-tune -> (result or None, exit code)."""
    want = cell_spec(tg, spec, seed)
    old = read_json(cell / "cell.json").get("spec")  # torn or hand-edited: {} (a warning names it)
    if cell.is_dir() and any(cell.iterdir()) and (force or not _same_spec(old, want)):
        why = "--force" if force else "made for other settings" if old else "no readable cell.json"
        # never deleted: a cell holds hours of fine-tuning
        aside = move_aside(cell)
        log.warning("%s: %s; moved aside to %s, starting it over", cell, why, aside.name)
    elif (res := finished_result(cell, want)) is not None:
        log.info("%s: finished, reused", cell)
        return res, 0
    cell.mkdir(parents=True, exist_ok=True)
    backbone = tg.entry if tg.path is None else want["source"]
    cmd = spec.command(backbone, cell, seed)
    write_json(cell / "cell.json", {"spec": want, "command": cmd})
    log.info("%s: %s", cell, "continuing" if (cell / "checkpoints").is_dir() else "fine-tuning")
    rc = runner(cmd)
    if rc != 0:
        return None, rc
    res = finished_result(cell, want)
    if res is None:
        log.warning("%s: the run ended without a matching %s.json", cell, spec.kind)
    return res, 0 if res is not None else 1


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
            paper_fit=None, k: int = 200, t: float = 0.1, reuse: bool = True, transfer=(), seeds=(0, 1, 2),
            runner=None) -> dict:
    """Evaluates every entry (random:PRESET, a run folder, a checkpoint) -> the table as a dict,
    written to out/compare.{json,md,png}. transfer: TransferSpecs, each fine-tuned at every seed
    by runner(cmd) -> exit code (default: a `mocolab detect | segment` process). Raises Preempted
    (table so far written) when a fine-tune was stopped."""
    bad = [p for p in protocols if p not in PROTOCOLS]
    if bad:
        raise UsageError(f"unknown protocol(s) {', '.join(bad)}; choose from {', '.join(PROTOCOLS)}")
    if "linear_paper" in protocols and paper_fit is None:
        raise ValueError("linear_paper needs its fit settings")
    if not protocols and not transfer:
        raise UsageError("nothing to compare: give protocols, --detect or --segment")
    for spec in transfer:
        spec.check()
    out = Path(out)
    # one compare per folder: two would run (and move aside) the same cells
    lock_run_dir(out)
    targets = [Target.from_entry(e, out, ctx.seed) for e in entries]
    cols = column_names(protocols, fractions)
    # per task: (key in its result file, column title)
    tcols = [(spec.kind, key, title) for spec in transfer for key, title in TASKS.get(spec.kind).columns]
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
                     "results": {key: res[key].get("result_file") for key, _ in cols}})
    table = {"data": ctx.data_id() if ctx.data else None, "limit": ctx.limit, "seed": ctx.seed,
             "columns": [c for _, c in cols], "transfer_columns": [c for *_, c in tcols],
             "transfer": {s.kind: s.describe() | {"seeds": list(seeds)} for s in transfer},
             "rows": rows, "failed": []}
    done: dict[tuple[int, str, int], tuple[dict, Path]] = {}  # (row, task, seed) -> (result, cell)

    def write(png: bool = True) -> None:
        for i, r in enumerate(rows):
            r["transfer"] = {}
            for kind, key, title in tcols:
                got = [(s, *done[i, kind, s]) for s in seeds if (i, kind, s) in done]
                vals = [res.get(key) for _, res, _ in got]
                m, sd, n = mean_std(vals)
                r["transfer"][title] = {"seeds": [s for s, *_ in got], "values": vals, "mean": m, "std": sd,
                                        "n": n, "results": [str(c / f"{kind}.json") for *_, c in got]}
        paired_with_random(rows)
        write_json(out / "compare.json", table)
        write_text(out / "compare.md", markdown(table))
        if png:
            bar_chart(table, out / "compare.png")

    names = entry_dirs(targets)
    runner = runner or run_process
    try:
        for seed in seeds:  # a pass per seed: every column has a first value early
            for spec in transfer:
                for i, e in enumerate(entries):
                    cell = out / "transfer" / spec.kind / names[i] / f"seed{seed}"
                    res, rc = transfer_cell(Target.from_entry(e, out, seed), spec, seed, cell, runner, not reuse)
                    if rc == Preempted.exit_code:
                        write()
                        raise Preempted(f"compare stopped during {cell}; run the same command again to go on")
                    if res is None:
                        table["failed"].append(f"{spec.kind}/{names[i]}/seed{seed} (exit code {rc})")
                        log.warning("cell %s failed (exit code %d); going on", cell, rc)
                    else:
                        done[i, spec.kind, seed] = (res, cell)
                    write(png=False)
    except KeyboardInterrupt:
        write()
        raise
    write()
    return table


def paired_with_random(rows: list[dict]) -> None:
    """Adds r["transfer"][column]["vs_random"] to every row but the first random-init row: the
    difference to it seed by seed (a seed fixes the labeled subset, the data order and the new
    layers' init for every backbone alike, so the pairs cancel what the seeds share) ->
    {"mean", "std", "n", "ahead": seeds where this row is higher}."""
    base = next((r for r in rows if r["method"] == "random init"), None)
    for r in rows:
        if base is None or r is base:
            continue
        for title, st in r["transfer"].items():
            ref = dict(zip(base["transfer"][title]["seeds"], base["transfer"][title]["values"]))
            diffs = [v - ref[s] for s, v in zip(st["seeds"], st["values"])
                     if s in ref and v is not None and ref[s] is not None]
            m, sd, n = mean_std(diffs)
            st["vs_random"] = {"mean": m, "std": sd, "n": n, "ahead": sum(d > 0 for d in diffs)}


def markdown(table: dict) -> str:
    cols, tcols = table["columns"], table.get("transfer_columns", [])
    lines = []
    if cols:
        lines.append(f"Top-1 (%) on the test split of {table['data']}"
                     + (f" (first {table['limit']} images per split)" if table["limit"] else "")
                     + f", seed {table['seed']}.")
    for kind, d in table.get("transfer", {}).items():
        keys = [key for key, _ in TASKS.get(kind).columns]
        what = f"{kind} {' / '.join(keys)} (%): {d['head'].upper()}"
        if d["metric"] not in keys:  # detection's AP definition (VOC, VOC07, COCO)
            what += f", {METRICS.get(d['metric'], d['metric'])}"
        lines.append(f"{what}; fine-tuned on {d['data']} and scored on its test split, the same recipe for every "
                     f"backbone (preset {d['preset']}, {d['schedule']}, norm {d['norm']}); mean ± std (runs) over "
                     f"seeds {', '.join(map(str, d['seeds']))}.")
    shown = [o for d in list(table.get("transfer", {}).values())[:1] for o in d["set"] if not _runtime(o)]
    if shown:
        lines.append(f"Every fine-tune with {' '.join(shown)}.")
    lines += ["", "| model | method | " + " | ".join(cols + tcols) + " |",
              "| --- | --- |" + " ---: |" * (len(cols) + len(tcols))]
    for r in table["rows"]:
        cells = [f"{r['top1'][c]:.2f}" for c in cols] + [format_stat(r["transfer"][c]) for c in tcols]
        lines.append(f"| {r['name']} | {r['method']} | " + " | ".join(cells) + " |")
    paired = [r for r in table["rows"] if any("vs_random" in r["transfer"][c] for c in tcols)]
    if paired:
        base = next(r["name"] for r in table["rows"] if r["method"] == "random init")
        lines += ["", f"Paired by seed against {base} (each seed: this row minus random init at that seed, the same "
                  "labeled images and data order): mean ± std (pairs; pairs ahead).", "",
                  "| model | method | " + " | ".join(f"Δ {c}" for c in tcols) + " |",
                  "| --- | --- |" + " ---: |" * len(tcols)]
        for r in paired:
            cells = [(f"{d['mean']:+.2f} ± {d['std']:.2f} ({d['n']}; {d['ahead']}/{d['n']} ahead)" if d["n"] else "n/a")
                     for d in (r["transfer"][c].get("vs_random", {"n": 0}) for c in tcols)]
            lines.append(f"| {r['name']} | {r['method']} | " + " | ".join(cells) + " |")
    if table.get("failed"):
        lines += ["", "Failed: " + ", ".join(table["failed"]) + "."]
    return "\n".join(lines) + "\n"


def bar_chart(table: dict, path: Path) -> None:
    """Grouped bars: one group per column (protocol or transfer metric), one bar per row
    (model); the transfer columns show the mean over seeds with the std as error bars."""
    import numpy as np

    from ..plotting import save, setup

    plt = setup()

    top = table["columns"]  # the classification columns
    tcols = table.get("transfer_columns", [])
    rows = table["rows"]
    cols = top + tcols
    x = np.arange(len(cols))
    w = 0.8 / max(1, len(rows))
    fig, ax = plt.subplots(figsize=(2.2 * len(cols) + 2, 4.5))
    for i, r in enumerate(rows):
        stats = [r["transfer"][c] for c in tcols]
        vals = [r["top1"][c] for c in top] + [s["mean"] if s["n"] else math.nan for s in stats]
        pos = x + (i - (len(rows) - 1) / 2) * w
        errs = [0.0] * len(top) + [s["std"] or 0.0 for s in stats]
        ax.bar(pos, vals, w, label=r["name"] if r["method"] in r["name"] else f"{r['name']} ({r['method']})")
        if tcols:
            ax.errorbar(pos[len(top):], vals[len(top):], yerr=errs[len(top):], fmt="none", ecolor="black",
                        elinewidth=0.8, capsize=2)
        for xx, v, e in zip(pos, vals, errs):  # the value above the bar and its error bar
            if not math.isnan(v):
                ax.text(xx, v + e + 0.5, f"{v:.1f}", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(x, cols)
    kinds = table.get("transfer", {})
    # the tasks' measures without their thresholds (AP50, AP -> AP)
    units = [key.rstrip("0123456789") for kind in kinds for key, _ in TASKS.get(kind).columns]
    ax.set_ylabel(" / ".join((["test top-1"] if top else []) + list(dict.fromkeys(units))) + " (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8, loc="upper left")
    ax.set_title("; ".join(([Path(table["data"]).name] if table["data"] else [])
                           + (["transfer: mean over seeds, error bars 1 std"] if tcols else [])))
    fig.tight_layout()
    save(fig, path, dpi=120)
