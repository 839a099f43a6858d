"""Class-balanced, seeded label subsets of a train split (semi-supervised fine-tuning)."""

from __future__ import annotations

import torch

from ..data import DataError, FileList, TensorData
from ..errors import UsageError


def check_fraction(fraction: float) -> float:
    if not 0.0 < fraction <= 1.0:
        raise UsageError(f"--label-fraction must lie in (0, 1], got {fraction}")
    return float(fraction)


def label_subset(labels: torch.Tensor, fraction: float, seed: int = 0) -> torch.Tensor:
    """Sorted indices into `labels` (N): each class c keeps round(fraction x count_c) of its
    items (at least 1), drawn by a generator seeded with (seed, c) only, so the same seed gives
    the same subset, whatever the other classes hold."""
    check_fraction(fraction)
    labels = torch.as_tensor(labels)
    if labels.numel() == 0 or int(labels.min()) < 0:
        raise DataError("label subsets need a labeled train split")
    keep = []
    for c in labels.unique().tolist():
        idx = (labels == c).nonzero().squeeze(1)  # items of class c, in order
        k = max(1, int(fraction * len(idx) + 0.5))
        g = torch.Generator().manual_seed(seed * 1_000_003 + c)
        keep.append(idx[torch.randperm(len(idx), generator=g)[:k]])
    return torch.cat(keep).sort().values


def subset(data: TensorData | FileList, idx: torch.Tensor) -> TensorData | FileList:
    if isinstance(data, FileList):
        return FileList(data.root, [data.files[i] for i in idx.tolist()], [data.labels[i] for i in idx.tolist()],
                        data.classes)
    return TensorData(data.images[idx], data.labels[idx], data.classes)
