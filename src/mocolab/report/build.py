"""`mocolab report`: one folder (index.html + PNGs) of what runs learned: curves, nearest
neighbours, an embedding map and the tables of their folders."""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UsageError
from ..runfiles import write_bytes, write_text
from ..runtime import check_run_path, lock_run_dir
from . import page
from .curves import PANELS, plot_curves
from .embedding import embed_2d, per_class_knn, plot_map, subsample
from .health import health_section
from .neighbours import pick_queries, plot_neighbours, top_k
from .runs import Folder, Run, flatten, group, is_run, nearest_preset, number, read_folder

log = logging.getLogger("mocolab")

# result keys shown as figures, in this order (the rest of a result's settings are left out)
FIGURES = ["knn_top1", "top1", "top5", "label_fraction", "AP50", "AP", "AP75", "mIoU", "pixel_acc", "mean_iou",
           "accuracy", "k", "t", "train_size", "test_size", "seed"]


@dataclass
class Options:
    data: str | None = None
    limit: int = 0  # first N images per split (class-balanced), 0 = all
    seed: int = 0
    queries: int = 12
    neighbours: int = 8
    map_points: int = 1000
    device: str = "auto"
    preset: str | None = None
    features: bool = True  # neighbours and maps (False: curves and tables only)


@dataclass
class Learned:
    """What one backbone's features show."""

    run: Run
    neighbours_png: str = ""
    map_png: str = ""
    per_class: list[dict] = field(default_factory=list)
    per_class_title: str = ""
    caption: str = ""
    map_caption: str = ""
    notes: list[str] = field(default_factory=list)


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "run"


class SplitCache:
    """Decoded splits by (data, size, limit): a sweep's cells share one."""

    def __init__(self, limit: int):
        self.limit, self.cache = limit, {}

    def get(self, data: str, image_size: int):
        from ..data import cache_size_for, load_splits

        key = (data, cache_size_for(image_size))
        if key not in self.cache:
            self.cache[key] = load_splits(data, key[1], limit=self.limit)
        return self.cache[key]


def learn(run: Run, data: str, opts: Options, out: Path, splits: SplitCache, prefix: str) -> Learned:
    """Features of `run`'s weights on `data` -> the neighbours figure, the map and per-class kNN."""
    from ..eval.features import extract_features
    from ..eval.load import load_for_eval
    from ..runtime import resolve_device

    res = Learned(run)
    net, cfg = load_for_eval(str(run.weights), "backbone", None)
    device = resolve_device(opts.device)
    net = net.to(device)
    sp = splits.get(data, cfg.data.image_size)
    kw = dict(device=device, size=cfg.data.image_size)
    f_tr, y_tr = extract_features(net, sp.train, cfg.data.mean, cfg.data.std, **kw)
    classes = list(sp.train.classes) if bool((y_tr >= 0).all()) else []
    if sp.test is not None:
        f_q, y_q, q_data, exclude = *extract_features(net, sp.test, cfg.data.mean, cfg.data.std, **kw), sp.test, False
    else:  # one split: queries from it, their own image left out of their neighbours
        f_q, y_q, q_data, exclude = f_tr, y_tr, sp.train, True
        res.notes.append(f"{data} has no test/ or val/ split: the queries and the map are training images")
    if not classes:
        res.notes.append(f"{data} has no labels: neighbours without class marks, map uncoloured, no per-class kNN")
    f_tr, f_q = f_tr.cpu(), f_q.cpu()

    # nearest neighbours: M queries x k training images
    q_idx = pick_queries(y_q, opts.queries, opts.seed)
    sims, idx = top_k(f_q[q_idx], f_tr, opts.neighbours, exclude=q_idx if exclude else None)
    name = f"{prefix}.neighbours.png"
    plot_neighbours(q_data.images[q_idx], y_q[q_idx], sp.train.images[idx], y_tr[idx], sims, classes, out / name)
    res.neighbours_png = name
    split = "test" if sp.test is not None else "training"
    per = "one per class, " if classes else ""
    res.caption = (f"Nearest neighbours of {len(q_idx)} {split} images ({per}drawn with seed {opts.seed}; left column) "
                   f"among the {len(f_tr)} training images of {data}, by cosine similarity of {run.name}'s backbone "
                   f"features ({f_tr.shape[1]}-d, pooled, L2-normalised; thumbnails at the decoded size, "
                   f"{sp.train.images.shape[-1]} px). Each neighbour shows its class and cosine similarity, most "
                   "similar first" + ("; a green frame and ✓ mark a neighbour of the query's class, a red frame and ✗ "
                                      "another class." if classes else "."))

    # the 2-D map of the query split, per-class kNN beside it
    sub = subsample(len(f_q), opts.map_points, opts.seed)
    xy = embed_2d(f_q[sub], opts.seed)
    name = f"{prefix}.map.png"
    plot_map(xy, y_q[sub], classes, out / name, f"t-SNE of {len(sub)} {split} images' features ({run.name})")
    res.map_png = name
    res.map_caption = (f"t-SNE (scikit-learn, cosine distance, perplexity ≤ 30, seed {opts.seed}) of the backbone "
                       f"features of {len(sub)} of the {len(f_q)} {split} images"
                       + (", coloured by class" if classes else " (no labels: uncoloured)")
                       + ". Only neighbourhoods mean something; distances between far clusters and the axes do not.")
    if classes and sp.test is not None:
        rc = group(run.config, "run")  # a hand-edited value that is no count or temperature: the defaults
        k = rc["knn_k"] if isinstance(number(rc.get("knn_k")), int) and rc["knn_k"] > 0 else 200
        t = rc["knn_t"] if (number(rc.get("knn_t")) or 0) > 0 else 0.1
        res.per_class = per_class_knn(f_tr, y_tr, f_q, y_q, classes, k, t)
        res.per_class_title = (f"Weighted kNN top-1 (%) per class: k {k}, τ {t}, the {len(f_tr)} training images "
                               f"as the bank, all {len(f_q)} test images")
    return res


