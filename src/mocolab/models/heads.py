"""Projection heads: linear (MoCo v1), a 2-layer MLP (MoCo v2), and the MLP with batch norm
after the hidden layer (`mlp_bn`, as in SimCLR); MoCo v3's projectors as in its official code
(`mlp3_bn`: ViT, `mlp2_bn`: ResNet, both ending in BN without affine) and predictors."""

from __future__ import annotations

from torch import nn

from ..config import HEADS  # the names the config accepts
from .splitbn import SplitBatchNorm1d


def build_head(kind: str, in_dim: int, out_dim: int = 128, hidden_dim: int = 2048, bn_splits: int = 1) -> nn.Module:
    if kind == "linear":
        return nn.Linear(in_dim, out_dim)
    if kind == "mlp":
        return nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, out_dim))
    if kind == "mlp_bn":  # BN statistics per split too, so shuffle BN covers the head as well
        return nn.Sequential(nn.Linear(in_dim, hidden_dim, bias=False), SplitBatchNorm1d(hidden_dim, bn_splits),
                             nn.ReLU(inplace=True), nn.Linear(hidden_dim, out_dim))
    if kind in ("mlp2_bn", "mlp3_bn"):
        return v3_mlp(int(kind[3]), in_dim, hidden_dim, out_dim, last_bn=True, bn_splits=bn_splits)
    raise ValueError(f"unknown head '{kind}'; choose {', '.join(HEADS)}")


def build_predictor(dim: int, hidden_dim: int, bn_splits: int = 1) -> nn.Module:
    """MoCo v3's predictor (query side only): dim -> hidden (BN, ReLU) -> dim."""
    return nn.Sequential(nn.Linear(dim, hidden_dim, bias=False), SplitBatchNorm1d(hidden_dim, bn_splits),
                         nn.ReLU(inplace=True), nn.Linear(hidden_dim, dim))


def v3_mlp(layers: int, in_dim: int, hidden_dim: int, out_dim: int, *, last_bn: bool = True,
           bn_splits: int = 1) -> nn.Sequential:
    """The official MoCo v3 `_build_mlp`: Linear (no bias) - BN - ReLU for each hidden layer, a
    last Linear (no bias) and, with last_bn, BN without affine (SimCLR's design).
    Projector: v3_mlp(3 for ViT | 2 for ResNet, feat, 4096, 256); predictor: v3_mlp(2, 256, 4096,
    256, last_bn=False)."""
    mods: list[nn.Module] = []
    for i in range(layers):
        d_in, d_out = in_dim if i == 0 else hidden_dim, out_dim if i == layers - 1 else hidden_dim
        mods.append(nn.Linear(d_in, d_out, bias=False))
        if i < layers - 1:
            mods += [SplitBatchNorm1d(d_out, bn_splits), nn.ReLU(inplace=True)]
        elif last_bn:
            mods.append(SplitBatchNorm1d(d_out, bn_splits, affine=False))
    return nn.Sequential(*mods)
