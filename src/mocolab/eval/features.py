"""Feature extraction from a decoded split, in eval mode (BN running statistics)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..data import TensorData


@torch.no_grad()
def extract_features(model: nn.Module, data: TensorData, mean, std, *, batch_size: int = 512,
                     device: torch.device | str = "cpu", channels_last: bool = False,
                     autocast_dtype: torch.dtype | None = None, size: int | None = None) -> torch.Tensor:
    """Returns L2-normalised features N x D (float32, on `device`) of `model(images)`.
    Images are the cached uint8 tensors; larger than `size`, they are center-cropped to it."""
    was_training = model.training
    model.eval()
    device = torch.device(device)
    m = torch.tensor(mean, device=device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=device).view(1, 3, 1, 1)
    H, W = data.images.shape[-2:]
    size = size or min(H, W)
    top, left = (H - size) // 2, (W - size) // 2
    feats = []
    for i in range(0, len(data), batch_size):
        x = data.images[i:i + batch_size, :, top:top + size, left:left + size].to(device, non_blocking=True).float().div_(255).sub_(m).div_(s)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None):
            f = model(x)
        feats.append(F.normalize(f.float().flatten(1), dim=1))
    model.train(was_training)
    return torch.cat(feats)
