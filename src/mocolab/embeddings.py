"""`mocolab embed SRC --data DIR --out FILE`: the features of every image in a folder, with their
relative paths and labels, in .safetensors (default), .npy + .csv or .parquet.

The images are decoded batch by batch in DataLoader workers (eval.features.extract_features, block
by block, for the progress bar) and the features go to an eval.store.FeatureStore: in memory while
N x D float32 fit --memory-limit-gb, else a memory-mapped file. The writers read it chunk by chunk,
so the memory stays flat in N whatever the format.
"""

from __future__ import annotations

import csv
import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .data import DataError, FileList
from .errors import UsageError
from .eval.store import release_pages

FORMATS = {".safetensors": "safetensors", ".npy": "npy", ".parquet": "parquet"}
CHUNK = 16384  # rows written at a time


@dataclass
class Embeddings:
    """features: N x D float32 tensor (over a memory-mapped file when streamed: `close()` removes
    it), paths: N paths relative to `root`, labels: N int64 (None when unlabeled), classes."""

    features: torch.Tensor
    paths: list[str]
    labels: torch.Tensor | None
    classes: list[str]
    root: str
    meta: dict = field(default_factory=dict)
    _store: object = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.paths)

    def close(self) -> None:
        """Deletes the memory-mapped file of streamed features (the tensor is then unusable)."""
        if self._store is not None:
            self._store.close()
            self._store = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def save(self, out: str | Path, overwrite: bool = False) -> list[Path]:
        """Writes the embeddings (see `write_embeddings`); returns the files written."""
        return write_embeddings(self, out, overwrite=overwrite)


@torch.no_grad()
def extract_embeddings(net: nn.Module, fl: FileList, mean, std, *, size: int, device, autocast_dtype=None,
                       batch_size: int = 256, workers: int = 2, normalize: bool = True, memory_limit: float,
                       store_dtype: str = "float32", store_dir=None, progress: bool = False,
                       meta: dict | None = None) -> Embeddings:
    """The features of the files `fl` (eval.features.extract_features, `block` files at a time) into a
    FeatureStore -> Embeddings. The files' row numbers travel as their labels, so that the paths of
    unreadable files (left out by the loader, a warning each) drop out of `paths` too."""
    from tqdm import tqdm

    from .eval.features import extract_features
    from .eval.store import FeatureStore

    n = len(fl)
    # files per extract_features call (DataLoader workers restart each)
    block = max(batch_size * 16, 4096)
    store = FeatureStore(n, memory_limit, store_dtype, store_dir)
    try:
        with tqdm(total=n, disable=not progress, unit="img", dynamic_ncols=True, desc="embed") as bar:
            for lo in range(0, n, block):
                part = FileList(fl.root, fl.files[lo:lo + block], list(range(lo, min(lo + block, n))), fl.classes)
                f, rows = extract_features(net, part, mean, std, batch_size=batch_size, device=device, size=size,
                                           autocast_dtype=autocast_dtype, workers=workers, normalize=normalize,
                                           shard=False)  # f: b x D, rows: b file indices
                if len(rows):
                    store.append(f, rows)
                bar.update(len(part))
        store.finish()
    except BaseException:
        store.close()
        raise
    if len(store) == 0:
        store.close()
        raise DataError(f"none of the {n} images in {fl.root} could be read")
    rows = store.labels.tolist()
    paths = [fl.files[i].relative_to(fl.root).as_posix() for i in rows]
    labels = torch.tensor([fl.labels[i] for i in rows], dtype=torch.long) if fl.labeled else None
    feats = store.tensor() if not store.on_disk else torch.from_numpy(store.rows[:len(store)])
    return Embeddings(feats, paths, labels, list(fl.classes), str(fl.root), dict(meta or {}), store)


# ---- writers ------------------------------------------------------------------------------------


def output_files(out: Path) -> tuple[str, list[Path]]:
    """--out -> (format, the files it writes)."""
    fmt = FORMATS.get(out.suffix.lower())
    if fmt is None:
        raise UsageError(f"--out {out}: name it *.safetensors (default format), *.npy (+ .csv) or *.parquet")
    return fmt, [out, out.with_suffix(".csv")] if fmt == "npy" else [out]


def check_out(out: str | Path, overwrite: bool) -> tuple[str, list[Path]]:
    """The format and files of --out, refused when one exists (unless overwrite) or is a folder."""
    out = Path(out).expanduser()
    fmt, files = output_files(out)
    if fmt == "parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise UsageError("writing .parquet needs pyarrow (pip install pyarrow); or name --out *.safetensors "
                             "or *.npy") from None
    for p in files:
        if p.is_dir():
            raise UsageError(f"{p} is a folder; --out takes a file name")
        if p.exists() and not overwrite:
            raise UsageError(f"{p} exists; pass --overwrite to replace it")
    return fmt, files


