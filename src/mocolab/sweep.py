"""`mocolab sweep`: a grid of pretraining runs (the paper's ablations) as one command.

Each cell is a `mocolab pretrain` run in its own process, in OUT/cells/<name>/. A cell with a
summary.json is finished and skipped; any other is (re)run with `--resume auto`, so a stopped
sweep goes on when the same command is run again. Grid axes that a cell's method does not read
(mocolab.methods.applies) are dropped from it, and identical cells are run once. After each
cell OUT/results.{csv,json,md} and the plots are rebuilt from the cell folders.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import itertools
import logging
import re
import sys
from dataclasses import dataclass, fields
from pathlib import Path

from . import config as C
from . import runfiles
from .config import Config, ConfigError
from .methods import applies, method_class
from .runtime import Preempted, check_arguments, data_id, lock_run_dir, read_json, run_process

log = logging.getLogger("mocolab")
PREEMPTED = Preempted.exit_code  # 75: the cell saved a checkpoint and stopped (SIGTERM/SIGINT)
# grid axes with columns of their own
IDENTITY = ("moco.method", "moco.queue_size", "moco.m", "moco.shuffle_bn", "run.seed")
COLUMNS = [("knn", "kNN"), ("linear", "linear (cached)"), ("pretext_acc", "pretext acc"),
           ("final_loss", "final loss"), ("img_per_s", "img/s"), ("wall_s", "wall s"),
           ("epochs", "epochs"), ("status", "status")]


# -- the grid ---------------------------------------------------------------------------------
def _keys() -> list[str]:
    """Every config key as group.name, in the dataclasses' order."""
    return [f"{g}.{f.name}" for g, cls in C.group_classes().items() for f in fields(cls)]


def short(key: str) -> str:
    """group.name -> name where the name alone is unambiguous (as the overrides accept it)."""
    name = key.split(".", 1)[1]
    return name if sum(k.split(".", 1)[1] == name for k in _keys()) == 1 else key


def _fmt(v) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, list):
        return "[" + ",".join(_fmt(x) for x in v) + "]"
    return repr(v) if isinstance(v, float) else str(v)


def resolve(key: str, value: str) -> tuple[str, str]:
    """-> (group.name, canonical value) by the config's own rules; ConfigError (one line) for an
    unknown or ambiguous key or a value of the wrong type."""
    cfg = Config()
    C.set_key(cfg, key, value)
    if "." not in key:
        key = next(f"{g}.{key}" for g, cls in C.group_classes().items() if C.name_in(cls, key))
    group, name = key.split(".", 1)
    return key, _fmt(getattr(getattr(cfg, group), name))


def split_values(text: str) -> list[str]:
    """'a,b' -> [a, b]; commas inside brackets stay: '[0.2,1.0],[0.5,1.0]' -> two values."""
    values = []
    depth = 0  # bracket nesting at ch
    cur = ""  # the value being read
    for ch in text:
        depth += (ch == "[") - (ch == "]")
        if ch == "," and depth == 0:
            values.append(cur)
            cur = ""
        else:
            cur += ch
    return [v.strip() for v in values + [cur]]


def parse_grid(items: list[str]) -> dict[str, list[str]]:
    """['method=moco,bank', 'lr=0.03,0.06'] -> {'moco.method': [...], 'optim.lr': [...]}."""
    grid: dict[str, list[str]] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip() or not text.strip():
            raise ConfigError(f"grid item '{item}' must look like key=v1,v2 "
                              "(for example moco.m=0.99,0.999)")
        pairs = [resolve(key.strip(), v) for v in split_values(text)]
        full = pairs[0][0]
        if full in grid:
            raise ConfigError(f"{full} is given twice in the grid")
        grid[full] = list(dict.fromkeys(v for _, v in pairs))
    return grid


def expand(grid: dict[str, list[str]], default_method: str) -> list[dict[str, str]]:
    """The cartesian product, each cell without the axes its method ignores, duplicates dropped
    (order kept). Keys in config order, so cells and names do not depend on the grid's order."""
    order = _keys()
    keys = sorted(grid, key=order.index)
    cells, seen = [], set()
    for combo in itertools.product(*(grid[k] for k in keys)):
        method = dict(zip(keys, combo)).get("moco.method", default_method)
        cell = {k: v for k, v in zip(keys, combo) if applies(method, k)}
        if tuple(cell.items()) not in seen:
            seen.add(tuple(cell.items()))
            cells.append(cell)
    return cells


