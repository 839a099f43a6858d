"""Streaming tar shards (webdataset) for datasets too big for a folder or for memory.

`write_shards` turns an ImageFolder (labels optional) into `PREFIX-000000.tar`, ... plus
`PREFIX.json` (counts, classes); a folder with train/ and test/ gives `PREFIX-train-*` and
`PREFIX-test-*`. `--data 'PREFIX-{000000..000099}.tar'` then streams them: shards shuffled per
epoch, split across ranks and loader workers, samples shuffled in a buffer, decoded to uint8
and batched. A corrupt sample is skipped with a warning.
"""

from __future__ import annotations

import glob
import io
import json
import random
import re
import tarfile
import warnings
from itertools import count
from pathlib import Path

import torch

from . import distributed as du
from .data import DataError, find_splits, ignore_signals, load_image, resize_square, scan_folder, why_unreadable
from .errors import UsageError

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp", "bmp", "ppm", "tif", "tiff")


def image_key(sample: dict) -> str | None:
    """The sample's first image field, by its last extension as webdataset's decoders read it
    ('jpg', 'png', 'c.jpeg' in a sample with key 'a/b' from 'a/b.c.jpeg'), or None."""
    return next((k for k in sample if not k.startswith("__") and k.rsplit(".", 1)[-1].lower() in IMAGE_KEYS), None)


def _label(sample: dict) -> int:
    """The 'cls' field (or '*.cls') as an int; -1 when there is none. ValueError when it is not an
    integer (the sample is then skipped as corrupt)."""
    key = next((k for k in sample if k == "cls" or k.endswith(".cls")), None)
    if key is None:
        return -1
    try:
        return int(sample[key])
    except ValueError:
        raise ValueError(f"its label {sample[key][:20]!r} is not an integer") from None


def is_shard_pattern(data: str) -> bool:
    return ".tar" in str(data)


def _written(base: str) -> list[Path]:
    """The files a write_shards of `base` makes: BASE-NNNNNN.tar and BASE.json."""
    folder, stem = Path(base).parent, Path(base).name
    shards = sorted(folder.glob(f"{glob.escape(stem)}-[0-9][0-9][0-9][0-9][0-9][0-9].tar")) if folder.is_dir() else []
    return shards + [Path(f"{base}.json")] * Path(f"{base}.json").exists()


def write_shards(data: str | Path, prefix: str | Path, shard_size: int, seed: int = 0,
                 overwrite: bool = False) -> list[str]:
    """Writes the folder's images (original bytes, shuffled so that every shard mixes the classes)
    into tar shards of `shard_size` samples; returns the brace patterns to pass as --data.
    Existing shards of the prefix are refused (UsageError) unless `overwrite`, which removes them
    first (a shorter set leaves no stale shard behind)."""
    import webdataset as wds

    if shard_size < 1:
        raise DataError("--shard-size must be >= 1")
    train_dir, test_dir = find_splits(data)
    splits = [("train", train_dir), ("test", test_dir)] if test_dir else [("", train_dir)]
    bases = [f"{prefix}-{name}" if name else str(prefix) for name, _ in splits]
    old = [p for base in bases for p in _written(base)]
    if old and not overwrite:
        raise UsageError(f"{old[0]} exists ({len(old)} shard file(s) of {prefix}); "
                         "pass --overwrite to replace them")
    # every split scanned before anything is removed
    files = [scan_folder(folder) for _, folder in splits]
    for p in old:
        p.unlink()
    patterns = []
    for base, fl in zip(bases, files, strict=True):
        order = list(range(len(fl)))
        random.Random(seed).shuffle(order)
        Path(base).parent.mkdir(parents=True, exist_ok=True)
        counts: list[int] = []
        with wds.ShardWriter(f"{base}-%06d.tar", maxcount=shard_size, verbose=0) as sink:
            for n, i in enumerate(order):
                path = fl.files[i]
                sample = {"__key__": f"{n:09d}",
                          path.suffix.lower().lstrip(".").replace("jpeg", "jpg"): path.read_bytes()}
                if fl.labeled:
                    sample["cls"] = int(fl.labels[i])
                sink.write(sample)
                if n % shard_size == 0:
                    counts.append(0)
                counts[-1] += 1
        pattern = f"{base}-{{000000..{len(counts) - 1:06d}}}.tar"
        meta = {"pattern": Path(pattern).name, "count": len(fl), "counts": counts, "classes": fl.classes}
        Path(f"{base}.json").write_text(json.dumps(meta, indent=2))
        patterns.append(pattern)
    return patterns


def expand(pattern: str) -> list[str]:
    """'a-{000..002}.tar' -> ['a-000.tar', 'a-001.tar', 'a-002.tar'] (also lists with ::)."""
    from braceexpand import braceexpand  # a dependency of webdataset

    return [u for part in str(pattern).split("::") for u in braceexpand(part)]


