"""Pretraining's feed: the augmented views of unlabeled images, batch by batch, for this rank.

Every loop of the engine reads a feed with the same interface (the transfer tasks' and the
classifiers' feeds are in their packages): `len(feed)` samples, and
`feed.batches(order, start, epoch)` yielding (views, index) from batch `start` of the epoch, with
`feed.generator` (set by the Trainer, seeded per step) as the source of augmentation randomness.
"""

from __future__ import annotations

import torch

from .. import distributed as du
from ..augment import BatchAugment, TwoViews, pil_transform, preset
from ..config import Config, ConfigError, check_bn_groups
from ..data import DataError, PILFileDataset, TensorData, TensorTwoViewDataset, collate_skip_none, ignore_signals
from ..methods.base import Method
from ..shards import ShardStream


def check_indices(cfg: Config, needs_index: bool, shards: bool) -> None:
    """A method whose loss needs each image's dataset index (the bank) reads a decoded cache."""
    if needs_index and (shards or cfg.data.backend != "tensor"):
        raise ConfigError(f"moco.method={cfg.moco.method} needs each image's index: use an image folder with "
                          "data.backend=tensor, not tar shards")


class ViewsFeed:
    """Two views per image (x_q, x_k), plus multi-crop's small views, or one view for a one-view
    method (the bank), from a decoded cache (TensorData), a file list (FileList) or tar shards
    (ShardStream).
    tensor backend: uint8 batches from the cache, augmented on the device, per image.
    pil backend: torchvision transforms in DataLoader workers (files or the cache)."""

    def __init__(self, cfg: Config, method: Method, train, device: torch.device):
        # model.bn_splits: BN groups of the global batch, each rank takes its share
        check_bn_groups(cfg.model.bn_splits, cfg.optim.batch_size, du.world_size())
        check_indices(cfg, method.needs_index, isinstance(train, ShardStream))
        if isinstance(train, TensorData) and device.type == "cuda" and cfg.data.backend == "tensor":
            # a small cached set lives on the GPU (the PIL backend's workers need it on the CPU)
            train = TensorData(train.images.to(device), train.labels, train.classes)
        self.cfg, self.train, self.device = cfg, train, device
        self.num_views = method.num_views
        self.batch = cfg.optim.batch_size  # global: each of the W ranks takes its slice of every batch
        self.rank = du.rank()
        self.local_batch = self.batch // du.world_size()
        self.steps_per_epoch = len(train) // self.batch
        self.generator: torch.Generator | None = None  # the Trainer's, seeded per step (exact resume)
        d = cfg.data
        spec = preset(d.augment, d.crop_size or d.image_size, d.crop_scale)
        compiled = method.compiled  # then the augmentation is compiled too
        self.aug = BatchAugment(spec, d.mean, d.std, cfg.run.channels_last, compiled)
        # multi-crop's small views: the same augmentation at their size and scale
        self.aug_small = None
        if d.small_crops:
            small = preset(d.augment, d.small_crop_size, d.small_crop_scale)
            self.aug_small = BatchAugment(small, d.mean, d.std, cfg.run.channels_last, compiled)
        self.pil_views = TwoViews(pil_transform(spec, d.mean, d.std))

    def __len__(self) -> int:
        return len(self.train)

    def batches(self, order: torch.Tensor, start: int, epoch: int):
        """Yields (views, index) for the epoch's batches from batch `start` on: this rank's slice
        of each global batch (the whole batch on one process). views: (x_q, x_k[, x_small]), or
        (x,) for a one-view method; index: the images' dataset indices (None for shards and pil)."""
        B = self.batch  # the global batch
        b = self.local_batch  # this rank's share of it
        r = self.rank
        dev = self.device
        if isinstance(self.train, ShardStream):  # this rank's stream; a resumed epoch replays it
            stream = self.train.batches(epoch, b, self.cfg.data.workers, self.cfg.run.seed, pin=dev.type == "cuda")
            for it in range(self.steps_per_epoch):
                x, _ = next(stream)
                if it >= start:
                    x = x.to(dev, non_blocking=True)
                    yield self.augment(x), None
            return
        mine = [order[it * B + r * b:it * B + (r + 1) * b] for it in range(start, self.steps_per_epoch)]
        if self.cfg.data.backend == "tensor":
            for idx in mine:
                # b x 3 x H x W uint8
                x = self.train.images[du.to_device(idx, self.train.images.device)].to(dev, non_blocking=True)
                yield self.augment(x), du.to_device(idx, dev)
            return
        yield from self._pil_batches(mine, epoch)

    def _pil_batches(self, mine: list[torch.Tensor], epoch: int):
        b, dev = self.local_batch, self.device
        # per-sample seeds from (seed, epoch, index): exact resume, whatever the workers
        seed = self.cfg.run.seed * 1_000_003 + epoch
        dataset_class = TensorTwoViewDataset if isinstance(self.train, TensorData) else PILFileDataset
        ds = dataset_class(self.train, self.pil_views, seed)
        workers = self.cfg.data.workers
        loader = torch.utils.data.DataLoader(
            ds, batch_size=b, sampler=torch.cat(mine).tolist() if mine else [], drop_last=True,
            num_workers=workers, collate_fn=collate_skip_none, pin_memory=dev.type == "cuda",
            persistent_workers=False, prefetch_factor=4 if workers else None, worker_init_fn=ignore_signals,
            generator=torch.Generator().manual_seed(seed))  # leaves the global RNG alone
        fmt = torch.channels_last if self.cfg.run.channels_last else torch.contiguous_format
        for batch in loader:
            if batch is None:  # every image of the batch was unreadable: the data is broken, not a few files
                raise DataError(f"a whole batch of {b} images was unreadable (rank {self.rank}); "
                                "see the warnings above")
            (x_q, x_k), _ = batch
            if x_q.shape[0] < b:  # unreadable images were skipped: repeat others (same shape on every rank)
                fill = torch.arange(b) % x_q.shape[0]
                x_q, x_k = x_q[fill], x_k[fill]
            yield (x_q.to(dev, non_blocking=True, memory_format=fmt),
                   x_k.to(dev, non_blocking=True, memory_format=fmt)), None

    def augment(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """uint8 b x 3 x H x W -> (x_q, x_k), plus x_small ((n b) x 3 x s x s, crop j of image i
        at row j b + i) with multi-crop; (x,) for a one-view method."""
        if self.num_views == 1:
            return (self.aug(x, self.generator),)
        views = self.aug.two_views(x, self.generator)
        if self.aug_small is None:
            return views
        return (*views, self.aug_small(x.repeat(self.cfg.data.small_crops, 1, 1, 1), self.generator))
