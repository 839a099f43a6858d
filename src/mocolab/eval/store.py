"""A feature store for streaming evaluation: the rows of an N x D feature matrix written batch by
batch, kept in memory (float32) when they fit a memory limit, else in a float32 (or float16: half
the disk, rounded) memory-mapped file in a temporary folder, deleted by close(). Readers take it chunk by chunk
(`chunks`), so that what is in memory at once is one chunk, not the N x D matrix."""

from __future__ import annotations

import mmap
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from ..errors import UsageError

STORE_DTYPES = {"float16": np.float16, "float32": np.float32}


def release_pages(rows) -> None:
    """Drops a np.memmap's pages from this process's resident set (the page cache and the file keep
    them; the next access maps them again). Written or read chunk by chunk, a mapping otherwise keeps
    every page it touched resident, and RSS grows with N x D (benchmarks/RESULTS.md, 'embed memory')."""
    mm = getattr(rows, "_mmap", None)
    if mm is not None and hasattr(mmap, "MADV_DONTNEED"):  # Linux, macOS; elsewhere pages stay
        mm.madvise(mmap.MADV_DONTNEED)


class FeatureStore:
    """Rows N x D (N at most `capacity`; unreadable images leave the tail unused), labels N int64.

    memory_limit: bytes; the rows stay in memory (float32) when capacity x D x 4 <= memory_limit, else
    they go to a np.memmap of `dtype` under `folder` (default: the system's temporary folder)."""

    def __init__(self, capacity: int, memory_limit: float, dtype: str = "float32", folder: str | Path | None = None):
        if dtype not in STORE_DTYPES:
            raise UsageError(f"feature store dtype must be one of {', '.join(STORE_DTYPES)}, got {dtype!r}")
        self.capacity = capacity
        self.memory_limit = memory_limit
        self.dtype = dtype
        self.folder = folder
        self.n = 0
        self.rows: torch.Tensor | np.memmap | None = None  # capacity x D, made at the first append
        self.labels = torch.empty(capacity, dtype=torch.long)
        self._dir: Path | None = None

    @classmethod
    def from_tensor(cls, f: torch.Tensor, y: torch.Tensor) -> FeatureStore:
        """A store in memory holding f (N x D) and y (N): the in-memory path through the same readers."""
        st = cls(len(f), float("inf"))
        st.rows = f.float()
        st.n = len(f)
        st.labels = y.long().cpu()
        return st

    def __len__(self) -> int:
        return self.n

    @property
    def dim(self) -> int:
        return 0 if self.rows is None else self.rows.shape[1]

    @property
    def on_disk(self) -> bool:
        return isinstance(self.rows, np.memmap)

    def _allocate(self, dim: int) -> None:
        if self.capacity * dim * 4 <= self.memory_limit:
            self.rows = torch.empty(self.capacity, dim)  # capacity x D float32
            return
        parent = Path(self.folder) if self.folder else None
        if parent is not None:
            parent.mkdir(parents=True, exist_ok=True)
        self._dir = Path(tempfile.mkdtemp(prefix="mocolab_features_", dir=parent))
        self.rows = np.lib.format.open_memmap(self._dir / "features.npy", mode="w+", dtype=STORE_DTYPES[self.dtype],
                                              shape=(self.capacity, dim))  # capacity x D on disk

    def append(self, f: torch.Tensor, y: torch.Tensor) -> None:
        """f: B x D features (any device), y: B labels."""
        if self.rows is None:
            self._allocate(f.shape[1])
        b = f.shape[0]
        if self.n + b > self.capacity:
            raise RuntimeError(f"feature store full: {self.n} + {b} rows > capacity {self.capacity}")
        f = f.detach().float().cpu()
        if self.on_disk:
            self.rows[self.n:self.n + b] = f.numpy().astype(self.rows.dtype)
            release_pages(self.rows)
        else:
            self.rows[self.n:self.n + b] = f
        self.labels[self.n:self.n + b] = torch.as_tensor(y).long().cpu()
        self.n += b

    def finish(self) -> FeatureStore:
        """After the last append: the labels shrink to the rows written (memmap pages are flushed)."""
        self.labels = self.labels[:self.n].clone()
        if self.on_disk:
            self.rows.flush()
        elif self.rows is not None and self.n < self.capacity:
            self.rows = self.rows[:self.n].clone()
        return self

    def read(self, lo: int, hi: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """Rows lo:hi as float32 on `device` ((hi - lo) x D). On disk, the pages of earlier reads are
        released first: a reader going chunk by chunk holds one chunk's pages."""
        if self.on_disk:
            release_pages(self.rows)
            return torch.from_numpy(np.asarray(self.rows[lo:hi], dtype=np.float32)).to(device)
        return self.rows[lo:hi].to(device)

    def release(self) -> None:
        """On disk: the pages read or written so far leave this process's resident set."""
        if self.on_disk:
            release_pages(self.rows)

    def chunks(self, chunk: int, device: torch.device | str = "cpu") -> Iterator[tuple[int, torch.Tensor]]:
        """(lo, rows lo:lo+chunk float32 on `device`) over all rows."""
        for lo in range(0, self.n, chunk):
            yield lo, self.read(lo, min(lo + chunk, self.n), device)

    def tensor(self, device: torch.device | str | None = None) -> torch.Tensor:
        """All rows, N x D float32 (in memory: for stores that fit it), on `device` (None: where they are)."""
        if not self.on_disk and device is None:
            return self.rows[:self.n]
        return self.read(0, self.n, device or "cpu")

    def close(self) -> None:
        """Deletes the memory-mapped file (if any)."""
        self.rows = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
