"""`mocolab neighbors SRC --data DIR [--query DIR] --out DIR`: the nearest images of every image
(cosine similarity of the backbone's features), near-duplicate groups (--duplicates T) and
train/test leaks (--leakage), as CSV files and an HTML page of thumbnails that opens from disk.

Every search is chunked (`top_k`): 1024 queries against `chunk_rows` bank rows at a time, each
chunk's top-k merged into the running top-k, so that memory stays flat in N (the features
themselves come from `mocolab.embed`, in memory or memory-mapped)."""

from __future__ import annotations

import base64
import csv
import io
import json
from pathlib import Path

import torch
import torch.nn.functional as F

from .errors import UsageError

# cosine at or above which a test image's nearest training image counts as its duplicate: 0.95 flagged 93 % of
# CIFAR-10's test images with a MoCo backbone, 0.99 flagged 2.0 % and found 78 % of planted copies (RESULTS.md)
DEFAULT_LEAK = 0.99
FILES = ("neighbors.csv", "duplicates.csv", "leakage.csv", "neighbors.json", "index.html")


@torch.no_grad()
def top_k(query: torch.Tensor, bank: torch.Tensor, k: int, *, exclude_self: bool = False, query_chunk: int = 1024,
          bank_chunk: int = 16384, device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """query M x D, bank N x D (any float type, normalized here chunk by chunk) -> (cosine similarities
    M x k, bank rows M x k), most similar first. exclude_self: query is bank; row i never finds itself.
    In memory at once: query_chunk x (bank_chunk + k) similarities."""
    k = min(k, len(bank) - int(exclude_self))
    if k <= 0:
        raise UsageError(f"neighbours need at least {2 if exclude_self else 1} images, got {len(bank)}")
    sims, rows = [], []
    for qlo in range(0, len(query), query_chunk):
        q = F.normalize(query[qlo:qlo + query_chunk].to(device).float(), dim=1)  # m x D
        best_w = torch.full((len(q), 0), float("-inf"), device=device)  # m x k' running top-k
        best_i = torch.zeros((len(q), 0), dtype=torch.long, device=device)
        for blo in range(0, len(bank), bank_chunk):
            b = F.normalize(bank[blo:blo + bank_chunk].to(device).float(), dim=1)  # n x D
            sim = q @ b.t()  # m x n
            if exclude_self:
                i = torch.arange(len(q), device=device)
                j = i + qlo - blo  # the query's own column in this chunk
                ok = (j >= 0) & (j < len(b))
                sim[i[ok], j[ok]] = float("-inf")
            w, idx = sim.topk(min(k, sim.shape[1]), dim=1)  # m x k
            cat_w, cat_i = torch.cat([best_w, w], 1), torch.cat([best_i, idx + blo], 1)
            best_w, pick = cat_w.topk(min(k, cat_w.shape[1]), dim=1)
            best_i = cat_i.gather(1, pick)
        sims.append(best_w.cpu())
        rows.append(best_i.cpu())
    return torch.cat(sims), torch.cat(rows)


def duplicate_groups(sims: torch.Tensor, rows: torch.Tensor, threshold: float) -> list[list[int]]:
    """Groups (connected components, each sorted, the largest first) of the pairs (i, rows[i, r]) whose
    similarity is >= threshold: near-duplicates found through each image's k nearest neighbours."""
    parent: dict[int, int] = {}

    def find(a: int) -> int:
        parent.setdefault(a, a)
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    qi, ri = torch.nonzero(sims >= threshold, as_tuple=True)
    for a, b in zip(qi.tolist(), rows[qi, ri].tolist()):
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    groups: dict[int, list[int]] = {}
    for a in list(parent):
        groups.setdefault(find(a), []).append(a)
    return sorted((sorted(g) for g in groups.values()), key=lambda g: (-len(g), g[0]))


def leaks(sims: torch.Tensor, threshold: float) -> torch.Tensor:
    """The query rows whose nearest bank image (column 0) is at least `threshold` similar."""
    return torch.nonzero(sims[:, 0] >= threshold).flatten()


# ---- the page -----------------------------------------------------------------------------------


def thumbnail(path: Path, size: int = 72) -> str:
    """An <img> with the image as an embedded JPEG (the page opens from anywhere), or a note."""
    from .data import load_image
    from .report.page import esc

    try:
        im = load_image(path)
        im.thumbnail((size, size))
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=85)
    except Exception:
        return f'<span class="muted">unreadable: {esc(path.name)}</span>'
    data = base64.b64encode(buf.getvalue()).decode()
    return f'<img src="data:image/jpeg;base64,{data}" alt="{esc(path.name)}" title="{esc(path)}">'


def _cell(root: str, rel: str, caption: str) -> str:
    from .report.page import esc

    return (f'<figure style="display:inline-block;margin:2px;text-align:center">{thumbnail(Path(root) / rel)}'
            f'<figcaption class="muted" style="max-width:90px;overflow:hidden">{esc(caption)}</figcaption></figure>')


