"""Detection data shared by the VOC and COCO loaders: DetItem, DetectionData and box helpers.

Boxes are x1, y1, x2, y2 in continuous pixel coordinates (torchvision's and detectron2's
convention); labels are 1-based class indices (0 is torchvision's background).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass
class DetItem:
    path: Path
    boxes: torch.Tensor  # K x 4 float32, x1 y1 x2 y2 in pixels
    labels: torch.Tensor  # K int64, 1-based index into DetectionData.classes
    difficult: torch.Tensor  # K bool: VOC `difficult` / COCO `iscrowd`, neither TP nor FP
    width: int
    height: int
    image_id: int


@dataclass
class DetectionData:
    classes: list[str]  # without background: label k is classes[k - 1]
    items: list[DetItem]

    def __len__(self) -> int:
        return len(self.items)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


# a coordinate or size beyond this is not a pixel position (float32 keeps it finite)
MAX_COORD = 1e9
MAX_ID = 2**63 - 1  # ids are int64 (torch, numpy, pycocotools)


def number(v, lo: float = -MAX_COORD, hi: float = MAX_COORD) -> float | None:
    """A JSON number (int or float, not bool) that is finite and within [lo, hi], else None.
    Strings, lists, null, inf, NaN, 1e999: None."""
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    try:
        f = float(v)
    except OverflowError:  # an int too large for a float
        return None
    return f if math.isfinite(f) and lo <= f <= hi else None


def integer(v, lo: int = 0, hi: int = MAX_ID) -> int | None:
    """A JSON integer within [lo, hi] (an integral float such as 3.0 counts), else None."""
    if isinstance(v, int) and not isinstance(v, bool):
        return v if lo <= v <= hi else None
    f = number(v, lo, hi)
    return int(f) if f is not None and f.is_integer() else None


def text_number(text: str | None, lo: float = -MAX_COORD, hi: float = MAX_COORD) -> float | None:
    """An XML field's text as a finite number within [lo, hi], else None (empty, 'inf', '1e999')."""
    try:
        return number(float((text or "").strip()), lo, hi)
    except ValueError:
        return None


def is_file(path: Path) -> bool:
    """Path.is_file for names from a data file: a name too long for the file system, or holding a
    NUL, is not a file (Path.is_file raises for the first)."""
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False


def plural(n: int, what: str) -> str:
    if n != 1:
        ies = what.endswith("y")
        what = what[:-1] + "ies" if ies else what + ("es" if what.endswith("x") else "s")
    return f"{n} {what}"


def make_item(path: Path, boxes: list[list[float]], labels: list[int], difficult: list[bool],
              width: int, height: int, image_id: int, problems: list[str]) -> DetItem:
    """Clips the boxes to the image; boxes left empty are dropped (both noted in problems)."""
    b = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)  # K x 4
    clipped = b.clone()
    clipped[:, 0::2] = clipped[:, 0::2].clamp(0, width)
    clipped[:, 1::2] = clipped[:, 1::2].clamp(0, height)
    keep = (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])  # K
    n_clipped = int(((clipped != b).any(1) & keep).sum())
    if n_clipped:
        problems.append(f"clipped {plural(n_clipped, 'box')} to the {width}x{height} image")
    if not keep.all():
        problems.append(f"dropped {plural(int((~keep).sum()), 'box')} outside the image")
    return DetItem(path=path, boxes=clipped[keep],
                   labels=torch.tensor(labels, dtype=torch.int64).reshape(-1)[keep],
                   difficult=torch.tensor(difficult, dtype=torch.bool).reshape(-1)[keep],
                   width=int(width), height=int(height), image_id=int(image_id))


def warn_file(path, problems: list[str]) -> None:
    """One warning per problem file, naming it."""
    if problems:
        warnings.warn(f"{path}: {'; '.join(problems)}", stacklevel=3)
