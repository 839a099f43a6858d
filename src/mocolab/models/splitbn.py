"""SplitBatchNorm: batch-norm statistics per group of the batch, emulating several devices.

Group g holds the contiguous chunk of samples [g*n, (g+1)*n), n = N / splits, so that one
process with `splits=R` computes what R ranks would each compute on their own slice. With
`splits=1` (or in eval mode) it is exactly nn.BatchNorm2d, with the same state_dict keys, so
that the backbone exports to torchvision unchanged.

Each chunk is a free view of the batch (in NCHW and channels_last alike) and goes through
PyTorch's native batch-norm kernel, which keeps bf16 inputs in bf16; the only extra work is
one concatenation. This was measured against the official demo's reshape to (N/S, C*S, H, W)
(a copy in channels_last) and against hand-written statistics (much slower than plain BN):
see benchmarks/RESULTS.md, 'SplitBatchNorm implementations' and 'cifar10_cpu tuning'. Under
torch.compile the same maths runs as one broadcast over a grouped view (`_grouped`), which
inductor fuses. On a GPU, where the S kernel launches per layer are the cost at CIFAR size,
the groups are folded into channels (`_folded`): one batch-norm call on n x (S C) x H x W
between two copies.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SplitBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are computed per contiguous group of `splits`."""

    def __init__(self, num_features: int, splits: int = 1, **kw):
        super().__init__(num_features, **kw)
        self.splits = splits
        # None: fold the groups into channels off the CPU, chunks on it (tests force either)
        self.fold = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.splits == 1:
            return super().forward(x)
        if x.shape[0] % self.splits:
            raise ValueError(f"batch of {x.shape[0]} is not divisible by bn_splits={self.splits}")
        if torch.compiler.is_compiling():
            return self._grouped(x)
        # folded only with 2+ values per group and channel: with one, BN's unbiased running
        # variance is undefined (F.batch_norm refuses it); the chunks handle it as before
        if (self.fold if self.fold is not None else x.device.type != "cpu") and x.numel() > self.splits * x.shape[1]:
            return self._folded(x)
        outs = []  # per split: its normalized chunk
        means = []  # per split: its batch mean (C)
        rstds = []  # per split: its 1 / sqrt(var + eps) (C)
        for chunk in x.chunk(self.splits):  # splits x (n x C x H x W), views
            y, mean, rstd = torch.native_batch_norm(chunk, self.weight, self.bias, None, None, True, 0.0, self.eps)
            outs.append(y)
            means.append(mean)
            rstds.append(rstd)
        with torch.no_grad():
            self._update_running(torch.stack(means).float(), torch.stack(rstds).float().pow(-2) - self.eps, x)
        return torch.cat(outs)  # N x C x H x W, in the input's memory format

    def _folded(self, x: torch.Tensor) -> torch.Tensor:
        """The official demo's reshape with contiguous groups: group g's channels become channels
        g C .. (g+1) C of an n x (S C) x ... batch, which one batch-norm call normalises: about
        half the ops of the chunks with 8 groups, forward and backward (benchmarks/splitbn.py
        counts them). The running statistics per (group, channel) are averaged back to C, as in
        `_update_running`."""
        S, C = self.splits, x.shape[1]
        self.num_batches_tracked += 1
        mom = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
        mean, var = self.running_mean.repeat(S), self.running_var.repeat(S)  # S C, updated in place
        w, b = (self.weight.repeat(S), self.bias.repeat(S)) if self.affine else (None, None)
        y = F.batch_norm(fold_groups(x, S), mean, var, w, b, True, mom, self.eps)
        with torch.no_grad():
            self.running_mean.copy_(mean.view(S, C).mean(0))
            self.running_var.copy_(var.view(S, C).mean(0))
        return unfold_groups(y, S)

    def _grouped(self, x: torch.Tensor) -> torch.Tensor:
        """The same maths as one broadcast over an S x n x C x ... view, for torch.compile:
        inductor fuses it, where the per-chunk calls above put splits x as many BN ops in the
        graph (their cold compile took several times longer, see benchmarks/RESULTS.md, session
        4, 'SplitBatchNorm under torch.compile')."""
        S, C = self.splits, x.shape[1]
        xs = x.view(S, x.shape[0] // S, *x.shape[1:]).float()  # S x n x C x ...
        dims = (1, *range(3, xs.dim()))
        var, mean = torch.var_mean(xs, dim=dims, correction=0, keepdim=True)  # S x 1 x C x 1 ...
        shape = (1, 1, C) + (1,) * (xs.dim() - 3)
        y = (xs - mean) * torch.rsqrt(var + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        with torch.no_grad():
            self._update_running(mean.reshape(S, C), var.reshape(S, C), x)
        return y.view_as(x).to(x.dtype)

    def _update_running(self, means: torch.Tensor, variances: torch.Tensor, x: torch.Tensor) -> None:
        """Running stats from the groups' S x C biased statistics: their average, with the
        unbiased variance as in BN."""
        count = x.numel() // (self.splits * x.shape[1])
        self.num_batches_tracked += 1
        mom = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
        self.running_mean.lerp_(means.mean(0), mom)
        self.running_var.lerp_(variances.mean(0) * count / max(count - 1, 1), mom)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", splits={self.splits}"


def _nhwc(x: torch.Tensor) -> bool:
    return x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def fold_groups(x: torch.Tensor, S: int) -> torch.Tensor:
    """N x C x ... -> n x (S C) x ... (n = N / S): sample j of group g at row j, channels g C ..
    (g+1) C. One copy, in x's memory format."""
    N = x.shape[0]
    C = x.shape[1]
    rest = x.shape[2:]  # H x W (or none)
    if _nhwc(x):  # in memory order: S x n x H x W x C -> n x H x W x S x C
        h = x.permute(0, 2, 3, 1).reshape(S, N // S, *rest, C)
        return h.permute(1, 2, 3, 0, 4).reshape(N // S, *rest, S * C).permute(0, 3, 1, 2)
    return x.reshape(S, N // S, C, *rest).transpose(0, 1).reshape(N // S, S * C, *rest)


def unfold_groups(y: torch.Tensor, S: int) -> torch.Tensor:
    """The inverse of fold_groups: n x (S C) x ... -> N x C x ..."""
    n = y.shape[0]
    C = y.shape[1] // S
    rest = y.shape[2:]
    if _nhwc(y):  # n x H x W x S x C -> S x n x H x W x C
        h = y.permute(0, 2, 3, 1).reshape(n, *rest, S, C)
        return h.permute(3, 0, 1, 2, 4).reshape(S * n, *rest, C).permute(0, 3, 1, 2)
    return y.reshape(n, S, C, *rest).transpose(0, 1).reshape(S * n, C, *rest)


class SplitBatchNorm1d(SplitBatchNorm):
    """SplitBatchNorm for N x C features (projection heads)."""

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() != 2:
            raise ValueError(f"expected N x C features, got {x.dim()}-D input")
