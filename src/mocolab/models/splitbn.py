"""SplitBatchNorm: batch-norm statistics per group of the batch, emulating several devices.

Group g holds the contiguous chunk of samples [g*n, (g+1)*n), n = N / splits, so that one
process with `splits=R` computes what R ranks would each compute on their own slice. With
`splits=1` (or in eval mode) it is exactly nn.BatchNorm2d, with the same state_dict keys, so
that the backbone exports to torchvision unchanged.

The forward and backward are written by hand (a small autograd.Function) rather than
composed from autograd ops: composed ops keep several full-size temporaries per layer and
were measured 1.6x slower on CPU (benchmarks/RESULTS.md).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class _SplitBNFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, splits: int, eps: float):
        N, C = x.shape[:2]
        xs = x.view(splits, N // splits, *x.shape[1:])  # S x n x C x H x W (a view, any memory format)
        dims = (1, 3, 4)
        var, mean = torch.var_mean(xs, dim=dims, correction=0, keepdim=True)  # S x 1 x C x 1 x 1
        rstd = torch.rsqrt(var + eps)
        scale = rstd * weight.view(1, 1, C, 1, 1)
        y = torch.empty_like(x)  # written through a 5-D view, returned as a plain tensor
        torch.addcmul(bias.view(1, 1, C, 1, 1) - mean * scale, xs, scale, out=y.view(xs.shape))
        ctx.save_for_backward(x, mean, rstd, weight)
        ctx.splits = splits
        ctx.mark_non_differentiable(mean, var)
        return y, mean.reshape(splits, C).clone(), var.reshape(splits, C).clone()

    @staticmethod
    def backward(ctx, dy, _dmean, _dvar):
        x, mean, rstd, weight = ctx.saved_tensors
        S, N, C = ctx.splits, x.shape[0], x.shape[1]
        xs = x.view(S, N // S, *x.shape[1:])
        dys = dy.view_as(xs)
        dims = (1, 3, 4)
        count = xs.numel() // (S * C)
        xhat = (xs - mean) * rstd  # S x n x C x H x W
        sum_dy = dys.sum(dim=dims, keepdim=True)  # S x 1 x C x 1 x 1
        sum_dy_xhat = (dys * xhat).sum(dim=dims, keepdim=True)
        w = weight.view(1, 1, C, 1, 1)
        # dx = rstd*w * (dy - mean(dy) - xhat*mean(dy*xhat)), per group
        dx = torch.empty_like(x)
        torch.addcmul(dys - sum_dy / count, xhat, sum_dy_xhat / count, value=-1.0, out=dx.view(xs.shape))
        dx.view(xs.shape).mul_(rstd * w)
        return dx, sum_dy_xhat.sum(0).view(C), sum_dy.sum(0).view(C), None, None


class SplitBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are computed per contiguous group of `splits`."""

    def __init__(self, num_features: int, splits: int = 1, **kw):
        super().__init__(num_features, **kw)
        self.splits = splits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.splits == 1:
            return super().forward(x)
        if x.shape[0] % self.splits:
            raise ValueError(f"batch of {x.shape[0]} is not divisible by bn_splits={self.splits}")
        if x.dtype != self.weight.dtype:  # under autocast: normalise in float32, as BatchNorm does
            y = self.forward(x.float())
            return y.to(x.dtype)
        y, mean, var = _SplitBNFunction.apply(x, self.weight, self.bias, self.splits, self.eps)
        with torch.no_grad():  # running stats: the average over groups, unbiased variance as in BN
            count = x.numel() // (self.splits * x.shape[1])
            self.num_batches_tracked += 1
            mom = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
            self.running_mean.lerp_(mean.mean(0), mom)
            self.running_var.lerp_(var.mean(0) * count / max(count - 1, 1), mom)
        return y

    def extra_repr(self) -> str:
        return super().extra_repr() + f", splits={self.splits}"


def reference_split_bn(x: torch.Tensor, bn: nn.BatchNorm2d, splits: int) -> torch.Tensor:
    """BN in training mode applied to each contiguous chunk separately (for tests)."""
    chunks = x.chunk(splits)
    return torch.cat([F.batch_norm(c, None, None, bn.weight, bn.bias, True, 0.0, bn.eps) for c in chunks])
