"""The transfer tasks' feeds for the Trainer: `len(feed)` samples per epoch and
`batches(order, start, epoch)` -> ((images, targets), None) for this rank's slice of each global
batch, decoded and augmented in DataLoader workers; `eval_batches()` -> this rank's share of the
test images, in order, without augmentation.

A sample's augmentation depends on (run.seed, epoch, index) only, never on the worker or the
time it is drawn, so a resumed run replays it exactly. Detection: a horizontal flip; the
detector's transform picks the train size (task.train_sizes) per image with torch's global RNG,
which checkpoints hold. Segmentation: a random rescale (task.scale_range), a random crop
(task.crop_size; image padded with 0, mask with task.ignore_index) and a flip.
Images reach the device as float [0, 1] (the models normalise); masks as int64.
"""

from __future__ import annotations

import random
import warnings

import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from .. import distributed as du
from ..data import DataError, ignore_signals, load_image, rgb_array, why_unreadable
from .boxes import DetectionData
from .masks import SegData


def _decode(path, flip: bool = False) -> torch.Tensor:
    """An image file -> uint8 3 x H x W, mirrored left-right when `flip` (within
    data.check_image_size's bounds), with no more copies of the pixels at once than the decode."""
    return torch.from_numpy(rgb_array(load_image(path), flip)).permute(2, 0, 1)


class _DetectionSamples(Dataset):
    """(uint8 image, {"boxes", "labels"}, index) per item; None when unreadable."""

    def __init__(self, data: DetectionData, flip: float, seed: int | None, keep_difficult: bool):
        self.data = data
        self.flip = flip
        self.seed = seed
        self.keep_difficult = keep_difficult

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int):
        it = self.data.items[i]
        flip = False
        if self.seed is not None:
            g = torch.Generator().manual_seed((self.seed * 1_000_003 + i) % 2**63)
            flip = torch.rand(1, generator=g).item() < self.flip
        try:
            x = _decode(it.path, flip)
        except Exception as e:
            warnings.warn(f"skipped unreadable image {it.path} ({why_unreadable(e)})", stacklevel=2)
            return None
        boxes, labels = it.boxes.clone(), it.labels.clone()
        if not self.keep_difficult:  # COCO's crowd regions are not trained on
            boxes, labels = boxes[~it.difficult], labels[~it.difficult]
        if flip:
            w = x.shape[-1]
            boxes = torch.stack([w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]], 1)
        return x, {"boxes": boxes, "labels": labels}, i


class _SegmentationSamples(Dataset):
    """Training: (uint8 crop, int64 mask crop, index); evaluation: (uint8 image rescaled by
    task.test_scale, int64 full-size mask, index)."""

    def __init__(self, data: SegData, task, seed: int | None, train: bool):
        self.data = data
        self.task = task
        self.seed = seed
        self.train = train

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int):
        try:
            x, y = self.data.read_pair(i)  # uint8 3 x H x W, int64 H x W
        except Exception as e:  # a truncated image, a mask of another size: one warning, skipped
            warnings.warn(f"skipped unreadable pair {self.data.images[i]} ({why_unreadable(e)})", stacklevel=2)
            return None
        t = self.task
        if not self.train:
            if t.test_scale != 1.0:
                h, w = x.shape[1:]
                x = TF.resize(x, [max(1, round(h * t.test_scale)), max(1, round(w * t.test_scale))],
                              antialias=True)
            return x, y, i
        g = random.Random((self.seed * 1_000_003 + i) % 2**63)
        h, w = x.shape[1:]
        s = g.uniform(*t.scale_range)
        nh, nw = max(1, round(h * s)), max(1, round(w * s))
        if (nh, nw) != (h, w):
            x = TF.resize(x, [nh, nw], antialias=True)
            y = TF.resize(y[None], [nh, nw], interpolation=InterpolationMode.NEAREST)[0]
        ch, cw = t.crop_size
        ph, pw = max(ch - nh, 0), max(cw - nw, 0)
        if ph or pw:  # padded at the bottom and right
            x = torch.nn.functional.pad(x, (0, pw, 0, ph), value=0)
            y = torch.nn.functional.pad(y, (0, pw, 0, ph), value=t.ignore_index)
        top, left = g.randint(0, x.shape[1] - ch), g.randint(0, x.shape[2] - cw)
        x, y = x[:, top:top + ch, left:left + cw], y[top:top + ch, left:left + cw]
        if g.random() < t.flip:
            x, y = x.flip(-1), y.flip(-1)
        return x.contiguous(), y.contiguous(), i


def _collate(batch):
    """Lists, unreadable samples (None) dropped: (images, targets, indices)."""
    batch = [b for b in batch if b is not None]
    return tuple(zip(*batch)) if batch else None