def _chunks(emb: Embeddings):
    """(lo, rows lo:lo+CHUNK as a float32 numpy array) over the features."""
    for lo in range(0, len(emb), CHUNK):
        if emb._store is not None:
            emb._store.release()  # streamed: only this chunk's pages resident
        yield lo, emb.features[lo:lo + CHUNK].float().numpy()


def _atomic(path: Path, write) -> None:
    """write(tmp) into a temporary file beside `path`, then rename over it (never a torn file)."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _metadata(emb: Embeddings) -> dict:
    return {"format": "mocolab-embeddings", "root": emb.root, "classes": emb.classes,
            **{k: v for k, v in emb.meta.items() if v is not None}}


def _write_safetensors(emb: Embeddings, path: Path) -> None:
    """The safetensors layout (8-byte header size, JSON header, raw little-endian data), written
    chunk by chunk: safetensors.torch.save would need the N x D matrix in memory. Tensors:
    features (N x D F32), labels (N I64) when labeled; metadata: paths, classes and the model's
    metadata as JSON text."""
    n, d = emb.features.shape
    tensors = {"features": ("F32", [n, d], n * d * 4)}
    if emb.labels is not None:
        tensors["labels"] = ("I64", [n], n * 8)
    header, offset = {}, 0
    for name, (dtype, shape, nbytes) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    header["__metadata__"] = {"paths": json.dumps(emb.paths),
                              **{k: v if isinstance(v, str) else json.dumps(v) for k, v in _metadata(emb).items()}}
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(text)) + text)
            for _, block in _chunks(emb):
                f.write(np.ascontiguousarray(block, dtype="<f4").tobytes())
            if emb.labels is not None:
                f.write(emb.labels.numpy().astype("<i8").tobytes())

    _atomic(path, write)


def _write_npy(emb: Embeddings, path: Path, table: Path) -> None:
    """features N x D float32 in FILE.npy (a memory-mapped write), path,label,class rows in FILE.csv."""
    n, d = emb.features.shape

    def write_array(tmp: Path) -> None:
        arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, d))
        for lo, block in _chunks(emb):
            arr[lo:lo + len(block)] = block
            release_pages(arr)
        arr.flush()
        del arr

    def write_table(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["row", "path", "label", "class"])
            labels = emb.labels.tolist() if emb.labels is not None else [None] * n
            for i, (p, y) in enumerate(zip(emb.paths, labels)):
                w.writerow([i, p, "" if y is None else y, "" if y is None else emb.classes[y]])

    # the table lands second: both files or the old ones
    tmp = table.with_name(f".{table.name}.tmp")
    try:
        write_table(tmp)
        _atomic(path, write_array)
        os.replace(tmp, table)
    finally:
        tmp.unlink(missing_ok=True)


def _write_parquet(emb: Embeddings, path: Path) -> None:
    """Columns path, label, class, features (fixed-size list of float32), one row group per chunk."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    n, d = emb.features.shape
    schema = pa.schema([("path", pa.string()), ("label", pa.int64()), ("class", pa.string()),
                        ("features", pa.list_(pa.float32(), d))],
                       metadata={k.encode(): (v if isinstance(v, str) else json.dumps(v)).encode()
                                 for k, v in _metadata(emb).items()})

    def write(tmp: Path) -> None:
        with pq.ParquetWriter(tmp, schema) as w:
            for lo, block in _chunks(emb):
                hi = lo + len(block)
                y = emb.labels[lo:hi].tolist() if emb.labels is not None else [None] * (hi - lo)
                feats = pa.FixedSizeListArray.from_arrays(pa.array(block.reshape(-1), pa.float32()), d)
                w.write_table(pa.table({"path": emb.paths[lo:hi], "label": pa.array(y, pa.int64()),
                                        "class": [None if v is None else emb.classes[v] for v in y],
                                        "features": feats}, schema=schema))

    _atomic(path, write)


def write_embeddings(emb: Embeddings, out: str | Path, overwrite: bool = False) -> list[Path]:
    """Writes `emb` to `out` by its suffix: .safetensors, .npy (+ .csv beside it) or .parquet;
    refuses to replace an existing file unless `overwrite`. Returns the files written."""
    fmt, files = check_out(out, overwrite)
    files[0].parent.mkdir(parents=True, exist_ok=True)
    if fmt == "safetensors":
        _write_safetensors(emb, files[0])
    elif fmt == "npy":
        _write_npy(emb, files[0], files[1])
    else:
        _write_parquet(emb, files[0])
    return files