def page(result: dict, bank, query, sims, rows, groups, leaked, show: int) -> str:
    from .report.page import document, esc, note, table

    q = query if query is not None else bank
    sections = [("Summary", table(["setting", "value"], [[k, v if isinstance(v, (int, float)) else str(v)]
                                                         for k, v in result.items() if not isinstance(v, dict)]))]
    body = [note(f"the first {min(show, len(q))} of {len(q)} queries; neighbors.csv has them all")
            if len(q) > show else ""]
    for i in range(min(show, len(q))):
        cells = [_cell(q.root, q.paths[i], "query")]
        cells += [_cell(bank.root, bank.paths[j], f"{s:.3f}") for s, j in zip(sims[i].tolist(), rows[i].tolist())]
        body.append(f"<div>{''.join(cells)}</div>")
    sections.append((f"Nearest neighbours (k = {rows.shape[1]})", "\n".join(body)))
    if groups is not None:
        body = [f"<p>{len(groups)} group(s) of near-duplicates (cosine >= {result['duplicates_threshold']}), "
                f"{sum(map(len, groups))} images; duplicates.csv lists them all.</p>"]
        for g in groups[:show]:
            body.append(f"<div>{''.join(_cell(bank.root, bank.paths[j], bank.paths[j]) for j in g[:12])}"
                        + (f' <span class="muted">+{len(g) - 12}</span>' if len(g) > 12 else "") + "</div>")
        sections.append(("Near-duplicates", "\n".join(body)))
    if leaked is not None:
        body = [f"<p>{len(leaked)} of {len(q)} test images ({100 * len(leaked) / max(len(q), 1):.2f} %) have a "
                f"training image at cosine >= {result['leakage_threshold']}; leakage.csv lists them all.</p>"]
        for i in leaked[:show].tolist():
            body.append(f"<div>{_cell(q.root, q.paths[i], 'test: ' + q.paths[i])}"
                        f"{_cell(bank.root, bank.paths[int(rows[i, 0])], f'train {sims[i, 0]:.3f}')}</div>")
        sections.append(("Train/test leakage", "\n".join(body)))
    return document(f"Neighbours: {esc(result['model'])}", f"data {result['data']}", sections)


# ---- the library function and the command -------------------------------------------------------


