"""Projection heads: linear (MoCo v1), a 2-layer MLP (MoCo v2), and the MLP with batch norm
after the hidden layer (`mlp_bn`, as in SimCLR and MoCo v3 projectors); MoCo v3's predictor."""

from __future__ import annotations

from torch import nn

from .splitbn import SplitBatchNorm1d


def build_head(kind: str, in_dim: int, out_dim: int = 128, hidden_dim: int = 2048, bn_splits: int = 1) -> nn.Module:
    if kind == "linear":
        return nn.Linear(in_dim, out_dim)
    if kind == "mlp":
        return nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, out_dim))
    if kind == "mlp_bn":  # BN statistics per split too, so shuffle BN covers the head as well
        return nn.Sequential(nn.Linear(in_dim, hidden_dim, bias=False), SplitBatchNorm1d(hidden_dim, bn_splits),
                             nn.ReLU(inplace=True), nn.Linear(hidden_dim, out_dim))
    raise ValueError(f"unknown head '{kind}'; choose linear, mlp or mlp_bn")


def build_predictor(dim: int, hidden_dim: int, bn_splits: int = 1) -> nn.Module:
    """MoCo v3's predictor (query side only): dim -> hidden (BN, ReLU) -> dim."""
    return nn.Sequential(nn.Linear(dim, hidden_dim, bias=False), SplitBatchNorm1d(hidden_dim, bn_splits),
                         nn.ReLU(inplace=True), nn.Linear(hidden_dim, dim))
