"""Feature extraction from a decoded split, in eval mode (BN running statistics)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import distributed as du
from ..data import CenterCropFiles, FileList, TensorData, cache_size_for, collate_skip_none
from .store import FeatureStore


@torch.no_grad()
def extract_features(model: nn.Module, data: TensorData | FileList, mean, std, *, batch_size: int = 512,
                     device: torch.device | str = "cpu", channels_last: bool = False,
                     autocast_dtype: torch.dtype | None = None, size: int | None = None,
                     workers: int = 2, normalize: bool = True, shard: bool = True,
                     cudagraph_steps: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (features N x D, float32 on `device`, L2-normalised unless normalize=False; labels N)
    of `model(images)` (a classifier's logits with normalize=False).
    Cached uint8 images larger than `size` are center-cropped to it; files (FileList) are decoded in
    `workers` DataLoader workers to the very pixels of the uint8 cache and its center crop
    (data.CenterCropFiles), and unreadable ones are left out.
    Under torchrun each rank extracts a contiguous shard and every rank gets all N, in order.
    cudagraph_steps: `model` is compiled with CUDA graphs (run.compile_mode reduce-overhead or max-autotune);
    each batch is then one inference step of its own, replaying one graph."""
    if shard and du.is_dist():
        n = len(data)
        w = du.world_size()
        r = du.rank()
        lo, hi = n * r // w, n * (r + 1) // w  # shards of every size, none empty unless n < w
        part = (FileList(data.root, data.files[lo:hi], data.labels[lo:hi], data.classes) if isinstance(data, FileList)
                else TensorData(data.images[lo:hi], data.labels[lo:hi], data.classes))
        f, y = extract_features(model, part, mean, std, batch_size=batch_size, device=device,
                                channels_last=channels_last, autocast_dtype=autocast_dtype, size=size,
                                workers=workers, normalize=normalize, shard=False, cudagraph_steps=cudagraph_steps)
        return du.all_gather_uneven(f), du.all_gather_uneven(y.to(f.device)).cpu()
    feats, labels = [], []
    for f, y in _features(model, data, mean, std, batch_size=batch_size, device=device, channels_last=channels_last,
                          autocast_dtype=autocast_dtype, size=size, workers=workers, normalize=normalize,
                          cudagraph_steps=cudagraph_steps):
        feats.append(f)
        labels.append(y)
    return torch.cat(feats), torch.cat(labels)


def file_loader(fl: FileList, size: int, batch_size: int, workers: int, device: torch.device):
    """Batches (uint8 B x 3 x size x size, labels B) of the files, decoded, resized to
    cache_size_for(size) and center-cropped in `workers` DataLoader workers as the uint8 cache would
    hold them; pinned for a CUDA device. Unreadable files are left out (a warning each)."""
    from ..data import ignore_signals

    return torch.utils.data.DataLoader(CenterCropFiles(fl, size, cache_size_for(size)), batch_size=batch_size,
                                       num_workers=workers, collate_fn=collate_skip_none,
                                       pin_memory=device.type == "cuda", worker_init_fn=ignore_signals if workers
                                       else None, persistent_workers=False)


@torch.no_grad()
def _features(model: nn.Module, data: TensorData | FileList, mean, std, *, batch_size: int, device, channels_last,
              autocast_dtype, size, workers, normalize, cudagraph_steps):
    """Yields (features B x D float32 on `device`, labels B) batch by batch (one process)."""
    was_training = model.training
    model.eval()
    device = torch.device(device)
    m = torch.tensor(mean, device=device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=device).view(1, 3, 1, 1)
    if isinstance(data, FileList):
        loader = file_loader(data, size or 224, batch_size, workers, device)
        batches = ((x.to(device, non_blocking=True), y) for x, y in (b for b in loader if b is not None))
    else:
        H, W = data.images.shape[-2:]
        size = size or min(H, W)
        top, left = (H - size) // 2, (W - size) // 2
        batches = ((data.images[i:i + batch_size, :, top:top + size, left:left + size].to(device, non_blocking=True),
                    data.labels[i:i + batch_size]) for i in range(0, len(data), batch_size))
    try:
        for x, y in batches:  # x: B x 3 x S x S uint8 on the device
            x = x.float().div_(255).sub_(m).div_(s)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            if cudagraph_steps:
                torch.compiler.cudagraph_mark_step_begin()
            with torch.autocast(device.type, dtype=autocast_dtype or torch.bfloat16,
                                enabled=autocast_dtype is not None):
                f = model(x)
            f = f.float().flatten(1)
            # a copy either way: a CUDA graph's output is overwritten by its next replay
            yield (F.normalize(f, dim=1) if normalize else f.clone()), torch.as_tensor(y)
    finally:
        model.train(was_training)


@torch.no_grad()
def extract_to_store(model: nn.Module, data: TensorData | FileList, mean, std, *, memory_limit: float,
                     store_dtype: str = "float32", store_dir=None, batch_size: int = 512,
                     device: torch.device | str = "cpu", channels_last: bool = False,
                     autocast_dtype: torch.dtype | None = None, size: int | None = None, workers: int = 2,
                     normalize: bool = False) -> FeatureStore:
    """As extract_features (one process), into a FeatureStore (see eval.store): the features
    N x D are written batch by batch, in memory when N x D x 4 bytes <= memory_limit, else to a
    memory-mapped file of `store_dtype` under `store_dir`. The caller closes the store."""
    if du.is_dist():
        from ..errors import UsageError

        raise UsageError("streaming evaluation (--stream on, or a split over --memory-limit-gb) runs as one "
                         "process, not under torchrun: run it without torchrun, or give --stream off")
    store = FeatureStore(len(data), memory_limit, store_dtype, store_dir)
    try:
        for f, y in _features(model, data, mean, std, batch_size=batch_size, device=device,
                              channels_last=channels_last, autocast_dtype=autocast_dtype, size=size, workers=workers,
                              normalize=normalize, cudagraph_steps=False):
            store.append(f, y)
    except BaseException:
        store.close()
        raise
    return store.finish()
