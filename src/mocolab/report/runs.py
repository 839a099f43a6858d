"""Reading run folders for the report: what a folder is (a run, a sweep, a compare), its metrics,
config, results and weights, whatever it has so far (a run in progress has no summary.json yet)."""

from __future__ import annotations

import functools
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import PathError
from ..registry import TASKS
from ..runfiles import read_json, read_metrics, read_yaml

log = logging.getLogger("mocolab")



@dataclass
class Run:
    """One training run's folder and what it holds."""

    path: Path
    name: str
    command: str = ""  # pretrain | supervised | detect | segment | "" (unknown)
    records: list[dict] = field(default_factory=list)  # metrics.jsonl, step records
    monitors: list[dict] = field(default_factory=list)  # metrics.jsonl, kNN monitor records
    config: dict = field(default_factory=dict)  # config.yaml, nested
    summary: dict = field(default_factory=dict)
    results: dict[str, dict] = field(default_factory=dict)  # file name -> an evaluation / task result
    weights: Path | None = None  # backbone.pth, else the newest checkpoint, else None
    data: str = ""  # the data the run (or its results) record


@dataclass
class Folder:
    """What `mocolab report RUN_DIR` was given: a run, a sweep (cells/) or a compare folder."""

    path: Path
    kind: str  # run | sweep | compare
    runs: list[Run]
    tables: list[tuple[str, str]] = field(default_factory=list)  # (file name, markdown text)
    figures: list[Path] = field(default_factory=list)  # PNGs the folder already holds
    meta: dict = field(default_factory=dict)  # sweep.json / compare.json


def add_seconds(records: list[dict], monitors: list[dict], batch_size: int) -> None:
    """Sets rec["seconds"]: elapsed_s where the run logged it; for older runs, training seconds
    summed from img/s over each log window (monitors' time not counted). Monitors get the
    seconds of the step record at or before their step."""
    total, prev_step = 0.0, 0
    for rec in records:  # read_metrics: every record has an int step, in increasing order
        if number(rec.get("elapsed_s")) is not None:
            total = rec["elapsed_s"]
        elif (ips := number(rec.get("img_per_s"))) and batch_size:
            total += (rec["step"] - prev_step) * batch_size / ips
        rec["seconds"] = total
        prev_step = rec["step"]
    for mon in monitors:
        if number(mon.get("elapsed_s")) is not None:
            mon["seconds"] = mon["elapsed_s"]
            continue
        before = [r["seconds"] for r in records if r["step"] <= mon["step"]]
        mon["seconds"] = before[-1] if before else 0.0


def number(v) -> float | None:
    """v if it is a finite int or float (not a bool: a hand-edited file may hold anything), else None."""
    if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
        return v
    return None


def group(config: dict, name: str) -> dict:
    """A config group as a dict ({} when missing, or not a mapping in a hand-edited config: `optim: 5`)."""
    g = config.get(name)
    return g if isinstance(g, dict) else {}


def evaluation_results(weights: Path) -> dict[str, dict]:
    """Evaluation JSONs beside the weights: BASE.PROTOCOL[.seedS.DIGEST].json (not BASE.json)."""
    found = {}
    for p in sorted(weights.parent.glob(f"{weights.stem}.*.json")):
        obj = read_json(p)
        if obj:
            found[p.name] = obj
    return found


def newest_checkpoint(path: Path) -> Path | None:
    """The newest *.pth in RUN_DIR/checkpoints (by modification time), without loading it."""
    ckdir = path / "checkpoints"
    found = sorted(ckdir.glob("*.pth"), key=lambda p: p.stat().st_mtime) if ckdir.is_dir() else []
    return found[-1] if found else None