def cell_name(cell: dict[str, str]) -> str:
    """A readable folder name: 'method=bank__queue_size=256__seed=0'."""
    name = "__".join(f"{short(k)}={v}" for k, v in cell.items()) or "default"
    name = re.sub(r"[^\w.,=+-]", "_", name.replace("[", "").replace("]", ""))
    if len(name) > 150:  # file systems allow 255 bytes
        name = name[:120] + "__" + hashlib.sha1(name.encode()).hexdigest()[:12]
    return name


@dataclass
class Cell:
    name: str
    overrides: dict[str, str]  # the grid axes that apply to it
    cfg: Config


def plan(preset: str, grid_items: list[str], fixed: list[str],
         seeds: str | None = None) -> list[Cell]:
    """Parses and expands the grid and builds every cell's config: a bad key, value or cell is a
    ConfigError before anything runs."""
    grid = parse_grid(grid_items)
    if seeds is not None:
        if "run.seed" in grid:
            raise ConfigError("give the seeds with --seeds or in --grid, not both")
        grid.update(parse_grid([f"run.seed={seeds}"]))
    default_method = C.apply_overrides(C.load_preset(preset), list(fixed)).moco.method
    cells = []
    for over in expand(grid, default_method):
        name = cell_name(over)
        try:
            cfg = C.build_config(preset, list(fixed) + [f"{k}={v}" for k, v in over.items()])
        except ConfigError as e:
            raise ConfigError(f"cell {name}: {e}") from None
        cells.append(Cell(name, over, cfg))
    return cells


# -- running ----------------------------------------------------------------------------------
def pretrain_command(preset: str, data: str, cell_dir: Path, overrides: list[str]) -> list[str]:
    return [sys.executable, "-m", "mocolab", "pretrain", "--preset", preset, "--data", data,
            "--out", str(cell_dir), "--resume", "auto", *overrides]


def check_meta(out: Path, preset: str, data: str, fixed: list[str], grid_items: list[str]) -> None:
    """OUT/sweep.json: a later sweep into OUT must use the same preset, data and fixed settings
    (so finished cells mean the same); another grid is fine (new cells are added)."""
    path = out / "sweep.json"
    meta = {"preset": preset, "data": data_id(data), "set": list(fixed)}
    if path.is_file():
        old = runfiles.load_json(path)  # torn or hand-edited: one line naming it
        for k, v in meta.items():
            if old.get(k) != v:
                raise ConfigError(f"{out} holds a sweep with {k} {old.get(k)!r}, not {v!r}; "
                                  "use another --out")
    out.mkdir(parents=True, exist_ok=True)
    runfiles.write_json(path, {**meta, "grid": list(grid_items)})


def sweep(preset: str, data: str, out: str | Path, grid_items: list[str], *, fixed=(),
          seeds: str | None = None, epochs: int | None = None, budget_minutes: float | None = None,
          linear: bool = True, knn_every: int = 1, dry_run: bool = False,
          runner=run_process) -> int:
    """Runs the grid's cells one after another -> exit code: 0, 75 when stopped, 1 if any
    failed. runner(cmd) -> exit code runs one cell."""
    out = Path(out)
    fixed = list(fixed) + [f"run.knn_every={knn_every}"]
    if epochs is not None:
        fixed.append(f"run.epochs={epochs}")
    if budget_minutes is not None:
        fixed.append(f"run.budget_minutes={budget_minutes}")
    cells = plan(preset, grid_items, fixed, seeds)
    grid_keys = list(parse_grid(grid_items)) + (["run.seed"] if seeds is not None else [])
    if dry_run:
        for c in cells:
            print(f"{c.name}  ({status(out / 'cells' / c.name)})")
        print(f"{len(cells)} cells")
        return 0
    lock_run_dir(out)  # one sweep per folder: two would run the same cells and write the same tables
    check_meta(out, preset, data, fixed, grid_items)
    probe = LinearProbe(data) if linear else None
    failed: dict[str, int] = {}

    def write(stopping: bool = False) -> dict:  # a stopping sweep computes no linear probe
        return write_results(out, cells, grid_keys, failed, None if stopping else probe,
                             preset, data)

    try:
        for i, c in enumerate(cells, 1):
            cell_dir = out / "cells" / c.name
            if (cell_dir / "summary.json").is_file():
                log.info("cell %d/%d %s: finished, skipped", i, len(cells), c.name)
                continue
            log.info("cell %d/%d %s: running", i, len(cells), c.name)
            over = fixed + [f"{k}={v}" for k, v in c.overrides.items()]
            rc = runner(pretrain_command(preset, data, cell_dir, over))
            if rc == PREEMPTED:
                write(stopping=True)
                log.info("sweep stopped; run the same command again to go on")
                return PREEMPTED
            if rc != 0:
                failed[c.name] = rc
                log.warning("cell %s failed (exit code %d); going on", c.name, rc)
            write()
    except KeyboardInterrupt:
        write(stopping=True)
        raise
    table = write()
    print((out / "results.md").read_text(), end="")
    if failed:
        log.warning("%d of %d cells failed: %s", len(failed), len(cells), ", ".join(failed))
    done = sum(r["status"] == "done" for r in table["rows"])
    print(f"{done} of {len(cells)} cells done; written: {out}/results.md, .csv, .json")
    return 1 if failed else 0