def read_embeddings(path: str | Path) -> Embeddings:
    """An embed .safetensors / .npy (+ .csv) / .parquet file -> Embeddings (in memory)."""
    path = Path(path)
    fmt, _ = output_files(path)
    if not path.is_file():
        raise UsageError(f"embeddings file not found: {path}")
    if fmt == "safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            md = f.metadata() or {}
            feats = f.get_tensor("features")
            labels = f.get_tensor("labels") if "labels" in f.keys() else None
        return Embeddings(feats, json.loads(md["paths"]), labels, json.loads(md.get("classes", "[]")),
                          md.get("root", ""))
    if fmt == "npy":
        with open(path.with_suffix(".csv"), newline="") as f:
            rows = list(csv.DictReader(f))
        classes = sorted({(int(r["label"]), r["class"]) for r in rows if r["label"] != ""})
        labels = torch.tensor([int(r["label"]) for r in rows]) if rows and rows[0]["label"] != "" else None
        return Embeddings(torch.from_numpy(np.load(path)), [r["path"] for r in rows], labels,
                          [c for _, c in classes], "")
    import pyarrow.parquet as pq

    t = pq.read_table(path)
    md = {k.decode(): v.decode() for k, v in (t.schema.metadata or {}).items()}
    d = t.schema.field("features").type.list_size
    feats = torch.from_numpy(t.column("features").combine_chunks().flatten().to_numpy().reshape(-1, d).copy())
    y = t.column("label").to_pylist()
    return Embeddings(feats, t.column("path").to_pylist(), None if y and y[0] is None else torch.tensor(y),
                      json.loads(md.get("classes", "[]")), md.get("root", ""))


# ---- the command --------------------------------------------------------------------------------


def cmd_embed(args) -> int:
    from . import api
    from .runtime import check_arguments

    check_arguments(args)
    fmt, files = check_out(args.out, args.overwrite)  # before any work
    model = api.load(args.src, args.device, image_size=args.image_size)
    with api.embed(model, args.data, batch_size=args.batch_size, workers=args.workers, stream=args.stream,
                   memory_limit_gb=args.memory_limit_gb, store_dtype=args.store_dtype, limit=args.limit,
                   amp=args.amp, normalize=not args.raw, progress=not args.quiet) as emb:
        written = emb.save(args.out, overwrite=args.overwrite)
        n, d = emb.features.shape
        labeled = f", {len(emb.classes)} classes" if emb.labels is not None else ", unlabeled"
    print(f"wrote {', '.join(map(str, written))} ({fmt}: {n} images x {d} features{labeled})")
    return 0


def add_command(sub) -> None:
    p = sub.add_parser("embed", help="the features of every image in a folder, to .safetensors, .npy + .csv "
                                     "or .parquet",
                       description="Features (global-pooled, L2-normalized unless --raw) of every image under "
                       "--data, with their paths relative to it and their labels (class sub-folders; none for "
                       "a flat folder). FILE.safetensors (default): tensors features N x D and labels N, the "
                       "paths and classes in its metadata; FILE.npy + FILE.csv (row, path, label, class); "
                       "FILE.parquet (needs pyarrow). The images are decoded in DataLoader workers and the "
                       "features written chunk by chunk (memory flat in N with --stream).")
    p.add_argument("src", metavar="SRC", help="a model folder, run folder, checkpoint or weights file, or "
                                              "random:PRESET (anything `mocolab knn --checkpoint` accepts)")
    p.add_argument("--data", required=True, help="an image folder (class sub-folders, flat, or train/ test/ splits)")
    p.add_argument("--out", required=True, metavar="FILE", help="*.safetensors, *.npy (+ .csv) or *.parquet")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists (else refused)")
    p.add_argument("--raw", action="store_true", help="the features as the backbone gives them, not L2-normalized")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--workers", type=int, help="DataLoader workers decoding the images (default: the model's "
                                                "data.workers)")
    p.add_argument("--image-size", type=int, help="default: the checkpoint's (or preset's)")
    p.add_argument("--limit", type=int, default=0, help="first N images per class")
    p.add_argument("--device", default="auto")
    p.add_argument("--amp", choices=["auto", "bf16", "off"], help="default: the run's setting")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    g = p.add_argument_group("streaming (data larger than memory)")
    g.add_argument("--stream", choices=["auto", "on", "off"], default="auto",
                   help="on: the features go to a memory-mapped file in TMPDIR as they come (deleted after) "
                        "and are written from it chunk by chunk; off: kept in memory; auto (default): on when "
                        "N x D float32 exceed --memory-limit-gb. The images are decoded batch by batch in "
                        "DataLoader workers either way")
    g.add_argument("--memory-limit-gb", type=float, default=8.0, metavar="GB", help="see --stream (default 8)")
    g.add_argument("--store-dtype", choices=["float32", "float16"], default="float32",
                   help="the memory-mapped file's type (the output is float32)")
    p.set_defaults(fn=cmd_embed)