def read_run(path: Path, name: str | None = None) -> Run:
    path = Path(path)
    run = Run(path, name or path.name)
    command = read_json(path / "command.json").get("command")
    run.command = command if isinstance(command, str) else ""
    run.records, run.monitors = read_metrics(path / "metrics.jsonl")
    run.config = read_yaml(path / "config.yaml")  # torn or hand-edited: {} and a warning naming it
    batch = number(group(run.config, "optim").get("batch_size")) or number(group(run.config, "task").get("batch_size"))
    add_seconds(run.records, run.monitors, int(batch or 0))
    # the run's summary, and each registered transfer task's result file (detect.json, segment.json, ...)
    for fname in ("summary.json", *(task.result_file for task in TASKS)):
        if (obj := read_json(path / fname)):
            if fname == "summary.json":
                run.summary = obj
            else:
                run.results[fname] = obj
    if (path / "backbone.pth").is_file():
        run.weights = path / "backbone.pth"
    elif run.command in ("", "pretrain", "supervised"):  # a run in progress: its newest checkpoint
        run.weights = newest_checkpoint(path)
    if run.weights is not None:
        run.results.update(evaluation_results(run.weights))
    datas = [r.get("data") for r in (read_json(path / "command.json"), *run.results.values())]
    run.data = next((d for d in datas if isinstance(d, str) and d), "")
    return run


def is_run(path: Path) -> bool:
    return any((path / f).exists() for f in ("metrics.jsonl", "config.yaml", "command.json", "checkpoints"))


def read_folder(path: str | Path) -> Folder:
    """A run folder, a sweep folder (results.json + cells/) or a compare folder (compare.json)."""
    path = Path(path).expanduser()
    if not path.is_dir():
        raise PathError(f"run folder not found: {path}")
    tables = [(p.name, p.read_text(encoding="utf-8", errors="replace"))
              for p in (path / "results.md", path / "compare.md") if p.is_file()]
    figures = sorted(path.glob("*.png"))
    if (path / "cells").is_dir():
        meta = read_json(path / "sweep.json")
        runs = [read_run(c) for c in sorted((path / "cells").iterdir()) if c.is_dir() and is_run(c)]
        for r in runs:
            r.data = r.data or meta.get("data", "")
        return Folder(path, "sweep", runs, tables, figures, meta)
    if (path / "compare.json").is_file():
        meta = read_json(path / "compare.json")
        runs = [read_run(p.parent, p.parent.relative_to(path).as_posix())
                for p in sorted(path.glob("transfer/*/*/*/metrics.jsonl"))
                if ".replaced-" not in p.parent.name]  # cells moved aside for other settings
        return Folder(path, "compare", runs, tables, figures, meta)
    if not is_run(path):
        raise PathError(f"{path} is not a run, sweep or compare folder (no metrics.jsonl, config.yaml, "
                        "cells/ or compare.json)")
    return Folder(path, "run", [read_run(path)], tables, figures)


def flatten(d: dict, prefix: str = "") -> dict:
    """{"optim": {"lr": 0.1}} -> {"optim.lr": 0.1}; values JSON-normalised (tuples -> lists)."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = json.loads(json.dumps(v, default=str))
    return out


@functools.lru_cache(maxsize=1)
def preset_configs() -> dict[str, dict]:
    """Every preset (pretraining and transfer), flattened; read once for all the runs (read only)."""
    from ..config import load_preset, preset_names
    from ..transfer.config import TransferConfig

    out = {}
    for package, base in (("mocolab", None), ("mocolab.transfer", TransferConfig)):
        for name in preset_names(package):
            try:
                cfg = load_preset(name, package, base() if base else None)
            except ValueError as e:
                log.warning("preset %s not read: %s", name, e)
                continue
            out[name] = flatten(cfg.to_dict())
    return out


def nearest_preset(config: dict, preset: str | None = None) -> tuple[str, dict]:
    """(preset name, flattened preset config): `preset` when given (a sweep records it), else
    the preset of the same kind (the same config groups) that differs from the run in the fewest
    of the run's keys (a key the preset lacks counts as a difference)."""
    flat = flatten(config)
    presets = preset_configs()
    if preset and preset in presets:
        return preset, presets[preset]
    groups = {k.split(".")[0] for k in flat}
    best, best_diff = ("", {}), None
    for name, pc in presets.items():
        if {k.split(".")[0] for k in pc} != groups:
            continue
        diff = sum(k not in pc or pc[k] != v for k, v in flat.items())
        if best_diff is None or diff < best_diff:
            best, best_diff = (name, pc), diff
    return best