# -- results ----------------------------------------------------------------------------------
def status(cell_dir: Path, rc: int | None = None) -> str:
    if (cell_dir / "summary.json").is_file():
        return "done"
    if rc is not None:
        return f"failed (exit {rc})"
    return "partial" if any((cell_dir / "checkpoints").glob("*.pth")) else "not run"


def read_metrics(path: Path) -> tuple[dict[int, dict], dict[float, float]]:
    """metrics.jsonl (runfiles.read_metrics: a resumed run's replayed steps replace the earlier
    records; bad lines skipped with a warning) -> ({step: step record}, {epoch: kNN})."""
    records, monitors = runfiles.read_metrics(path)
    # the step records with an integer epoch: cell_row groups by epoch
    return ({r["step"]: r for r in records if isinstance(r.get("epoch"), int)},
            {m["epoch"]: m["knn_top1"] for m in monitors if "epoch" in m})


def cell_row(cell: Cell, cell_dir: Path, rc: int | None = None) -> dict:
    """One results row: the cell's settings (from its config) and what its folder holds."""
    cfg, method = cell.cfg, cell.cfg.moco.method
    summary = read_json(cell_dir / "summary.json")
    steps, knn = read_metrics(cell_dir / "metrics.jsonl")
    last = steps[max(steps)] if steps else {}
    per_epoch: dict[int, list] = {}
    for rec in steps.values():
        per_epoch.setdefault(rec["epoch"] + 1, []).append(rec)  # during epoch e -> after e + 1
    if "knn_top1" in summary:
        knn[round(summary["epochs"], 3)] = summary["knn_top1"]

    def mean_of(key):
        return [[e, sum(r[key] for r in rs) / len(rs)] for e, rs in sorted(per_epoch.items())
                if all(key in r for r in rs)]

    return {"cell": cell.name, "method": method,
            "K": method_class(method).num_negatives(cfg),
            "m": cfg.moco.m if applies(method, "moco.m") else None,
            "shuffle": cfg.moco.shuffle_bn if applies(method, "moco.shuffle_bn") else None,
            "seed": cfg.run.seed, "axes": {short(k): v for k, v in cell.overrides.items()},
            "knn": summary.get("knn_top1"), "linear": None, "pretext_acc": last.get("pretext_acc"),
            "final_loss": last.get("loss"), "img_per_s": summary.get("images_per_second"),
            "wall_s": summary.get("wall_seconds"), "epochs": summary.get("epochs"),
            "status": status(cell_dir, rc), "exit_code": rc,
            "curves": {"loss": mean_of("loss"), "pretext_acc": mean_of("pretext_acc"),
                       "knn": [[e, v] for e, v in sorted(knn.items())]}}


class LinearProbe:
    """The cached-feature linear probe of finished cells (result JSON beside backbone.pth)."""

    def __init__(self, data: str):
        self.data = data
        self.contexts = {}
        self.done = {}

    def __call__(self, cell_dir: Path, limit: int) -> float | None:
        if cell_dir not in self.done:
            from .checkpoint import CheckpointError
            from .data import DataError
            from .eval.protocols import Context, Target, knn_and_linear_cached

            ctx = self.contexts.setdefault(limit, Context(self.data, limit=limit))
            try:
                res = knn_and_linear_cached(Target.from_entry(str(cell_dir)), ctx, knn=False,
                                            linear=True, reuse=True)
                self.done[cell_dir] = res["linear_cached"]["top1"]
            except (DataError, CheckpointError) as e:
                log.warning("linear probe of %s skipped: %s", cell_dir.name, e)
                self.done[cell_dir] = None
        return self.done[cell_dir]


