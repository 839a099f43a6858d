"""Projection heads: linear (MoCo v1) and a 2-layer MLP (MoCo v2)."""

from __future__ import annotations

from torch import nn


def build_head(kind: str, in_dim: int, out_dim: int = 128, hidden_dim: int = 2048) -> nn.Module:
    if kind == "linear":
        return nn.Linear(in_dim, out_dim)
    if kind == "mlp":
        return nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, out_dim))
    raise ValueError(f"unknown head '{kind}'; choose linear or mlp")
