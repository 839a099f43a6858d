"""Semantic segmentation data: split/images/NAME.jpg with split/masks/NAME.png (one channel of
class indices, `ignore_index` for unlabelled pixels; CamVid: 11 classes, ignore 11).

Bad input: a missing, unreadable, multi-channel or wrong-size mask, or an image or mask over the
size bounds of data.check_image_size -> one warning naming it at load time, pair dropped; mask
values >= num_classes (and not ignore) -> set to ignore in read_pair with one warning naming the
file; no usable pair -> DataError.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mocolab.data import DataError, load_image, open_image, rgb_array, why_unreadable

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
MASK_MODES = ("L", "P", "I", "I;16")  # single-channel PIL modes


@dataclass
class SegData:
    images: list[Path]
    masks: list[Path]
    num_classes: int
    ignore_index: int = 255
    classes: list[str] | None = None
    _warned: set = field(default_factory=set, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.images)

    def read_pair(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (image uint8 3 x H x W, mask int64 H x W with out-of-range values set to ignore)."""
        # of bounded size: load_image refuses larger images
        x = torch.from_numpy(rgb_array(load_image(self.images[i]))).permute(2, 0, 1).contiguous()
        with open_image(self.masks[i]) as m:
            y = np.array(m)
        if y.ndim != 2 or y.shape != tuple(x.shape[1:]):
            raise DataError(f"{self.masks[i]}: mask of shape {y.shape} does not match its image "
                            f"{self.images[i].name} ({x.shape[1]}x{x.shape[2]})")
        y = torch.from_numpy(y.astype(np.int64))  # H x W
        bad = ((y < 0) | (y >= self.num_classes)) & (y != self.ignore_index)
        if bad.any():
            if self.masks[i] not in self._warned:
                self._warned.add(self.masks[i])
                vals = sorted(set(y[bad].unique().tolist()))
                warnings.warn(f"{self.masks[i]}: values {vals} outside 0..{self.num_classes - 1} "
                              f"set to ignore ({self.ignore_index})", stacklevel=2)
            y[bad] = self.ignore_index
        return x, y


def _check_pair(img: Path, mask: Path) -> str | None:
    """The reason the pair is unusable, or None (reads only the file headers)."""
    if not mask.is_file():
        return f"mask not found: {mask}"
    try:
        with open_image(img) as a, open_image(mask) as b:
            if b.mode not in MASK_MODES:
                return f"mask {mask} is not single-channel (mode {b.mode})"
            if a.size != b.size:
                return f"mask {mask} is {b.size[0]}x{b.size[1]}, its image {a.size[0]}x{a.size[1]}"
    except (OSError, ValueError, Image.DecompressionBombError) as e:  # ValueError: data.ImageTooLarge
        return f"unreadable image or mask ({why_unreadable(e)})"
    return None


def load_masks(split_dir: str | Path, num_classes: int | None = None, ignore_index: int = 255,
               classes: list[str] | None = None) -> SegData:
    """num_classes default: len(classes), else 1 + the largest non-ignore value in the masks."""
    split_dir = Path(split_dir)
    for sub in ("images", "masks"):
        if not (split_dir / sub).is_dir():
            raise DataError(f"segmentation folder not found: {split_dir / sub}")
    images, masks = [], []
    for img in sorted(p for p in (split_dir / "images").iterdir()
                      if p.suffix.lower() in IMAGE_EXTS and not p.name.startswith(".")):
        mask = split_dir / "masks" / f"{img.stem}.png"
        why = _check_pair(img, mask)
        if why:
            warnings.warn(f"skipped {img}: {why}", stacklevel=2)
            continue
        images.append(img)
        masks.append(mask)
    if not images:
        raise DataError(f"no image with a matching mask in {split_dir}")
    if num_classes is None and classes is not None:
        num_classes = len(classes)
    if num_classes is None:  # scan the masks once
        top = -1
        for m in masks:
            with open_image(m) as im:
                v = np.unique(np.array(im))
            v = v[v != ignore_index]
            top = max(top, int(v.max()) if v.size else -1)
        num_classes = top + 1
    if num_classes < 1:
        raise DataError(f"no labelled pixel in the masks of {split_dir}")
    return SegData(images=images, masks=masks, num_classes=num_classes,
                   ignore_index=ignore_index, classes=classes)
