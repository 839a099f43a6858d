"""Datasets: image folders (labeled or not), torchvision CIFAR, and a decoded uint8 cache.

`--data DIR` accepts:
- a folder with `train/` (and optionally `test/` or `val/`) splits, each an ImageFolder;
- a single ImageFolder (class sub-folders) or a flat folder of unlabeled images;
- `cifar10` / `cifar100` (optionally `cifar10:ROOT`): torchvision's dataset, downloaded into
  ROOT (default ~/.cache/mocolab/data) when it is not there.
Corrupt or unreadable images, and images over the size bounds (MAX_PIXELS, MAX_ASPECT, checked
from the header before decoding), are skipped: one warning names each file, and a count follows.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import logging
import os
import signal
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFile
from torch.utils.data import DataLoader, Dataset
from torchvision.datasets.folder import IMG_EXTENSIONS

from .errors import UserError

log = logging.getLogger("mocolab")


class DataError(UserError, ValueError):
    """A data problem the user must fix (wrong path, no images...). The message says which."""



def why_unreadable(e: BaseException) -> str:
    """An image decoding failure in words (for the 'skipped unreadable image' warnings), not the
    exception's class: not an image, truncated, or the decoder's own first line."""
    text = str(e).splitlines()[0] if str(e) else ""
    if "cannot identify image file" in text:
        return "not an image file PIL can read"
    if "truncated" in text.lower():
        return "truncated or corrupt image data"
    return text[:120] or "corrupt image data"

def default_cache_root() -> Path:
    return Path(os.environ.get("MOCOLAB_CACHE", Path.home() / ".cache" / "mocolab"))


def _is_image(p: Path | os.DirEntry) -> bool:
    return p.is_file() and p.name.lower().endswith(IMG_EXTENSIONS) and not p.name.startswith(".")


class Paths(Sequence):
    """File paths held as str and handed out as Path: a list of Path objects costs ~400 B a file,
    its str ~100 B, and a folder of 200k images is listed whole (benchmarks/RESULTS.md, 'embed
    memory'). Indexing gives a Path, slicing and + give Paths."""

    __slots__ = ("_s",)

    def __init__(self, files=()):
        self._s = files._s if isinstance(files, Paths) else [os.fspath(f) for f in files]

    def __len__(self) -> int:
        return len(self._s)

    def __getitem__(self, i):
        if isinstance(i, slice):
            out = Paths()
            out._s = self._s[i]
            return out
        return Path(self._s[i])

    def __iter__(self):
        return map(Path, self._s)

    def __add__(self, other) -> Paths:
        out = Paths()
        out._s = self._s + Paths(other)._s
        return out

    def __eq__(self, other) -> bool:
        return isinstance(other, Sequence) and not isinstance(other, str) and list(self) == list(other)

    def __repr__(self) -> str:
        return f"Paths({len(self)} files)"

    def __getstate__(self):  # pickled to DataLoader workers: the str list
        return self._s

    def __setstate__(self, state) -> None:
        self._s = state


@dataclass
class FileList:
    """Image files (held compactly: Paths) with labels (-1 when the folder is unlabeled) and class names."""

    root: Path
    files: Paths
    labels: list[int]
    classes: list[str]

    def __post_init__(self) -> None:
        if not isinstance(self.files, Paths):
            self.files = Paths(self.files)

    def __len__(self) -> int:
        return len(self.files)

    @property
    def labeled(self) -> bool:
        return bool(self.classes)


def scan_folder(root: str | Path, limit: int = 0) -> FileList:
    """Class sub-folders -> labeled ImageFolder; images directly inside -> unlabeled."""
    root = Path(root).expanduser()
    if not root.exists():
        raise DataError(f"data folder not found: {root}")
    if not root.is_dir():
        raise DataError(f"data path is not a folder: {root}")
    subdirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    files = []  # image paths
    labels = []  # their class indices (-1 each in a flat folder)
    classes = []
    if subdirs:
        for d in subdirs:
            found = sorted(p for p in d.rglob("*") if _is_image(p))
            if not found:
                warnings.warn(f"class folder without images, ignored: {d}", stacklevel=2)
                continue
            classes.append(d.name)
            files += map(os.fspath, found)  # str: one class's Path objects at a time
            labels += [len(classes) - 1] * len(found)
    with os.scandir(root) as it:  # str, in Path order (one folder: by name)
        top = sorted(e.path for e in it if _is_image(e))
    if top and not classes:  # a flat folder of unlabeled images
        files, labels = top, [-1] * len(top)
    if not files:
        raise DataError(f"no images found in {root} (looked for {', '.join(IMG_EXTENSIONS)})")
    if limit:  # a class-balanced subset: the first images of each class, interleaved
        by_label: dict[int, list[int]] = {}
        for i, lab in enumerate(labels):
            by_label.setdefault(lab, []).append(i)
        interleaved = [i for group in itertools.zip_longest(*by_label.values()) for i in group if i is not None]
        keep = sorted(interleaved[:limit])
        files, labels = [files[i] for i in keep], [labels[i] for i in keep]
    return FileList(root, files, labels, classes)


def find_splits(data: str | Path) -> tuple[Path, Path | None]:
    """DIR with train/ (+ test/ or val/) -> (train, test); otherwise (DIR, None)."""
    root = Path(data).expanduser()
    if not root.exists():
        raise DataError(f"data folder not found: {root}")
    if (root / "train").is_dir():
        for name in ("test", "val"):
            if (root / name).is_dir():
                return root / "train", root / name
        return root / "train", None
    return root, None


# 8192 x 4096 (a 24 Mpx photo passes): a decode and its copies stay under 1 GB with torch
MAX_PIXELS = 2**25
# longer side / shorter side: resizing the shorter side up to S takes up to S x 32S pixels
MAX_ASPECT = 32


class ImageTooLarge(ValueError):
    """An image whose header promises more than mocolab decodes (see check_image_size)."""


def check_image_size(size: tuple[int, int]) -> None:
    """Raises ImageTooLarge for a (width, height), read from a file's header before anything is
    decoded, over MAX_PIXELS or MAX_ASPECT: a 467-byte PNG of 1 x 200,000 pixels would otherwise
    take gigabytes once its shorter side is resized up to the training size."""
    w, h = size
    if w < 1 or h < 1:
        raise ImageTooLarge(f"an empty image ({w}x{h} pixels)")
    if w * h > MAX_PIXELS:
        raise ImageTooLarge(f"too large to decode: {w}x{h} pixels, over the limit of {MAX_PIXELS:,}")
    if max(w, h) > MAX_ASPECT * min(w, h):
        raise ImageTooLarge(f"too elongated to decode: {w}x{h} pixels, an aspect ratio over {MAX_ASPECT}:1")


def open_image(path) -> Image.Image:
    """Image.open (a path or a file object) whose header size passed check_image_size; nothing is
    decoded yet. Every image mocolab decodes is opened here."""
    im = Image.open(path)
    try:
        check_image_size(im.size)
    except ImageTooLarge:
        im.close()
        raise
    return im


def load_image(path) -> Image.Image:
    """Opens (within the size bounds of check_image_size) and fully decodes an image as RGB
    (CMYK, RGBA, L, P, I;16 are converted; an RGB image is returned as decoded, without a copy)."""
    with open(path, "rb") if isinstance(path, str | os.PathLike) else contextlib.nullcontext(path) as f:
        im = open_image(f)
        im.load()  # the pixels are in memory: the file may close
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16/32-bit: scale to 8-bit before RGB
        arr = np.asarray(im, dtype=np.float32)
        hi = 65535.0 if im.mode.startswith("I;16") else max(float(arr.max()), 1.0)
        im = Image.fromarray(np.clip(arr / hi * 255.0, 0, 255).astype(np.uint8), mode="L")
    if im.mode in ("RGBA", "LA", "P", "PA"):
        im = im.convert("RGBA")
        bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(bg, im)
    return im if im.mode == "RGB" else im.convert("RGB")


def rgb_array(im: Image.Image, flip: bool = False) -> np.ndarray:
    """An RGB PIL image -> H x W x 3 uint8 (mirrored left-right when `flip`), copied in strips of
    rows: no whole-image temporary besides the result (np.asarray(im) holds the bytes twice on the
    way, on top of PIL's 4 bytes a pixel)."""
    w, h = im.size
    out = np.empty((h, w, 3), dtype=np.uint8)
    step = max(1, 2**20 // (3 * w))  # rows per strip (about 1 MB)
    for top in range(0, h, step):
        strip = np.asarray(im.crop((0, top, w, min(h, top + step))))  # rows x W x 3
        out[top:top + strip.shape[0]] = strip[:, ::-1] if flip else strip
    return out


def resize_square(im: Image.Image, size: int) -> np.ndarray:
    """Shorter side to `size`, center crop size x size -> H x W x 3 uint8."""
    if im.size != (size, size):
        w, h = im.size
        s = size / min(w, h)
        im = im.resize((max(size, round(w * s)), max(size, round(h * s))), Image.BICUBIC, reducing_gap=3.0)
        w, h = im.size
        left, top = (w - size) // 2, (h - size) // 2
        im = im.crop((left, top, left + size, top + size))
    return np.asarray(im, dtype=np.uint8)


class _DecodeDataset(Dataset):
    def __init__(self, files: list[Path], size: int):
        self.files, self.size = files, size

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        try:
            return i, torch.from_numpy(resize_square(load_image(self.files[i]), self.size).copy()), ""
        except Exception as e:  # any decode failure: reported, then skipped
            return i, torch.zeros(self.size, self.size, 3, dtype=torch.uint8), why_unreadable(e)


class CenterCropFiles(Dataset):
    """Image files decoded as the uint8 cache decodes them (shorter side to `resize`, center crop,
    see `resize_square`), then center-cropped to `size`: (3 x size x size uint8, label), or None for
    an unreadable file (a warning names it; collate_skip_none drops it). In DataLoader workers this
    is the streaming counterpart of decode_to_tensor + the center crop of extract_features: the
    same pixels, without the whole split in memory."""

    def __init__(self, fl: FileList, size: int, resize: int | None = None):
        self.fl = fl
        self.size = size
        self.resize = resize or size

    def __len__(self):
        return len(self.fl)

    def __getitem__(self, i):
        try:
            arr = resize_square(load_image(self.fl.files[i]), self.resize)  # R x R x 3 uint8
        except Exception as e:
            warnings.warn(f"skipped unreadable image {self.fl.files[i]} ({why_unreadable(e)})", stacklevel=2)
            return None
        top = left = (self.resize - self.size) // 2
        x = torch.from_numpy(arr[top:top + self.size, left:left + self.size].copy()).permute(2, 0, 1)
        return x, self.fl.labels[i]  # 3 x size x size uint8, int


def decoded_bytes(n: int, size: int) -> int:
    """Bytes of n images decoded into the uint8 cache at `size` (n x 3 x size x size)."""
    return n * 3 * size * size


def _warn_skipped(bad: list[tuple[Path, str]], total: int) -> None:
    for path, why in bad:
        warnings.warn(f"skipped unreadable image {path} ({why})", stacklevel=3)
    if bad:
        warnings.warn(f"skipped {len(bad)} unreadable image(s) out of {total}", stacklevel=3)


@dataclass
class TensorData:
    """A decoded split: images N x 3 x S x S uint8, labels N (int64, -1 = unlabeled)."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]

    def __len__(self) -> int:
        return self.images.shape[0]


def decode_to_tensor(fl: FileList, size: int, workers: int = 2, cache_dir: str | Path = "") -> TensorData:
    """Decodes every image once into a uint8 tensor, kept on disk under cache_dir so the next
    run loads it in a second. Unreadable files are skipped with a warning each and a count."""
    h = hashlib.sha1(f"{fl.root.resolve()}|{size}|v1".encode())
    for p in fl.files:
        st = p.stat()
        h.update(f"{p}|{st.st_size}|{st.st_mtime_ns}".encode())
    cache = Path(cache_dir or default_cache_root() / "decoded") / f"{h.hexdigest()[:20]}.pt"
    if cache.exists():
        try:
            d = torch.load(cache, weights_only=True)
            return TensorData(d["images"], d["labels"], list(fl.classes))
        except Exception:  # a damaged cache is rebuilt, never trusted
            log.warning("decoded cache %s is damaged; decoding again", cache)
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    images = torch.empty(len(fl), 3, size, size, dtype=torch.uint8)
    ok = torch.zeros(len(fl), dtype=torch.bool)
    bad = []
    loader = DataLoader(_DecodeDataset(fl.files, size), batch_size=256, num_workers=workers,
                        collate_fn=lambda b: b)
    for batch in loader:
        for i, arr, err in batch:
            if err:
                bad.append((fl.files[i], err))
            else:
                images[i] = arr.permute(2, 0, 1)
                ok[i] = True
    _warn_skipped(bad, len(fl))
    if not ok.any():
        raise DataError(f"none of the {len(fl)} images in {fl.root} could be read")
    data = TensorData(images[ok].contiguous(), torch.tensor(fl.labels)[ok], list(fl.classes))
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp")
        torch.save({"images": data.images, "labels": data.labels}, tmp)
        os.replace(tmp, cache)
    except OSError as e:
        log.warning("could not write the decoded cache %s: %s", cache, e)
    return data


def torchvision_cifar(name: str, root: str | Path, train: bool, download: bool = True) -> TensorData:
    """CIFAR-10/100 through torchvision (downloaded into root when missing)."""
    from torchvision import datasets

    cls = {"cifar10": datasets.CIFAR10, "cifar100": datasets.CIFAR100}[name]
    try:
        ds = cls(root=str(root), train=train, download=download)
    except (RuntimeError, OSError) as e:  # OSError covers URLError (no network)
        raise DataError(f"{name} is not in {root} and could not be downloaded: {e}") from None
    images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()  # N x 3 x 32 x 32
    return TensorData(images, torch.tensor(ds.targets), list(ds.classes))


@dataclass
class Splits:
    train: TensorData
    test: TensorData | None
    train_files: FileList | None = None
    test_files: FileList | None = None


def load_splits(data: str, size: int, *, limit: int = 0, workers: int = 2, cache_dir: str = "",
                decode: bool = True) -> Splits:
    """Resolves `--data` and decodes the train (and test) split."""
    name, _, root = str(data).partition(":")
    if name in ("cifar10", "cifar100") and not Path(data).exists():
        root = Path(root) if root else default_cache_root() / "data"
        train, test = torchvision_cifar(name, root, True), torchvision_cifar(name, root, False)
        if limit:
            train = TensorData(train.images[:limit], train.labels[:limit], train.classes)
            test = TensorData(test.images[:limit], test.labels[:limit], test.classes)
        return Splits(train, test)
    train_dir, test_dir = find_splits(data)
    train_fl = scan_folder(train_dir, limit)
    test_fl = scan_folder(test_dir, limit) if test_dir else None
    if test_fl is not None and train_fl.classes and test_fl.classes != train_fl.classes:
        raise DataError(f"the classes of {test_dir} differ from those of {train_dir}")
    if not decode:
        return Splits(None, None, train_fl, test_fl)
    train = decode_to_tensor(train_fl, size, workers, cache_dir)
    test = decode_to_tensor(test_fl, size, workers, cache_dir) if test_fl else None
    return Splits(train, test, train_fl, test_fl)


def cache_size_for(image_size: int) -> int:
    """Side of the decoded cache: native for small images, room for crops for large ones."""
    return image_size if image_size <= 64 else int(round(image_size / 0.875))


def ignore_signals(_worker_id: int) -> None:
    """DataLoader worker_init_fn: SIGINT/SIGTERM (sent to the whole process group by Ctrl-C or a
    scheduler) are for the main process, which finishes its step and saves; workers exit with it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def seeded(transform, img, seed: int | None):
    """transform(img) with torch's global RNG (torchvision's source) seeded by `seed` and then
    restored: a sample's augmentation depends on the seed only, not on which DataLoader worker
    draws it or when, so a resumed run replays the very same views."""
    if seed is None:
        return transform(img)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return transform(img)


class PILFileDataset(Dataset):
    """Image files through a per-image transform (the `pil` backend's two views, or one evaluation
    view). Unreadable files yield None (dropped in collate). With `seed`, image i is transformed
    under the seed (seed * 1_000_003 + i): see `seeded`."""

    def __init__(self, fl: FileList, transform, seed: int | None = None):
        self.fl = fl
        self.transform = transform
        self.seed = seed

    def _seed(self, i: int) -> int | None:
        return None if self.seed is None else (self.seed * 1_000_003 + i) % 2**63

    def __len__(self):
        return len(self.fl)

    def __getitem__(self, i):
        try:
            img = load_image(self.fl.files[i])
        except Exception as e:
            warnings.warn(f"skipped unreadable image {self.fl.files[i]} ({why_unreadable(e)})", stacklevel=2)
            return None
        return seeded(self.transform, img, self._seed(i)), self.fl.labels[i]


class TensorTwoViewDataset(PILFileDataset):
    """PIL pipeline over an already-decoded uint8 tensor (the pil backend with the cache)."""

    def __init__(self, data: TensorData, transform, seed: int | None = None):
        self.data = data
        self.transform = transform
        self.seed = seed

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        img = Image.fromarray(self.data.images[i].permute(1, 2, 0).numpy())
        return seeded(self.transform, img, self._seed(i)), int(self.data.labels[i])


def collate_skip_none(batch):
    batch = [b for b in batch if b is not None]
    return torch.utils.data.default_collate(batch) if batch else None