def saved_linear(cell_dir: Path) -> float | None:
    """A linear probe result already beside the cell's backbone (none is computed)."""
    from .eval.results import latest_result

    return latest_result(cell_dir / "backbone.pth", "linear_cached").get("top1")


def table_columns(grid_keys: list[str]) -> list[tuple[str, str]]:
    """[(row key, title)]: identity, the other grid axes, then the results."""
    taken = {k for k, _ in COLUMNS}
    other = [(short(k), short(k)) for k in grid_keys if k not in IDENTITY and short(k) not in taken]
    ident = [("cell", "cell"), ("method", "method"), ("K", "K"), ("m", "m"), ("shuffle", "shuffle"),
             ("seed", "seed")]
    return ident + other + COLUMNS


def _cell_text(v) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "on" if v else "off"
    if isinstance(v, float):
        return f"{v:.2f}" if abs(v) >= 1 or v == 0 else f"{v:.4g}"
    return str(v)


def _value(row: dict, key: str):
    return row[key] if key in row else row["axes"].get(key)


def markdown(rows: list[dict], cols: list[tuple[str, str]], notes: list[str], title: str) -> str:
    lines = [title, "", "| " + " | ".join(t for _, t in cols) + " |", "|" + " --- |" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(_cell_text(_value(r, k)) for k, _ in cols) + " |")
    return "\n".join(lines + [""] + [f"- {n}" for n in notes]) + "\n"


def seed_means(rows: list[dict]) -> list[dict]:
    """Cells that differ only by their seed, as one row: kNN, linear and pretext accuracy as
    mean, std and the values per seed (finished cells only) -> [] when no axis is a seed."""
    from .eval.compare import mean_std

    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        if "seed" not in r["axes"] or r["status"] != "done":
            continue
        key = tuple((k, v) for k, v in r["axes"].items() if k != "seed")
        groups.setdefault(key, []).append(r)
    out = []
    for key, rs in groups.items():
        row = {"cell": "__".join(f"{k}={v}" for k, v in key) or "default", "seeds": [r["seed"] for r in rs]}
        for m in ("knn", "linear", "pretext_acc"):
            vals = [r[m] for r in rs if r.get(m) is not None]
            mean, std, n = mean_std(vals)
            row[m] = {"mean": mean, "std": std if n > 1 else None, "values": vals}
        out.append(row)
    return out


def means_markdown(means: list[dict]) -> str:
    def cell(d):
        if d["mean"] is None:
            return ""
        sd = f" ± {d['std']:.2f}" if d["std"] is not None else ""
        return f"{d['mean']:.2f}{sd} ({' / '.join(f'{v:.2f}' for v in d['values'])})"

    lines = ["Over the seeds (mean ± std, then each seed's figure):", "",
             "| cell | seeds | kNN | linear (cached) | pretext acc |", "| --- | --- | --- | --- | --- |"]
    lines += [f"| {m['cell']} | {len(m['seeds'])} | {cell(m['knn'])} | {cell(m['linear'])} | {cell(m['pretext_acc'])} |"
              for m in means]
    return "\n".join(lines) + "\n"


def write_results(out: Path, cells: list[Cell], grid_keys: list[str], failed: dict[str, int],
                  probe: LinearProbe | None, preset: str, data: str) -> dict:
    """Rebuilds OUT/results.{csv,json,md} and the plots from the cell folders -> the table.
    probe None: linear results already saved are shown, none is computed (a stopping sweep)."""
    rows = []
    for c in cells:
        cell_dir = out / "cells" / c.name
        row = cell_row(c, cell_dir, failed.get(c.name))
        if row["status"] == "done":
            row["linear"] = probe(cell_dir, c.cfg.data.limit) if probe else saved_linear(cell_dir)
        rows.append(row)
    cols = table_columns(grid_keys)
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow([t for _, t in cols])
        w.writerows([[_value(r, k) for k, _ in cols] for r in rows])
    notes = write_plots(rows, grid_keys, out)
    means = seed_means(rows)
    table = {"preset": preset, "data": data_id(data), "grid": grid_keys, "rows": rows,
             "seed_means": means, "notes": notes}
    runfiles.write_json(out / "results.json", table)
    title = (f"Sweep of preset {preset} on {data_id(data)}: kNN and linear (cached features) "
             "top-1 % on the test split; pretext acc and final loss from the last logged step.")
    md = markdown(rows, cols, notes, title)
    runfiles.write_text(out / "results.md", md + ("\n" + means_markdown(means) if means else ""))
    return table