def check_out_dir(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file; it takes a folder")
    there = [f for f in FILES if (out / f).exists()]
    if there and not overwrite:
        raise UsageError(f"{out} holds {', '.join(there)}; pass --overwrite to replace them")


def run_neighbors(src, data: str | Path, out: str | Path, *, query: str | Path | None = None, k: int = 10,
                  duplicates: float | None = None, leakage: float | None = None, show: int = 50,
                  overwrite: bool = False, device: str = "auto", chunk_rows: int = 16384, **embed_kw) -> dict:
    """What `mocolab neighbors` does -> its summary (also out/neighbors.json).

    src: a mocolab.api.Model or anything mocolab.load accepts; data: the images searched (with leakage
    and no query: a folder with train/ and test/, the training images searched for each test image);
    query: the images whose neighbours are wanted (default: data's own, each leaving itself out);
    duplicates: groups of data images at cosine >= T; leakage: the test images whose nearest
    training image is at cosine >= T. embed_kw: mocolab.embed's options (stream, memory_limit_gb...)."""
    from . import api
    from .data import find_splits

    out = Path(out).expanduser()
    check_out_dir(out, overwrite)
    if k < 1:
        raise UsageError(f"--k must be at least 1, got {k}")
    for name, t in (("--duplicates", duplicates), ("--leakage", leakage)):
        if t is not None and not -1.0 <= t <= 1.0:
            raise UsageError(f"{name} takes a cosine similarity in [-1, 1], got {t:g}")
    if leakage is not None and query is None:
        train_dir, test_dir = find_splits(data)
        if test_dir is None:
            raise UsageError(f"--leakage needs --query TEST_DIR, or a --data folder with train/ and test/ "
                             f"(or val/); {data} has no test split")
        data, query = train_dir, test_dir
    model = src if isinstance(src, api.Model) else api.load(src, device)
    bank = api.embed(model, data, **embed_kw)
    q = None
    try:
        q = api.embed(model, query, **embed_kw) if query is not None else None
        need = max(k, 1)
        sims, rows = (top_k(q.features, bank.features, need, bank_chunk=chunk_rows, device=model.device)
                      if q is not None else
                      top_k(bank.features, bank.features, need, exclude_self=True, bank_chunk=chunk_rows,
                            device=model.device))
        groups = None
        # within data: its own neighbours (the query's when query is data)
        if duplicates is not None:
            ds, dr = (sims, rows) if q is None else top_k(bank.features, bank.features, k, exclude_self=True,
                                                          bank_chunk=chunk_rows, device=model.device)
            groups = duplicate_groups(ds, dr, duplicates)
        leaked = leaks(sims, leakage) if leakage is not None else None
        qq = q if q is not None else bank
        result = {"model": model.source, "data": str(data), "query": str(query) if query is not None else None,
                  "bank_images": len(bank), "query_images": len(qq), "k": int(rows.shape[1]),
                  "mean_nearest_cosine": float(sims[:, 0].mean())}
        out.mkdir(parents=True, exist_ok=True)
        with open(out / "neighbors.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["query", "rank", "neighbor", "cosine"])
            for i in range(len(qq)):
                for r, (s, j) in enumerate(zip(sims[i].tolist(), rows[i].tolist())):
                    w.writerow([qq.paths[i], r + 1, bank.paths[j], f"{s:.6f}"])
        if groups is not None:
            result.update(duplicates_threshold=duplicates, duplicate_groups=len(groups),
                          duplicate_images=sum(map(len, groups)))
            with open(out / "duplicates.csv", "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(["group", "size", "path"])
                for g, members in enumerate(groups):
                    w.writerows([g, len(members), bank.paths[j]] for j in members)
        if leaked is not None:
            result.update(leakage_threshold=leakage, leaked=len(leaked),
                          leaked_percent=100.0 * len(leaked) / max(len(qq), 1))
            with open(out / "leakage.csv", "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(["test", "train", "cosine"])
                w.writerows([qq.paths[i], bank.paths[int(rows[i, 0])], f"{float(sims[i, 0]):.6f}"]
                            for i in leaked.tolist())
        (out / "neighbors.json").write_text(json.dumps(result, indent=2))
        (out / "index.html").write_text(page(result, bank, q, sims, rows, groups, leaked, show))
        result["leaked_paths"] = [qq.paths[i] for i in leaked.tolist()] if leaked is not None else None
        return result
    finally:
        bank.close()
        if q is not None:
            q.close()


def cmd_neighbors(args) -> int:
    from .runtime import check_arguments

    check_arguments(args)
    r = run_neighbors(args.src, args.data, args.out, query=args.query, k=args.k, duplicates=args.duplicates,
                      leakage=args.leakage, show=args.show, overwrite=args.overwrite, device=args.device,
                      chunk_rows=args.chunk_rows, batch_size=args.batch_size, stream=args.stream,
                      memory_limit_gb=args.memory_limit_gb, store_dtype=args.store_dtype, limit=args.limit,
                      progress=not args.quiet)
    msg = f"{r['query_images']} queries x {r['bank_images']} images, k={r['k']}"
    if "duplicate_groups" in r:
        msg += f"; {r['duplicate_groups']} near-duplicate group(s) ({r['duplicate_images']} images)"
    if "leaked" in r:
        msg += f"; {r['leaked']} test images ({r['leaked_percent']:.2f} %) leak from train"
    print(f"{msg}; written: {Path(args.out) / 'index.html'}, neighbors.csv")
    return 0


def add_command(sub) -> None:
    p = sub.add_parser("neighbors", help="nearest neighbours, near-duplicates and train/test leaks of images",
                       description="Embeds --data (and --query) with SRC's backbone and writes, in --out: "
                       "neighbors.csv (the k nearest --data images of every query, cosine similarity), "
                       "index.html (thumbnails, embedded: it opens from disk), neighbors.json (the summary); "
                       "with --duplicates T, duplicates.csv (groups of --data images at cosine >= T); with "
                       "--leakage [T], leakage.csv (the test images whose nearest training image is at cosine "
                       f">= T, default {DEFAULT_LEAK}). Chunked: memory flat in the number of images.")
    p.add_argument("src", metavar="SRC", help="anything `mocolab knn --checkpoint` accepts, or random:PRESET")
    p.add_argument("--data", required=True, help="the images searched (with --leakage and no --query: a folder "
                                                 "with train/ and test/)")
    p.add_argument("--query", help="the images whose neighbours are wanted (--leakage: the test images); "
                                   "default: --data's own, each without itself")
    p.add_argument("--out", required=True, help="folder for the CSV files and index.html")
    p.add_argument("--k", type=int, default=10, help="neighbours per image (default 10)")
    p.add_argument("--duplicates", type=float, metavar="T", help="list groups of near-duplicates (cosine >= T, "
                                                                 "e.g. 0.95) within --data")
    p.add_argument("--leakage", type=float, nargs="?", const=DEFAULT_LEAK, metavar="T",
                   help=f"list test images whose nearest training image is at cosine >= T (default {DEFAULT_LEAK})")
    p.add_argument("--show", type=int, default=50, help="queries / groups drawn on the page (default 50)")
    p.add_argument("--overwrite", action="store_true", help="replace the files of an earlier run in --out")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--limit", type=int, default=0, help="first N images per class")
    p.add_argument("--device", default="auto")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    g = p.add_argument_group("streaming (data larger than memory)")
    g.add_argument("--stream", choices=["auto", "on", "off"], default="auto",
                   help="as `mocolab embed --stream`: features in a memory-mapped file when over --memory-limit-gb")
    g.add_argument("--memory-limit-gb", type=float, default=8.0, metavar="GB")
    g.add_argument("--store-dtype", choices=["float32", "float16"], default="float32")
    g.add_argument("--chunk-rows", type=int, default=16384, metavar="N", help="rows compared at a time")
    p.set_defaults(fn=cmd_neighbors)
