"""Feature extraction from a decoded split, in eval mode (BN running statistics)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import distributed as du
from ..augment import eval_transform
from ..data import FileList, PILFileDataset, TensorData, collate_skip_none


@torch.no_grad()
def extract_features(model: nn.Module, data: TensorData | FileList, mean, std, *, batch_size: int = 512,
                     device: torch.device | str = "cpu", channels_last: bool = False,
                     autocast_dtype: torch.dtype | None = None, size: int | None = None,
                     workers: int = 2, normalize: bool = True, shard: bool = True,
                     cudagraph_steps: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (features N x D, float32 on `device`, L2-normalised unless normalize=False; labels N)
    of `model(images)` (a classifier's logits with normalize=False).
    Cached uint8 images larger than `size` are center-cropped to it; files (FileList) are
    resized and center-cropped by torchvision, and unreadable ones are left out.
    Under torchrun each rank extracts a contiguous shard and every rank gets all N, in order.
    cudagraph_steps: `model` is compiled with CUDA graphs (run.compile_mode reduce-overhead or max-autotune);
    each batch is then one inference step of its own, replaying one graph."""
    if shard and du.is_dist():
        n, w, r = len(data), du.world_size(), du.rank()
        lo, hi = n * r // w, n * (r + 1) // w  # shards of every size, none empty unless n < w
        part = (FileList(data.root, data.files[lo:hi], data.labels[lo:hi], data.classes) if isinstance(data, FileList)
                else TensorData(data.images[lo:hi], data.labels[lo:hi], data.classes))
        f, y = extract_features(model, part, mean, std, batch_size=batch_size, device=device,
                                channels_last=channels_last, autocast_dtype=autocast_dtype, size=size,
                                workers=workers, normalize=normalize, shard=False, cudagraph_steps=cudagraph_steps)
        return du.all_gather_uneven(f), du.all_gather_uneven(y.to(f.device)).cpu()
    was_training = model.training
    model.eval()
    device = torch.device(device)
    if isinstance(data, FileList):
        tf = eval_transform(size or 224, mean, std)
        loader = torch.utils.data.DataLoader(PILFileDataset(data, tf), batch_size=batch_size, num_workers=workers,
                                             collate_fn=collate_skip_none)
        batches = ((x.to(device, non_blocking=True), y) for x, y in (b for b in loader if b is not None))
    else:
        H, W = data.images.shape[-2:]
        size = size or min(H, W)
        top, left = (H - size) // 2, (W - size) // 2
        m = torch.tensor(mean, device=device).view(1, 3, 1, 1)
        s = torch.tensor(std, device=device).view(1, 3, 1, 1)
        batches = ((data.images[i:i + batch_size, :, top:top + size, left:left + size].to(device, non_blocking=True)
                    .float().div_(255).sub_(m).div_(s), data.labels[i:i + batch_size])
                   for i in range(0, len(data), batch_size))
    feats, labels = [], []
    for x, y in batches:
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if cudagraph_steps:
            torch.compiler.cudagraph_mark_step_begin()
        with torch.autocast(device.type, dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None):
            f = model(x)
        f = f.float().flatten(1)
        # a copy either way: a CUDA graph's output is overwritten by its next replay
        feats.append(F.normalize(f, dim=1) if normalize else f.clone())
        labels.append(torch.as_tensor(y))
    model.train(was_training)
    return torch.cat(feats), torch.cat(labels)