class ShardStream:
    """The training split as a stream of tar shards. len() is the number of samples (from the
    writer's PREFIX.json, or counted once)."""

    def __init__(self, pattern: str, size: int, shuffle_buffer: int = 5000):
        self.urls = expand(pattern)
        missing = [u for u in self.urls if "://" not in u and not Path(u).is_file()]
        if missing:
            raise DataError(f"shard not found: {missing[0]} ({len(missing)} of {len(self.urls)} missing)")
        if len(self.urls) < du.world_size():
            raise DataError(f"{len(self.urls)} shard(s) for {du.world_size()} processes: every rank needs one")
        self.size, self.buffer = size, shuffle_buffer
        meta = Path(re.sub(r"-\{[^}]*\}\.tar$", "", str(pattern)) + ".json")
        info = json.loads(meta.read_text()) if meta.is_file() else {}
        numbers = [re.search(r"-(\d+)\.tar$", u) for u in self.urls]
        counts = info.get("counts", [])
        # the metadata's counts, when it lists every shard read
        if counts and all(m and int(m.group(1)) < len(counts) for m in numbers):
            self.n = sum(counts[int(m.group(1))] for m in numbers)
        else:  # count the samples (distinct keys) once
            self.n = sum(_count(u) for u in self.urls)
        self.classes = list(info.get("classes", []))

    def __len__(self) -> int:
        return self.n

    def _decode(self, sample: dict):
        """-> (uint8 3 x S x S, label) or None (with a warning) for a corrupt sample."""
        key = image_key(sample)
        try:
            if key is None:
                raise ValueError("no image in the sample")
            img = resize_square(load_image(io.BytesIO(sample[key])), self.size)  # within the size bounds
            label = _label(sample)
        except Exception as e:  # any decode failure: reported, then skipped
            warnings.warn(f"skipped corrupt sample {sample.get('__key__')} in {sample.get('__url__')} "
                          f"({why_unreadable(e)})", stacklevel=2)
            return None
        return torch.from_numpy(img.copy()).permute(2, 0, 1), label

    def dataset(self, epoch: int, seed: int = 0, cycle: int = 0):
        """One pass over the shards (this rank's and this worker's share), as an IterableDataset
        of (uint8 image, label); the shard order and the buffer shuffle depend on (seed, epoch)."""
        import webdataset as wds

        urls = list(self.urls)
        # seeded by (seed, epoch, cycle): the same order on every rank
        random.Random(seed * 1_000_003 + epoch * 1009 + cycle).shuffle(urls)
        return wds.DataPipeline(
            wds.SimpleShardList(urls),
            wds.split_by_node,
            wds.split_by_worker,
            wds.tarfile_to_samples(handler=wds.warn_and_continue),
            wds.shuffle(self.buffer, initial=min(self.buffer, 1000), rng=random.Random(seed + epoch + cycle)),
            wds.map(self._decode),
            wds.select(lambda s: s is not None),
        )

    def batches(self, epoch: int, batch: int, workers: int, seed: int = 0, pin: bool = False):
        """Endless uint8 batches (b x 3 x S x S, labels b) for this rank: the epoch's pass, then
        further passes if this rank's share runs out before the others'. pin: in pinned memory
        (for non-blocking copies to a GPU)."""
        for cycle in count():
            loader = torch.utils.data.DataLoader(self.dataset(epoch, seed, cycle), batch_size=batch, drop_last=True,
                                                 num_workers=workers, prefetch_factor=4 if workers else None,
                                                 worker_init_fn=ignore_signals, pin_memory=pin)
            got = 0
            for x, y in loader:
                got += 1
                yield x, y
            if got == 0 and cycle > 0:
                raise DataError(f"the shards give fewer than {batch} readable samples to this rank")


def _member_names(tar: tarfile.TarFile):
    """The members webdataset's tar_file_iterator reads, as its {"fname", "data"} records (names
    only): regular files, without its metadata files (__*__)."""
    from webdataset import tariterators as ti

    for m in tar.getmembers():
        meta = "/" not in m.name and m.name.startswith(ti.meta_prefix) and m.name.endswith(ti.meta_suffix)
        if m.isreg() and not meta and not re.match(r"__[^/]*__($|/)", m.name):
            yield {"fname": m.name, "data": b"", "__url__": tar.name}


def _count(url: str) -> int:
    """Samples with an image, grouped as webdataset groups them (its group_by_keys and
    base_plus_ext: `./000.jpg` and `a/b.c.jpg` are keys `./000` and `a/b`, extension `c.jpg`)."""
    from webdataset.tariterators import group_by_keys

    try:
        with tarfile.open(url) as tar:
            return sum(image_key(s) is not None for s in group_by_keys(_member_names(tar)))
    except (tarfile.TarError, OSError, ValueError) as e:  # ValueError: a file name twice in a sample
        raise DataError(f"cannot count the samples of {url}: {str(e).splitlines()[0] if str(e) else e}") from None
