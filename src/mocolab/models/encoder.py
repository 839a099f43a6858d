"""The encoder every method trains: backbone -> head, L2-normalised output."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import distributed as du
from ..config import Config, rank_bn_splits
from .backbones import build_backbone, resolve_stem
from .heads import build_head, build_predictor, v3_mlp


class Encoder(nn.Module):
    """backbone -> head; `forward` returns L2-normalised features N x dim."""

    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, x: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        z = self.head(self.backbone(x))
        return F.normalize(z.float(), dim=1) if normalize else z


def build_encoder(cfg: Config) -> tuple[Encoder, dict]:
    """The config's encoder (SyncBN converted when model.sync_bn) and what it is:
    {"stem", "feature_dim"} (the backbone's pooled width)."""
    mc = cfg.model
    splits = rank_bn_splits(mc.bn_splits, du.world_size())  # this rank's share of the global batch's groups
    stem = resolve_stem(mc.stem, cfg.data.image_size)
    if mc.arch.startswith("vit"):  # the class token N x D
        from .vit import build_vit

        backbone, feat_dim = build_vit(mc.arch, cfg.data.crop_size or cfg.data.image_size)
    else:
        backbone, feat_dim = build_backbone(mc.arch, mc.width, stem, splits, mc.zero_init_residual)
    enc = Encoder(backbone, build_head(mc.head, feat_dim, mc.dim, mc.hidden_dim, splits))
    if mc.sync_bn:  # BN statistics over the global batch (torch's SyncBatchNorm, GPUs only)
        enc = nn.SyncBatchNorm.convert_sync_batchnorm(enc)
    return enc, {"stem": stem, "feature_dim": feat_dim}


def build_query_predictor(cfg: Config, official_v3: bool = False) -> nn.Module | None:
    """A predictor MLP on the query side (model.predictor_dim > 0), else None: MoCo v3's official
    one (v3_mlp) with official_v3, else build_predictor."""
    mc = cfg.model
    if not mc.predictor_dim:
        return None
    splits = rank_bn_splits(mc.bn_splits, du.world_size())
    if official_v3:
        pred = v3_mlp(2, mc.dim, mc.predictor_dim, mc.dim, last_bn=False, bn_splits=splits)
    else:
        pred = build_predictor(mc.dim, mc.predictor_dim, splits)
    return nn.SyncBatchNorm.convert_sync_batchnorm(pred) if mc.sync_bn else pred