# -- plots ------------------------------------------------------------------------------------
def write_plots(rows: list[dict], grid_keys: list[str], out: Path) -> list[str]:
    """knn_vs_K.png, knn_vs_m.png, curves_shuffle.png where their axis is in the grid, and always
    curves.png and knn_by_cell.png -> notes."""
    from .plotting import setup

    plt = setup()
    notes = []
    plots = [("knn_vs_K.png", {"moco.queue_size", "optim.batch_size"}, "moco.queue_size"),
             ("knn_vs_m.png", {"moco.m"}, "moco.m"),
             ("curves_shuffle.png", {"moco.shuffle_bn"}, "moco.shuffle_bn")]
    for fname, keys, axis in plots:
        if not keys & set(grid_keys):
            notes.append(f"{fname} not written: {axis} is not a grid axis")
            continue
        fig = None
        if fname == "knn_vs_K.png":
            fig = _plot_vs(plt, rows, "K", keys, "K (negatives; e2e: batch - 1)", log2=True)
        elif fname == "knn_vs_m.png":
            # the methods with a key encoder (m is None for the others), a line each
            fig = _plot_vs(plt, [r for r in rows if r["m"] is not None], "m", keys, "m (momentum)")
        else:
            fig = _plot_curves(plt, [r for r in rows if r["shuffle"] is not None])
        if fig is None:
            notes.append(f"{fname} not written yet: no finished cell has the values")
            continue
        _save(plt, fig, out / fname)
    # every sweep, whatever its axes: each cell's curves and its kNN
    for fname, fig in (("curves.png", _plot_curves(plt, rows, by_shuffle=False)),
                       ("knn_by_cell.png", _plot_knn_bars(plt, rows))):
        if fig is None:
            notes.append(f"{fname} not written yet: no finished cell has the values")
        else:
            _save(plt, fig, out / fname)
    return notes


def _save(plt, fig, path: Path) -> None:
    from .plotting import save

    fig.tight_layout()
    save(fig, path, dpi=120, bbox_inches="tight")