def config_table(run: Run, preset: str | None) -> str:
    if not run.config:
        return page.note("no readable config.yaml")
    name, pc = nearest_preset(run.config, preset)
    flat = flatten(run.config)
    rows, cls = [], []
    for k, v in flat.items():
        rows.append([k, str(v), str(pc[k]) if k in pc else "(not in preset)" if pc else ""])
        cls.append("diff" if pc and (k not in pc or pc[k] != v) else "")
    n = cls.count("diff")
    head = (f"Config ({run.path / 'config.yaml'}) against preset {name}: {n} key(s) differ, highlighted"
            if name else "Config (no preset with the same keys to compare with)")
    return f"<p>{page.esc(head)}</p>" + page.table(["key", "run", f"preset {name}" if name else "preset"], rows, cls)


def results_table(run: Run) -> str:
    """Evaluation results beside the weights and the task results in the run folder."""
    rows = []
    for fname, r in run.results.items():
        what = r.get("protocol") or r.get("task") or fname.split(".")[1]
        figs = [f"{k} {page.fmt(r[k])}" for k in FIGURES if isinstance(r.get(k), (int, float))]
        if not figs:
            figs = [f"{k} {page.fmt(v)}" for k, v in r.items() if isinstance(v, float)][:8]
        rows.append([fname, what, "; ".join(figs), r.get("data", "")])
    if not rows:
        return ""
    return "<p>Evaluation results found beside the weights (and the run's task results)</p>" + page.table(
        ["file", "protocol", "figures (%, or as named)", "data"], rows)


def summary_table(run: Run) -> str:
    if not run.summary:
        last = run.records[-1] if run.records else {}
        where = f" (last logged: step {last['step']}, epoch {page.fmt(last.get('epoch_float', ''))})" if last else ""
        return page.note(f"no summary.json: the run is in progress or was stopped{where}; this reports what it has")
    rows = [[k, v] for k, v in run.summary.items() if not isinstance(v, (dict, list))]
    return f"<p>{page.esc(run.path / 'summary.json')}</p>" + page.table(["key", "value"], rows)


def overview(runs: list[Run]) -> str:
    """One line per run: its state, how far it got, its kNN top-1 and the weights the report uses."""
    rows = []
    for r in runs:
        last = r.records[-1] if r.records else {}
        epochs = r.summary.get("epochs", last.get("epoch_float", ""))
        knn = r.summary.get("knn_top1", r.monitors[-1]["knn_top1"] if r.monitors else "")
        state = "finished" if r.summary else "in progress or stopped" if r.records else "not started"
        weights = r.weights.relative_to(r.path).as_posix() if r.weights else "none"
        rows.append([r.name, r.command or "?", state, epochs, r.summary.get("steps", last.get("step", "")), knn,
                     weights])
    return page.table(["run", "command", "state", "epochs", "steps", "kNN top-1 (%)", "weights used"], rows)


def curves_section(runs: list[Run], out: Path) -> str:
    if not any(r.records or r.monitors for r in runs):
        return page.note("no metrics.jsonl with records yet: no curves")
    html = []
    names = ", ".join(r.name for r in runs)
    for x, fname, what in (("epoch", "curves_epoch.png", "epoch (fractional: step / steps per epoch)"),
                           ("time", "curves_time.png", "training time in minutes")):
        shown = plot_curves(runs, x, out / fname)
        missing = [title for key, title, _ in PANELS if key not in shown]
        cap = (f"Training curves of {names} against {what}: the mean of each log window of metrics.jsonl "
               "(every run.log_every steps): loss, learning rate, the key encoder's momentum m, the pretext task's "
               "top-1 (the positive key among 1+K), throughput in images per second, and the kNN monitor's top-1 on "
               "the test split (end of an epoch when run.knn_every is set); ★ the final kNN top-1 of summary.json.")
        if x == "time":
            cap += (" Time is the run's training seconds (elapsed_s: steps and monitors, start-up excluded); for "
                    "runs logged before elapsed_s it is summed from img/s over each window, monitors not counted.")
        if missing:
            cap += f" Not logged by these runs: {', '.join(missing)}."
        html.append(page.figure(fname, cap, f"training curves against {x}"))
    return "\n".join(html)


