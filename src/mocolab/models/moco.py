"""The MoCo module: query encoder f_q, key encoder f_k (its EMA copy) and the queue.

It holds the state and computes the loss (`forward`, so that DistributedDataParallel can wrap
it); the step that changes the state lives in `mocolab.step.moco_step` and reads like the
paper's Algorithm 1.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from ..config import Config
from ..distributed import batch_shuffle, batch_unshuffle
from ..losses import info_nce
from ..queue import KeyQueue
from .backbones import build_backbone, resolve_stem
from .heads import build_head, build_predictor


class Encoder(nn.Module):
    """backbone -> head; `forward` returns L2-normalised features N x dim."""

    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, x: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        z = self.head(self.backbone(x))
        return F.normalize(z.float(), dim=1) if normalize else z


class MoCo(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        mc = cfg.model
        self.stem = resolve_stem(mc.stem, cfg.data.image_size)
        backbone, feat_dim = build_backbone(mc.arch, mc.width, self.stem, mc.bn_splits, mc.zero_init_residual)
        self.feature_dim = feat_dim
        self.compiled = False  # set by pretrain.build_model when the encoders are compiled
        self.cudagraphs = False  # likewise, when they are compiled with CUDA graphs
        self.encoder_q = Encoder(backbone, build_head(mc.head, feat_dim, mc.dim, mc.hidden_dim, mc.bn_splits))
        if mc.sync_bn:  # BN statistics over the global batch (torch's SyncBatchNorm, GPUs only)
            self.encoder_q = nn.SyncBatchNorm.convert_sync_batchnorm(self.encoder_q)
        self.encoder_k = copy.deepcopy(self.encoder_q)  # f_k starts as a copy of f_q
        for p in self.encoder_k.parameters():
            p.requires_grad_(False)  # f_k is updated by momentum only
        # MoCo v3's predictor on the query side only (f_k has none: it is f_q's EMA without it)
        self.predictor = build_predictor(mc.dim, mc.predictor_dim, mc.bn_splits) if mc.predictor_dim else None
        if mc.sync_bn and self.predictor is not None:
            self.predictor = nn.SyncBatchNorm.convert_sync_batchnorm(self.predictor)
        self.queue = KeyQueue(cfg.moco.queue_size, mc.dim)
        self.shuffle_bn = cfg.moco.shuffle_bn

    def trainable_parameters(self) -> list[nn.Parameter]:
        """What SGD updates: f_q and the predictor."""
        return [*self.encoder_q.parameters(), *(self.predictor.parameters() if self.predictor is not None else ())]

    def encode_query(self, x: torch.Tensor) -> torch.Tensor:
        if self.predictor is None:
            return self.encoder_q(x)  # N x C
        return F.normalize(self.predictor(self.encoder_q(x, normalize=False)).float(), dim=1)  # N x C

    @torch.no_grad()
    def encode_key(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Keys N x C, computed on a shuffled batch (Shuffle BN, across ranks under torchrun)
        and put back in order."""
        if not self.shuffle_bn:
            return self.encoder_k(x)
        x_shuffled, idx_unshuffle = batch_shuffle(x, generator)
        return batch_unshuffle(self.encoder_k(x_shuffled), idx_unshuffle)

    def forward(self, x_q: torch.Tensor, x_k: torch.Tensor, T: float, symmetric: bool = False,
                generator: torch.Generator | None = None, x_small: torch.Tensor | None = None):
        """Returns (loss, keys to enqueue). x_q, x_k: two augmented views, N x 3 x H x W.
        x_small: multi-crop's extra query views, (n N) x 3 x h x w, crop j of image i at row
        j N + i; each is one more query for its image's key (the loss is the mean over all)."""
        negatives = self.queue.keys.detach()  # K x C, the keys of earlier batches
        if not symmetric:
            q = self.encode_query(x_q)  # N x C
            k = self.encode_key(x_k, generator)  # N x C, no gradient
            loss = info_nce(q, k, negatives, T)
            if x_small is not None:
                n = x_small.shape[0] // x_q.shape[0]
                q_small = self.encode_query(x_small)  # nN x C
                loss = (loss + n * info_nce(q_small, k.repeat(n, 1), negatives, T)) / (1 + n)
            return loss, k
        # symmetric (official CIFAR demo): each view is a query for the other's key
        q1, q2 = self.encode_query(x_q), self.encode_query(x_k)
        k1, k2 = self.encode_key(x_q, generator), self.encode_key(x_k, generator)
        loss = info_nce(q1, k2, negatives, T) + info_nce(q2, k1, negatives, T)
        return loss, torch.cat([k2, k1])