def _plot_knn_bars(plt, rows):
    """A bar per cell: its kNN top-1."""
    done = [r for r in rows if r["knn"] is not None]
    if not done:
        return None
    fig, ax = plt.subplots(figsize=(max(4.0, 0.5 * len(done) + 2), 4.2))
    ax.bar(range(len(done)), [r["knn"] for r in done], color="C0")
    ax.set_xticks(range(len(done)), [r["cell"] for r in done], rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("kNN top-1 (%)")
    ax.grid(axis="y", alpha=0.3)
    return fig


def _plot_vs(plt, rows, x: str, x_keys: set[str], xlabel: str, log2: bool = False):
    """kNN against x: a line per method and other setting; mean over seeds, min/max bars."""
    hide = {short(k) for k in x_keys | {"moco.method", "run.seed"}}
    lines: dict[str, dict] = {}
    for r in rows:
        if r["knn"] is None or r[x] is None or (log2 and r[x] <= 0):
            continue
        label = " ".join([r["method"]] + [f"{k}={v}" for k, v in r["axes"].items()
                                          if k not in hide])
        lines.setdefault(label, {}).setdefault(r[x], []).append(r["knn"])
    if not lines:
        return None
    xs_all = sorted({v for pts in lines.values() for v in pts})
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for label, pts in lines.items():
        xs = sorted(pts)
        ys = [sum(pts[v]) / len(pts[v]) for v in xs]
        err = [[y - min(pts[v]) for v, y in zip(xs, ys)], [max(pts[v]) - y for v, y in zip(xs, ys)]]
        pos = xs if log2 else [xs_all.index(v) for v in xs]  # m: evenly spaced (0.9, 0.99, 0.999)
        ax.errorbar(pos, ys, yerr=err, marker="o", capsize=3, label=label)
    if log2:
        ax.set_xscale("log", base=2)
    else:
        ax.set_xticks(range(len(xs_all)), [f"{v:g}" for v in xs_all])
    ax.set_xlabel(xlabel)
    ax.set_ylabel("kNN top-1 (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def _plot_curves(plt, rows, by_shuffle: bool = True):
    """Loss, pretext accuracy and kNN per epoch, mean over seeds, a color per setting; with
    by_shuffle, solid: Shuffle BN on, dashed: off."""
    hide = {short(k) for k in ("moco.method", "run.seed")}
    if by_shuffle:
        hide.add(short("moco.shuffle_bn"))
    else:
        rows = [{**r, "shuffle": True} for r in rows]  # one style for all
    groups: dict[tuple, dict] = {}  # (setting, shuffle) -> curve -> {epoch: [values]}
    for r in rows:
        label = " ".join([r["method"]] + [f"{k}={v}" for k, v in r["axes"].items()
                                          if k not in hide])
        g = groups.setdefault((label, r["shuffle"]), {})
        for key, pts in r["curves"].items():
            for e, v in pts:
                g.setdefault(key, {}).setdefault(e, []).append(v)
    if not any(groups.values()):
        return None
    colors = list(dict.fromkeys(label for label, _ in groups))
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for (label, on), g in groups.items():
        style = {"color": f"C{colors.index(label) % 10}", "ls": "-" if on else "--", "marker": "."}
        for ax, key in zip(axes, ("loss", "pretext_acc", "knn")):
            pts = sorted(g.get(key, {}).items())
            if pts:
                shuffle = f", shuffle {'on' if on else 'off'}" if by_shuffle else ""
                ax.plot([e for e, _ in pts], [sum(v) / len(v) for _, v in pts], label=label + shuffle, **style)
    for ax, title in zip(axes, ("loss", "pretext accuracy (%)", "kNN top-1 (%)")):
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    fig.legend(*max(axes, key=lambda a: len(a.lines)).get_legend_handles_labels(), fontsize=8,
               loc="upper left", bbox_to_anchor=(1, 0.95))
    fig.suptitle("Shuffle BN on (solid) and off (dashed), mean over seeds" if by_shuffle
                 else "Each setting's curves, mean over seeds")
    return fig


# -- command line -----------------------------------------------------------------------------
def cmd_sweep(args) -> int:
    check_arguments(args)
    return sweep(args.preset, args.data, args.out, args.grid, fixed=args.fixed, seeds=args.seeds,
                 epochs=args.epochs, budget_minutes=args.budget_minutes, linear=args.linear,
                 knn_every=args.knn_every, dry_run=args.dry_run)


def add_command(sub) -> None:
    """Adds `sweep` to the `mocolab` parser's subparsers."""
    sw = sub.add_parser(
        "sweep", help="a grid of pretraining runs (the paper's ablations): one table and plots",
        description="Runs one `mocolab pretrain` per cell of the grid, one after another, in "
        "OUT/cells/<cell>/. Finished cells are skipped and stopped ones resumed, so running the "
        "same command again goes on. Axes a cell's method ignores are dropped from it. Writes "
        "OUT/results.{csv,json,md}, knn_vs_K.png, knn_vs_m.png and curves_shuffle.png.")
    sw.add_argument("--preset", default="cifar10_cpu", help="a preset name or a YAML file")
    sw.add_argument("--data", required=True,
                    help="image folder (labeled train/ and test/ for kNN and linear)")
    sw.add_argument("--out", required=True, help="sweep folder")
    sw.add_argument("--grid", nargs="+", required=True, metavar="KEY=V1,V2",
                    help="axes, e.g. method=moco,bank,e2e moco.queue_size=256,4096 "
                    "data.crop_scale=[0.2,1.0],[0.5,1.0]")
    sw.add_argument("--set", nargs="+", default=[], dest="fixed", metavar="KEY=VALUE",
                    help="overrides for every cell")
    sw.add_argument("--seeds", help="comma list of run.seed values, e.g. 0,1")
    length = sw.add_mutually_exclusive_group()
    length.add_argument("--epochs", type=int)
    length.add_argument("--budget-minutes", type=float,
                        help="each cell: a complete run within M minutes")
    sw.add_argument("--linear", action=argparse.BooleanOptionalAction, default=True,
                    help="linear probe (cached features) on each finished cell")
    sw.add_argument("--knn-every", type=int, default=1,
                    help="epochs between kNN monitors in each cell (for the curves)")
    sw.add_argument("--dry-run", action="store_true", help="print the cells and exit")
    sw.set_defaults(fn=cmd_sweep)