def learned_html(res: Learned) -> str:
    html = [page.note(n) for n in res.notes]
    if res.run.weights is not None and res.run.weights.name != "backbone.pth":
        html.append(page.note(f"no backbone.pth yet: features of the newest checkpoint, {res.run.weights}"))
    html.append(page.figure(res.neighbours_png, res.caption, f"nearest neighbours, {res.run.name}"))
    side = [page.figure(res.map_png, res.map_caption, f"embedding map, {res.run.name}")]
    if res.per_class:
        side.append("<div><p>" + page.esc(res.per_class_title) + "</p>" + page.table(
            ["class", "test images", "kNN top-1 (%)"], [[r["class"], r["images"], r["top1"]] for r in res.per_class])
            + "</div>")
    html.append('<div class="side">' + "\n".join(side) + "</div>")
    return "\n".join(html)


def folder_tables(folder: Folder, out: Path, prefix: str) -> str:
    html = []
    for fname, text in folder.tables:
        html.append(f"<h3>{page.esc(folder.path / fname)}</h3>" + page.markdown(text))
    for png in folder.figures:
        name = f"{prefix}.{png.name}"
        write_bytes(out / name, png.read_bytes())  # atomic: no torn or 0-byte copy on a full disk
        html.append(page.figure(name, f"{png.name} as the {folder.kind} command drew it ({folder.path})", png.name))
    return "\n".join(html)


def write_report(paths: list[str], out: str | Path, opts: Options | None = None) -> Path:
    """Reads the folders, computes what needs the weights and writes OUT/index.html + PNGs."""
    opts = opts or Options()
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file")
    if out.is_dir() and (is_run(out) or (out / "cells").is_dir() or (out / "compare.json").is_file()):
        raise UsageError(f"--out {out} holds a run, sweep or compare folder; give the report a folder of its own")
    check_run_path(out)
    folders = [read_folder(p) for p in paths]
    lock_run_dir(out)  # one report per folder at a time
    runs = [r for f in folders for r in f.runs]
    if not runs and not any(f.tables for f in folders):
        raise UsageError(f"nothing to report in {', '.join(paths)}: no runs, no results")
    sections = [("Runs", overview(runs)), ("Curves", curves_section(runs, out)),
                ("Health", health_section(runs, out))]

    splits = SplitCache(opts.limit)
    learned_parts = []
    for i, run in enumerate(runs):
        title = f"What {run.name} learned"
        if not opts.features:
            continue
        if run.weights is None:
            if run.command in ("", "pretrain", "supervised"):
                learned_parts.append(f"<h3>{page.esc(title)}</h3>" + page.note(
                    "no backbone.pth and no checkpoint yet: curves only"))
            continue
        data = opts.data or run.data
        if not data:
            learned_parts.append(f"<h3>{page.esc(title)}</h3>" + page.note(
                f"{run.path} records no data: pass --data DIR for neighbours and the map"))
            continue
        log.info("features of %s on %s", run.weights, data)
        res = learn(run, data, opts, out, splits, f"{i:02d}_{slug(run.name)}")
        learned_parts.append(f"<h3>{page.esc(title)}</h3>" + learned_html(res))
    if learned_parts:
        sections.append(("Nearest neighbours and embedding maps", "\n".join(learned_parts)))

    tables = []
    for j, folder in enumerate(folders):
        ft = folder_tables(folder, out, f"folder{j}_{slug(folder.path.name)}")
        if ft:
            tables.append(f"<h3>{page.esc(folder.kind)}: {page.esc(folder.path)}</h3>" + ft)
    many = len(runs) > 1
    for run in runs:
        body = summary_table(run) + results_table(run) + config_table(run, opts.preset or preset_of(run, folders))
        tables.append(page.details(f"{run.name} ({run.command or 'run'}, {run.path})", body, open_=not many))
    sections.append(("Tables", "\n".join(tables)))

    title = "mocolab report: " + ", ".join(f.path.name for f in folders)
    sub = (f"Written {time.strftime('%Y-%m-%d %H:%M:%S')} from {', '.join(str(f.path) for f in folders)}"
           + (f"; features on {opts.data}" if opts.data else "")
           + (f" (first {opts.limit} images per split)" if opts.limit else ""))
    index = out / "index.html"
    write_text(index, page.document(title, sub, sections))
    return index


def preset_of(run: Run, folders: list[Folder]) -> str | None:
    """The preset a sweep's cells were made from (sweep.json), else None (the nearest is found)."""
    for f in folders:
        if run in f.runs and f.kind == "sweep":
            return f.meta.get("preset")
    return None