class _Feed:
    def __init__(self, dataset: Dataset, cfg, device: torch.device, seed: int | None):
        self.dataset = dataset
        self.cfg = cfg
        self.device = device
        self.workers = cfg.task.workers
        # sample i of epoch e: seeded by (seed, e, i)
        self.seed = cfg.run.seed if seed is None else seed

    def __len__(self) -> int:
        return len(self.dataset)

    def _loader(self, ds: Dataset, indices: list[int], batch: int, seed: int) -> DataLoader:
        w = self.workers
        # a generator of its own leaves the global RNG alone
        return DataLoader(ds, batch_size=batch, sampler=indices, num_workers=w, collate_fn=_collate,
                          pin_memory=self.device.type == "cuda", persistent_workers=False,
                          prefetch_factor=4 if w else None, worker_init_fn=ignore_signals,
                          generator=torch.Generator().manual_seed(seed))

    def _train_loader(self, ds_for_seed, order: torch.Tensor, start: int, epoch: int):
        B = self.cfg.optim.batch_size
        W, r = du.world_size(), du.rank()
        b = B // W
        mine = [order[it * B + r * b:it * B + (r + 1) * b] for it in range(start, len(self) // B)]
        seed = self.seed * 1_000_003 + epoch
        ds = ds_for_seed(seed)
        return self._loader(ds, torch.cat(mine).tolist() if mine else [], b, seed), b

    def _full(self, batch, b: int):
        """A batch shortened by unreadable images: others repeated (same count on every rank)."""
        if batch is None:
            raise DataError(f"a whole batch of {b} images was unreadable (rank {du.rank()}); "
                            "see the warnings above")
        n = len(batch[0])
        return tuple([part[k % n] for k in range(b)] for part in batch)

    def _to_device(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(self.device, non_blocking=True).float().div_(255)

    def eval_indices(self) -> list[int]:
        """This rank's share of the evaluation images (every W-th)."""
        return list(range(du.rank(), len(self), du.world_size()))


class DetectionFeed(_Feed):
    """DetectionData -> (images: list of 3 x H x W float [0, 1], targets: list of {"boxes",
    "labels"}) on the device. `keep_difficult`: train on `difficult` objects too (VOC, as
    detectron2); COCO's crowd regions are left out."""

    def __init__(self, data: DetectionData, cfg, train: bool = True, seed: int | None = None,
                 device: torch.device | str = "cpu", keep_difficult: bool = True):
        self.data = data
        self.train = train
        self.keep_difficult = keep_difficult
        super().__init__(_DetectionSamples(data, cfg.task.flip, None, keep_difficult), cfg,
                         torch.device(device), seed)

    def batches(self, order: torch.Tensor, start: int, epoch: int):
        def dataset(seed):
            return _DetectionSamples(self.data, self.cfg.task.flip, seed, self.keep_difficult)

        loader, b = self._train_loader(dataset, order, start, epoch)
        for batch in loader:
            images, targets, _ = self._full(batch, b)
            images = [self._to_device(x) for x in images]
            targets = [{k: v.to(self.device, non_blocking=True) for k, v in t.items()} for t in targets]
            yield (images, targets), None

    def eval_batches(self):
        """(images on the device, their indices into data.items) for this rank's share."""
        loader = self._loader(self.dataset, self.eval_indices(), self.cfg.task.eval_batch, 0)
        for batch in loader:
            if batch is None:
                continue
            images, _, index = batch
            yield [self._to_device(x) for x in images], list(index)


class SegmentationFeed(_Feed):
    """SegData -> (images B x 3 x h x w float [0, 1], masks B x h x w int64) on the device."""

    def __init__(self, data: SegData, cfg, train: bool = True, seed: int | None = None,
                 device: torch.device | str = "cpu"):
        self.data, self.train = data, train
        super().__init__(_SegmentationSamples(data, cfg.task, None, False), cfg, torch.device(device), seed)

    def batches(self, order: torch.Tensor, start: int, epoch: int):
        def dataset(seed):
            return _SegmentationSamples(self.data, self.cfg.task, seed, True)

        loader, b = self._train_loader(dataset, order, start, epoch)
        for batch in loader:
            images, masks, _ = self._full(batch, b)
            x = self._to_device(torch.stack(images))
            y = torch.stack(masks).to(self.device, non_blocking=True)
            yield (x, y), None

    def eval_batches(self):
        """(images list, masks list, indices) on the device for this rank's share."""
        loader = self._loader(self.dataset, self.eval_indices(), self.cfg.task.eval_batch, 0)
        for batch in loader:
            if batch is None:
                continue
            images, masks, index = batch
            yield ([self._to_device(x) for x in images], [m.to(self.device) for m in masks], list(index))
